from __future__ import annotations

from django.apps import AppConfig
from django.db import connections
from django.db.models.signals import post_migrate


def ensure_schedule(sender, using="default", **kwargs) -> None:
    """A periodic sweep that re-queues deliveries whose queue message or retry schedule was lost."""
    if "django_q_schedule" not in connections[using].introspection.table_names():
        return
    # django_q's models are imported here, not at the top: this module is loaded before the app registry is.
    from django_q.models import Schedule

    Schedule.objects.using(using).update_or_create(
        name="webhook-sweep",
        defaults={"func": "notifications.tasks.sweep", "schedule_type": Schedule.MINUTES, "minutes": 5,
                  "repeats": -1},
    )


class NotificationsConfig(AppConfig):
    name = "notifications"
    verbose_name = "Notifications"

    def ready(self) -> None:
        # Receivers import models: connected once the app registry is ready.
        from django.db.models.signals import post_save

        from jobs.signals import job_finished
        from notifications.receivers import on_adapter_event, on_job_finished
        from training.models import AdapterEvent

        post_migrate.connect(ensure_schedule, sender=self)
        job_finished.connect(on_job_finished, dispatch_uid="notifications-job-finished")
        post_save.connect(on_adapter_event, sender=AdapterEvent, dispatch_uid="notifications-adapter-event")
