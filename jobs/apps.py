from __future__ import annotations

from django.apps import AppConfig
from django.db import connections
from django.db.models.signals import post_migrate


def ensure_schedule(sender, using="default", **kwargs) -> None:
    """A periodic dispatch: recovers jobs whose worker died and picks up queued jobs whose wake-up was lost."""
    if "django_q_schedule" not in connections[using].introspection.table_names():
        return
    # django_q's models are imported here, not at the top: this module is loaded before the app registry is.
    from django_q.models import Schedule

    Schedule.objects.using(using).update_or_create(
        name="recover-and-dispatch",
        defaults={"func": "jobs.runtime.dispatch", "schedule_type": Schedule.MINUTES, "minutes": 2, "repeats": -1},
    )


class JobsConfig(AppConfig):
    name = "jobs"
    verbose_name = "Jobs"

    def ready(self) -> None:
        # Imported once the registry is ready (both import models).
        from django_q.signals import post_spawn

        from jobs.runtime import on_worker_spawn

        post_migrate.connect(ensure_schedule, sender=self)
        # A (re)started queue worker dispatches at once: recovers a dead worker's jobs, picks up queued ones.
        post_spawn.connect(on_worker_spawn, dispatch_uid="jobs-worker-spawn")
