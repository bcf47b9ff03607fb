"""The control rules every queue job shares (training, classifier, evaluation, merge): who may cancel, pause,
resume or retry, in which states, and what the log says. Each app's service calls these with its own job and,
for resume/retry, its own last good checkpoint."""

from __future__ import annotations

from pathlib import Path

from accounts.visibility import require_write
from core.errors import Conflict
from training import jobs
from training.models import TERMINAL, Job, JobStatus


def _label(job: Job) -> str:
    return f"{job._meta.verbose_name} {getattr(job, 'name', '') or job.pk!r}".strip()


def job_cancel(*, user, job: Job) -> Job:
    require_write(user, job)
    if job.status in TERMINAL:
        raise Conflict(f"{_label(job).capitalize()} is already {job.status}.", code="invalid_state")
    jobs.request_cancel(job)
    job.refresh_from_db()
    return job


def job_pause(*, user, job: Job) -> Job:
    require_write(user, job)
    if not jobs.request_pause(job):
        raise Conflict(f"Only running or queued jobs can be paused; {_label(job)} is {job.status}.",
                       code="invalid_state")
    job.refresh_from_db()
    return job


def job_resume(*, user, job: Job, checkpoint: str | None) -> Job:
    require_write(user, job)
    checkpoint = checkpoint or ""
    note = f"Resumed from {Path(checkpoint).name}." if checkpoint else "Resumed from the start (no checkpoint)."
    if not jobs.requeue(job, from_statuses={JobStatus.PAUSED}, resume_from=checkpoint, note=note):
        raise Conflict(f"Only paused jobs can be resumed; {_label(job)} is {job.status}.", code="invalid_state")
    job.refresh_from_db()
    return job


def job_retry(*, user, job: Job, checkpoint: str | None) -> Job:
    """Run a failed or cancelled job again, continuing from its last good checkpoint if it has one."""
    require_write(user, job)
    checkpoint = checkpoint or ""
    note = f"Retry from {Path(checkpoint).name}." if checkpoint else "Retry from the start."
    if not jobs.requeue(job, from_statuses={JobStatus.FAILED, JobStatus.CANCELLED}, resume_from=checkpoint,
                        reset=True, note=note):
        raise Conflict(f"Only failed or cancelled jobs can be retried; {_label(job)} is {job.status}.",
                       code="invalid_state")
    job.refresh_from_db()
    return job
