"""The event types an endpoint may subscribe to, and their payloads (OpenAI's webhook shape:
``{"object": "event", "id", "type", "created_at", "data": {...}}``)."""

from __future__ import annotations

import time
import uuid

JOB_ENDINGS = ("succeeded", "failed", "cancelled")

EVENT_TYPES: dict[str, str] = {
    **{f"fine_tuning.job.{s}": f"A fine-tuning (training) job {s}; data.id is its ftjob-<id>." for s in JOB_ENDINGS},
    **{f"evaluation.run.{s}": f"An evaluation run {s}." for s in JOB_ENDINGS},
    "adapter.stage_changed": "An adapter moved between draft, candidate and production.",
    "adapter.production_requested": "A member asked for an adapter to go to production (a team admin approves).",
    **{f"job.{s}": f"A job of any kind (training, classifier, evaluation, merge, ...) {s}." for s in JOB_ENDINGS},
}


def new_event_id() -> str:
    return f"evt_{uuid.uuid4().hex}"


def event_payload(event_type: str, data: dict, *, event_id: str | None = None,
                  created_at: int | None = None) -> dict:
    if event_type not in EVENT_TYPES:
        raise ValueError(f"unknown event type {event_type!r}")
    return {"object": "event", "id": event_id or new_event_id(), "type": event_type,
            "created_at": int(time.time()) if created_at is None else created_at, "data": data}
