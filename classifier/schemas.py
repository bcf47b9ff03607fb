from __future__ import annotations

from datetime import datetime

from ninja import Schema
from pydantic import model_validator

from training.schemas import ErrorInfo, ProgressOut


class ClassifierTaskIn(Schema):
    name: str | None = None
    team: str | None = None
    base_model: str
    train_version: str | int
    validation_version: str | int | None = None
    params: dict = {}
    priority: int = 0


class ClassifierTaskOut(Schema):
    id: int
    name: str
    team: str
    created_by: str | None
    status: str
    priority: int
    base_model: str
    train_version: int
    validation_version: int | None
    params: dict
    resolved_params: dict
    label_map: dict
    progress: ProgressOut
    metrics: dict
    report: dict
    trainable_parameters: int
    total_parameters: int
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
    adapter_id: int | None

    @staticmethod
    def from_task(task) -> dict:
        return {
            "id": task.pk, "name": task.name, "team": task.team.name,
            "created_by": task.created_by.username if task.created_by_id else None,
            "status": task.status, "priority": task.priority, "base_model": task.base_model.name,
            "train_version": task.train_version_id, "validation_version": task.validation_version_id,
            "params": task.params, "resolved_params": task.resolved_params, "label_map": task.label_map,
            "progress": {"step": task.step, "total_steps": task.total_steps, "epoch": task.epoch,
                         "percent": task.progress_percent, "tokens_seen": task.tokens_seen,
                         "tokens_per_second": task.tokens_per_second, "eta_seconds": task.eta_seconds},
            "metrics": task.metrics, "report": task.report, "trainable_parameters": task.trainable_parameters,
            "total_parameters": task.total_parameters,
            "error": {"code": task.error_code, "message": task.error_message, "param": task.error_param or None}
            if task.error_code else None,
            "device": task.device, "seed": task.seed, "attempts": task.attempts, "recoveries": task.recoveries,
            "cancel_requested": task.cancel_requested, "pause_requested": task.pause_requested,
            "created_at": task.created_at, "queued_at": task.queued_at, "started_at": task.started_at,
            "paused_at": task.paused_at, "finished_at": task.finished_at, "adapter_id": task.adapter_id,
        }


class PredictIn(Schema):
    """One text (``text``) or a batch (``texts``), not both."""

    text: str | None = None
    texts: list[str] | None = None

    @model_validator(mode="after")
    def _one_of(self):
        if (self.text is None) == (self.texts is None):
            raise ValueError("send either 'text' or 'texts'")
        return self


class PredictionOut(Schema):
    label: str
    confidence: float
    probabilities: dict[str, float]


class PredictOut(Schema):
    adapter_id: int
    adapter: str
    predictions: list[PredictionOut]
