from __future__ import annotations

from datetime import datetime

from ninja import Schema


class BaseModelOut(Schema):
    id: int
    name: str
    kind: str
    format: str
    architecture: str
    parameter_count: int
    size_bytes: int
    tokenizer_present: bool
    has_chat_template: bool
    max_position_embeddings: int | None
    team: str | None
    available: bool
    bundled: bool
    created_at: datetime
    last_scanned_at: datetime | None

    @staticmethod
    def resolve_team(obj) -> str | None:
        return obj.team.name if obj.team_id else None


class ScanRowOut(Schema):
    name: str
    action: str
    kind: str
    parameter_count: int
    size_bytes: int
    message: str


class ScanOut(Schema):
    rows: list[ScanRowOut]


class TrainingTaskIn(Schema):
    name: str | None = None
    team: str | None = None
    base_model: str
    train_version: str | int
    validation_version: str | int | None = None
    params: dict = {}
    priority: int = 0


class CloneIn(Schema):
    name: str | None = None
    params: dict = {}


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


class TrainingTaskOut(Schema):
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
    auto_explanation: dict
    estimated_memory_bytes: int | None
    progress: ProgressOut
    metrics: dict
    trained_tokens: int
    error: ErrorInfo | None
    device: str
    library_versions: dict
    seed: int | None
    worker: str
    attempts: int
    recoveries: int
    cancel_requested: bool
    pause_requested: bool
    heartbeat_at: datetime | None
    created_at: datetime
    queued_at: datetime | None
    started_at: datetime | None
    paused_at: datetime | None
    finished_at: datetime | None
    adapter_id: int | None

    @staticmethod
    def from_task(task) -> dict:
        adapter = task.adapters.order_by("-pk").first() if task.pk else None
        return {
            "id": task.pk, "name": task.name, "team": task.team.name,
            "created_by": task.created_by.username if task.created_by_id else None,
            "status": task.status, "priority": task.priority, "base_model": task.base_model.name,
            "train_version": task.train_version_id, "validation_version": task.validation_version_id,
            "params": task.params, "resolved_params": task.resolved_params,
            "auto_explanation": task.auto_explanation, "estimated_memory_bytes": task.estimated_memory_bytes,
            "progress": {"step": task.step, "total_steps": task.total_steps, "epoch": task.epoch,
                         "percent": task.progress_percent, "tokens_seen": task.tokens_seen,
                         "tokens_per_second": task.tokens_per_second, "eta_seconds": task.eta_seconds},
            "metrics": task.metrics, "trained_tokens": task.trained_tokens,
            "error": {"code": task.error_code, "message": task.error_message, "param": task.error_param or None}
            if task.error_code else None,
            "device": task.device, "library_versions": task.library_versions, "seed": task.seed,
            "worker": task.worker, "attempts": task.attempts, "recoveries": task.recoveries,
            "cancel_requested": task.cancel_requested, "pause_requested": task.pause_requested,
            "heartbeat_at": task.heartbeat_at, "created_at": task.created_at, "queued_at": task.queued_at,
            "started_at": task.started_at, "paused_at": task.paused_at, "finished_at": task.finished_at,
            "adapter_id": adapter.pk if adapter else None,
        }


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


class CheckpointOut(Schema):
    id: int
    step: int
    metrics: dict
    created_at: datetime
    usable: bool


class AdapterOut(Schema):
    id: int
    name: str
    team: str
    kind: str
    status: str
    base_model: str
    task_id: int | None
    lora_config: dict
    trainable_parameters: int
    size_bytes: int
    metrics: dict
    label_map: dict
    created_at: datetime

    @staticmethod
    def resolve_team(obj) -> str:
        return obj.team.name

    @staticmethod
    def resolve_base_model(obj) -> str:
        return obj.base_model.name
