"""What turns into a webhook event: every job ending (``jobs.signals.job_finished``), in the kind's own shape for
training (OpenAI's ``fine_tuning.job.*``) and evaluation, and an adapter's stage changes (its AdapterEvent rows)."""

from __future__ import annotations

import logging

from django.db import transaction

from jobs.models import JobStatus
from notifications.services import webhook_event_publish
from training.models import AdapterEvent

log = logging.getLogger(__name__)
ENDINGS = {JobStatus.SUCCEEDED: "succeeded", JobStatus.FAILED: "failed", JobStatus.CANCELLED: "cancelled"}


def job_events(job, kind: str) -> list[tuple[str, dict]]:
    """(event type, data) pairs for one job ending."""
    ending = ENDINGS.get(job.status)
    if ending is None:
        return []
    events = [(f"job.{ending}", {"id": job.pk, "kind": kind, "name": job.name, "status": job.status,
                                 "error_code": job.error_code or None})]
    if kind == "training":
        events.append((f"fine_tuning.job.{ending}", {"id": f"ftjob-{job.pk}"}))
    elif kind == "evaluation":
        events.append((f"evaluation.run.{ending}", {"id": job.pk, "name": job.name, "status": job.status,
                                                     "adapter_id": getattr(job, "adapter_id", None),
                                                     "error_code": job.error_code or None}))
    return events


def on_job_finished(sender, *, job, kind: str, **kwargs) -> None:
    for event_type, data in job_events(job, kind):
        webhook_event_publish(team=job.team_id, event_type=event_type, data=data)


def adapter_event_type(event: AdapterEvent) -> str | None:
    if event.action == AdapterEvent.Action.REQUESTED:
        return "adapter.production_requested"
    if event.action in (AdapterEvent.Action.PROMOTED, AdapterEvent.Action.APPROVED, AdapterEvent.Action.DEMOTED) \
            and event.to_stage and event.to_stage != event.from_stage:
        return "adapter.stage_changed"
    return None


def on_adapter_event(sender, *, instance: AdapterEvent, created: bool, **kwargs) -> None:
    event_type = adapter_event_type(instance) if created else None
    if event_type is None:
        return
    adapter = instance.adapter
    data = {"id": adapter.pk, "name": adapter.name, "model_name": adapter.model_name, "action": instance.action,
            "from_stage": instance.from_stage, "to_stage": instance.to_stage,
            "actor": instance.actor.get_username() if instance.actor_id else None}

    def publish() -> None:
        try:
            webhook_event_publish(team=adapter.team_id, event_type=event_type, data=data)
        except Exception:  # a notification never undoes or breaks the stage change it reports
            log.exception("could not publish %s for adapter %s", event_type, adapter.pk)

    # Only once the stage change is committed (a rolled-back promotion announces nothing).
    transaction.on_commit(publish)
