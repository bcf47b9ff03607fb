"""The rules every queue job shares (training, classifier, evaluation, merge, and any kind registered later):
the team's queue quota, unique names, priorities, who may cancel, pause, resume, retry or edit a job, in
which states, and what the log says. Each kind's create service calls the checks; the doors call these."""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

from django.conf import settings
from django.db.models import Model, QuerySet

from accounts.models import Team
from accounts.visibility import Actor, acting_user, get_visible, require_write
from core.errors import ApplicationError, Conflict, NotFound, RateLimited
from jobs import runtime
from jobs.models import ACTIVE, TERMINAL, Job, JobEvent, JobStatus
from jobs.registry import kind_of, kinds

J = TypeVar("J", bound=Job)
MAX_NAME_LENGTH = 180


def _label(job: Job) -> str:
    return f"{job._meta.verbose_name} {getattr(job, 'name', '') or job.pk!r}".strip()


# ---------------------------------------------------------------------------------------------- creation

def job_check_quota(team: Team) -> None:
    """Refuse a new job when the team already has TEAM_MAX_ACTIVE_JOBS queued, running or paused jobs of any kind
    (429 with Retry-After on both APIs, a message in the admin, an error in the commands)."""
    limit = settings.TEAM_MAX_ACTIVE_JOBS
    active = sum(kind.model.objects.filter(team=team, status__in=list(ACTIVE)).count() for kind in kinds())
    if active >= limit:
        raise RateLimited(f"Team {team.name!r} already has {active} active jobs (limit {limit}); wait for one to "
                          "finish or cancel one.", code="quota_exceeded", retry_after=60)


def job_check_priority(priority: object) -> int:
    if isinstance(priority, bool) or not isinstance(priority, int) or not -100 <= priority <= 100:
        raise ApplicationError("priority must be an integer from -100 to 100.", code="invalid_parameter",
                               param="priority")
    return priority


def job_check_name(name: str) -> str:
    name = (name or "").strip()
    if not name:
        raise ApplicationError("name must not be empty.", code="invalid_parameter", param="name")
    if len(name) > MAX_NAME_LENGTH:
        raise ApplicationError(f"name is longer than {MAX_NAME_LENGTH} characters.", code="invalid_parameter",
                               param="name")
    return name


def unique_name(model: type[Model], team: Team, name: str, *, exclude_pk: int | None = None) -> str:
    """``name``, or ``name-2``, ``name-3``... : the first that no row of ``model`` in the team has."""
    taken = model.objects.filter(team=team)
    if exclude_pk is not None:
        taken = taken.exclude(pk=exclude_pk)
    if not taken.filter(name=name).exists():
        return name
    n = 2
    while taken.filter(name=f"{name}-{n}").exists():
        n += 1
    return f"{name}-{n}"


# ---------------------------------------------------------------------------------------------- reads

def job_get(*, user: Actor, queryset: QuerySet[J], ref: str | int, code: str, label: str,
            for_update: bool = False) -> J:
    """One job the user can see, by id or (unique) name; other teams' jobs read as not found."""
    lookup = {"pk": int(ref)} if isinstance(ref, int) or str(ref).isdigit() else {"name": str(ref)}
    try:
        job = get_visible(user, queryset, **lookup)
    except NotFound:
        raise NotFound(f"{label} {ref!r} not found.", code=code) from None
    except queryset.model.MultipleObjectsReturned:
        raise ApplicationError(f"Several {label.lower()}s are named {ref!r}: use the id.",
                               code="ambiguous_name") from None
    if for_update:
        require_write(user, job)
    return job


def job_events_page(*, job: Job, after: int | None = None, limit: int = 100) -> tuple[list[JobEvent], bool]:
    """Keyset pagination over a job's events (constant cost however long the log); returns (rows, has_more)."""
    limit = max(1, min(int(limit), 1000))
    qs = job.events.order_by("id")
    if after is not None:
        qs = qs.filter(id__gt=after)
    rows = list(qs[: limit + 1])
    return rows[:limit], len(rows) > limit


