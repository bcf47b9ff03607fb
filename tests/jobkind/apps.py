from __future__ import annotations

from django.apps import AppConfig


class JobKindTestConfig(AppConfig):
    """A job kind registered the way every app registers its own: from ``ready()``, through the public API."""

    name = "tests.jobkind"
    label = "jobkind"

    def ready(self) -> None:
        from jobs.registry import JobKind, register
        from tests.jobkind.models import CountEvent, CountJob

        register(JobKind(name="count", model=CountJob, event_model=CountEvent, event_fk="job",
                         runner="tests.jobkind.runner.CountRunner",
                         latest_checkpoint=lambda job: job.checkpoint or None))
