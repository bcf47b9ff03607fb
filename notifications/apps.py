from __future__ import annotations

from django.apps import AppConfig


class NotificationsConfig(AppConfig):
    name = "notifications"
    verbose_name = "Notifications"

    def ready(self) -> None:
        # Receivers import models: connected once the app registry is ready.
        from django.db.models.signals import post_save

        from jobs.signals import job_finished
        from notifications.receivers import on_adapter_event, on_job_finished
        from training.models import AdapterEvent

        job_finished.connect(on_job_finished, dispatch_uid="notifications-job-finished")
        post_save.connect(on_adapter_event, sender=AdapterEvent, dispatch_uid="notifications-adapter-event")