# ---------------------------------------------------------------------------------------------- control

def job_cancel(*, user: Actor, job: J) -> J:
    require_write(user, job)
    if job.status in TERMINAL:
        raise Conflict(f"{_label(job).capitalize()} is already {job.status}.", code="invalid_state")
    runtime.request_cancel(job)
    job.refresh_from_db()
    return job


def job_pause(*, user: Actor, job: J) -> J:
    require_write(user, job)
    if not runtime.request_pause(job):
        raise Conflict(f"Only running or queued jobs can be paused; {_label(job)} is {job.status}.",
                       code="invalid_state")
    job.refresh_from_db()
    return job


def job_resume(*, user: Actor, job: J) -> J:
    """Queue a paused job again; it continues from its kind's last good checkpoint."""
    require_write(user, job)
    checkpoint = kind_of(job).latest_checkpoint(job) or ""
    note = f"Resumed from {Path(checkpoint).name}." if checkpoint else "Resumed from the start (no checkpoint)."
    if not runtime.requeue(job, from_statuses={JobStatus.PAUSED}, resume_from=checkpoint, note=note):
        raise Conflict(f"Only paused jobs can be resumed; {_label(job)} is {job.status}.", code="invalid_state")
    job.refresh_from_db()
    return job


def job_retry(*, user: Actor, job: J) -> J:
    """Run a failed or cancelled job again, continuing from its last good checkpoint if it has one."""
    require_write(user, job)
    if job.error_code == "invalid_file":
        raise Conflict("This job's data failed validation: fix the file and create a new job.", code="invalid_state")
    if job.status in (JobStatus.FAILED, JobStatus.CANCELLED):
        job_check_quota(job.team)
    checkpoint = kind_of(job).latest_checkpoint(job) or ""
    note = f"Retry from {Path(checkpoint).name}." if checkpoint else "Retry from the start."
    if not runtime.requeue(job, from_statuses={JobStatus.FAILED, JobStatus.CANCELLED}, resume_from=checkpoint,
                           reset=True, note=note):
        raise Conflict(f"Only failed or cancelled jobs can be retried; {_label(job)} is {job.status}.",
                       code="invalid_state")
    job.refresh_from_db()
    return job


def job_reproduce(*, user: Actor, job: Job, name: str | None = None) -> Job:
    """A new job with the same inputs, through the kind's own create service (quota and checks included)."""
    kind = kind_of(job)
    if kind.reproduce is None:
        raise Conflict(f"{_label(job).capitalize()} cannot be reproduced.", code="not_reproducible")
    return kind.reproduce(user=user, job=job, name=name)


def job_update(*, user: Actor, job: J, name: str | None = None, priority: int | None = None) -> J:
    """Change what a person may edit on a job (its name and priority) and nothing else: the worker writes the
    other columns of the same row while it runs, so this is an UPDATE of these columns only, never a save."""
    require_write(user, job)
    values: dict[str, object] = {}
    if name is not None and name != job.name:
        name = job_check_name(name)
        if type(job).objects.filter(team_id=job.team_id, name=name).exclude(pk=job.pk).exists():
            raise Conflict(f"Another {job._meta.verbose_name} of the team is named {name!r}.", code="name_taken",
                           param="name")
        values["name"] = name
    if priority is not None and priority != job.priority:
        if job.status in TERMINAL:
            raise Conflict(f"{_label(job).capitalize()} is {job.status}: its priority no longer matters.",
                           code="invalid_state", param="priority")
        values["priority"] = job_check_priority(priority)
    if values:
        type(job).objects.filter(pk=job.pk).update(**values)
        changes = ", ".join(f"{k} → {v}" for k, v in values.items())
        who = acting_user(user)
        runtime.add_event(job, f"Changed by {who.get_username() if who else 'someone'}: {changes}.")
        job.refresh_from_db()
    return job
