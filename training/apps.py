from __future__ import annotations

from django.apps import AppConfig
from django.db.models.signals import post_migrate


def ensure_schedule(sender, using="default", **kwargs) -> None:
    """A periodic dispatch: recovers jobs whose worker died and picks up queued jobs whose wake-up was lost."""
    from django.db import connections

    if "django_q_schedule" not in connections[using].introspection.table_names():
        return
    from django_q.models import Schedule

    Schedule.objects.using(using).update_or_create(
        name="recover-and-dispatch",
        defaults={"func": "training.jobs.dispatch", "schedule_type": Schedule.MINUTES, "minutes": 2, "repeats": -1},
    )


class TrainingConfig(AppConfig):
    name = "training"
    verbose_name = "Training"

    def ready(self) -> None:
        post_migrate.connect(ensure_schedule, sender=self)
        # A (re)started queue worker dispatches at once: recovers a dead worker's jobs, picks up queued ones.
        from django_q.signals import post_spawn

        from training.jobs import on_worker_spawn

        post_spawn.connect(on_worker_spawn, dispatch_uid="training-worker-spawn")
