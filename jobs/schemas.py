"""Output schemas every job kind shares: progress, error, events, and the base of each kind's job schema."""

from __future__ import annotations

from datetime import datetime

from ninja import Schema

from jobs.models import Job
from jobs.scheduling import job_waiting_reason


class ProgressOut(Schema):
    step: int
    total_steps: int
    epoch: float
    percent: float
    tokens_seen: int
    tokens_per_second: float
    eta_seconds: float | None


class ErrorInfo(Schema):
    code: str
    message: str
    param: str | None = None


class EventOut(Schema):
    id: int
    created_at: datetime
    level: str
    type: str
    message: str
    data: dict | None


class EventPage(Schema):
    items: list[EventOut]
    has_more: bool
    next_after: int | None


class JobOut(Schema):
    """What every job shows; a kind's schema adds its own fields and builds its dict on ``job_fields``."""

    id: int
    name: str
    team: str
    created_by: str | None
    status: str
    priority: int
    requirements: dict
    waiting_reason: str | None = None
    progress: ProgressOut
    metrics: dict
    error: ErrorInfo | None
    device: str
    seed: int | None
    attempts: int
    recoveries: int
    cancel_requested: bool
    pause_requested: bool
    created_at: datetime
    queued_at: datetime | None
    started_at: datetime | None
    paused_at: datetime | None
    finished_at: datetime | None


def progress_fields(job: Job) -> dict:
    """The progress of a job as the APIs, the admin's live JSON and the dashboard all show it."""
    return {"step": job.step, "total_steps": job.total_steps, "epoch": job.epoch, "percent": job.progress_percent,
            "tokens_seen": job.tokens_seen, "tokens_per_second": job.tokens_per_second,
            "eta_seconds": job.eta_seconds}


def error_fields(job: Job) -> dict | None:
    return {"code": job.error_code, "message": job.error_message, "param": job.error_param or None} \
        if job.error_code else None


def job_fields(job: Job, *, waiting: bool = True) -> dict:
    """The shared fields of a job; ``waiting=False`` for list pages, where the waiting reason (a look at the live
    workers and the team's running jobs) would cost queries per row: each job's own page shows it."""
    return {
        "id": job.pk, "name": job.name, "team": job.team.name,
        "created_by": job.created_by.username if job.created_by_id else None,
        "status": job.status, "priority": job.priority, "requirements": job.requirements or {},
        # Why a queued job is not running yet (no live worker can run it, its team is at its limit, ...).
        "waiting_reason": (job_waiting_reason(job) or None) if waiting else None,
        "progress": progress_fields(job), "metrics": job.metrics,
        "error": error_fields(job), "device": job.device, "seed": job.seed, "attempts": job.attempts,
        "recoveries": job.recoveries, "cancel_requested": job.cancel_requested,
        "pause_requested": job.pause_requested, "created_at": job.created_at, "queued_at": job.queued_at,
        "started_at": job.started_at, "paused_at": job.paused_at, "finished_at": job.finished_at,
    }
