"""The job kinds: each app that owns a job table registers its kind from its ``AppConfig.ready()``.

The lower layers never ask which apps exist above them; they iterate ``kinds()``. A kind names its runner
by dotted path, so registering one imports nothing heavy: the runner module (and torch with it) is imported
only in the child process that runs the job.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from django.utils.module_loading import import_string

if TYPE_CHECKING:  # the runner module imports this one
    from jobs.models import Job, Worker
    from jobs.runner import JobRunner


@dataclass(frozen=True)
class JobKind:
    """How one table of jobs is run: ``runner`` is the dotted path of its ``JobRunner`` subclass."""

    name: str
    model: type[Job]
    event_model: type
    event_fk: str
    runner: str
    # The last good checkpoint a resumed, retried or recovered run continues from (None: from the start).
    latest_checkpoint: Callable[[Job], str | None] = field(default=lambda job: None)
    # Queue a new job with the same inputs (None: the kind cannot be reproduced).
    reproduce: Callable[..., Job] | None = None
    # What a job produced (its adapters, say), for pages that link a job's inputs to its outputs.
    outputs: Callable[[Job], list] = field(default=lambda job: [])
    # How many processes run the job (given the worker that claimed it, None when unknown): more than one starts
    # the child through torchrun, one rank per process.
    processes: Callable[[Job, Worker | None], int] = field(default=lambda job, worker: 1)

    def runner_class(self) -> type[JobRunner]:
        return import_string(self.runner)


_REGISTRY: dict[str, JobKind] = {}


def register(kind: JobKind) -> JobKind:
    """Add a kind (idempotent: re-registering the same name replaces it, as a reloaded app does)."""
    _REGISTRY[kind.name] = kind
    return kind


def kinds() -> list[JobKind]:
    return list(_REGISTRY.values())


def get_kind(name: str) -> JobKind:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise LookupError(f"unknown job kind {name!r}") from None


def kind_of(job: Job | type[Job]) -> JobKind:
    model = job if isinstance(job, type) else type(job)
    for kind in _REGISTRY.values():
        if issubclass(model, kind.model):
            return kind
    raise LookupError(f"no job kind registered for {model.__name__}")
