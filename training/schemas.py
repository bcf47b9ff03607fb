from __future__ import annotations

from datetime import datetime

from ninja import Field, Schema

from jobs.schemas import ErrorInfo, JobOut, job_fields


class TrainingTaskIn(Schema):
    name: str | None = None
    team: str | None = None
    # Required unless the recipe in ``config`` names them.
    base_model: str | None = None
    train_version: str | int | None = None
    validation_version: str | int | None = None
    params: dict = {}
    priority: int = 0
    evaluate: bool = Field(False, description="Queue an evaluation run of the adapter when the task succeeds.")
    evaluation_metrics: list[str] | None = Field(
        None, description="Metrics of that evaluation (perplexity, samples, style, overlap; preference for "
                          "preference data); default all.")
    requirements: dict = Field({}, description="The worker it needs: device (cpu, cuda), gpus, gpu_memory_gb, "
                                               "labels; by default the device the task is planned for.")
    config: str | None = Field(None, description="A YAML recipe (our keys or LLaMA-Factory's); the other fields "
                                                 "given here override it.")
    method: str = Field("sft", description="sft (chat/text data), dpo or orpo (preference pairs), kto (labelled "
                                           "answers).")
    start_adapter: str | int | None = Field(None, description="Train this adapter (same base model) further, e.g. "
                                                              "DPO on an SFT adapter.")


class CloneIn(Schema):
    name: str | None = None
    params: dict = {}


class TrainingTaskOut(JobOut):
    base_model: str
    train_version: int
    validation_version: int | None
    params: dict
    resolved_params: dict
    auto_explanation: dict
    estimated_memory_bytes: int | None
    memory_estimate: dict = Field(description="The estimate the task was admitted with: total_bytes, parts, and the "
                                              "batch it describes (sequences_per_batch x tokens_per_sequence, "
                                              "batch_size x gradient_accumulation_steps, per device); the run "
                                              "checks it again on its tokenised data.")
    trained_tokens: int
    library_versions: dict
    worker: str
    heartbeat_at: datetime | None
    adapter_id: int | None
    evaluate_on_success: bool
    evaluation_metrics: list[str]
    method: str
    start_adapter_id: int | None

    @staticmethod
    def from_task(task, *, waiting: bool = True) -> dict:
        # max() over .all() uses a prefetch_related("adapters") when the caller made one (lists do).
        adapter = max(task.adapters.all(), key=lambda a: a.pk, default=None) if task.pk else None
        return {
            **job_fields(task, waiting=waiting), "base_model": task.base_model.name,
            "train_version": task.train_version_id, "validation_version": task.validation_version_id,
            "params": task.params, "resolved_params": task.resolved_params,
            "auto_explanation": task.auto_explanation, "estimated_memory_bytes": task.estimated_memory_bytes,
            "memory_estimate": task.memory_estimate or {},
            "trained_tokens": task.trained_tokens, "library_versions": task.library_versions,
            "worker": task.worker, "heartbeat_at": task.heartbeat_at,
            "adapter_id": adapter.pk if adapter else None,
            "evaluate_on_success": task.evaluate_on_success, "evaluation_metrics": task.evaluation_metrics or [],
            "method": task.method, "start_adapter_id": task.start_adapter_id,
        }

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
    model_name: str
    stage: str
    source: str
    serving_name: str
    approval_requested_by: str | None
    stage_changed_at: datetime | None
    files_deleted_at: datetime | None
    created_by: str | None
    created_at: datetime

    @staticmethod
    def resolve_team(obj) -> str:
        return obj.team.name

    @staticmethod
    def resolve_approval_requested_by(obj) -> str | None:
        return obj.approval_requested_by.username if obj.approval_requested_by_id else None

    @staticmethod
    def resolve_created_by(obj) -> str | None:
        return obj.created_by.username if obj.created_by_id else None

    @staticmethod
    def resolve_base_model(obj) -> str:
        return obj.base_model.name


class PromoteIn(Schema):
    stage: str
    note: str = ""


class NoteIn(Schema):
    note: str = ""


class MergeIn(Schema):
    name: str | None = None
    priority: int = 0


class ReproduceIn(Schema):
    name: str | None = None


class ReproduceOut(Schema):
    kind: str
    id: int
    name: str
    status: str


class MergeJobOut(Schema):
    id: int
    name: str
    team: str
    adapter_id: int
    status: str
    output_name: str
    output_path: str
    base_model_id: int | None
    error: ErrorInfo | None
    created_by: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @staticmethod
    def from_job(job) -> dict:
        return {"id": job.pk, "name": job.name, "team": job.team.name, "adapter_id": job.adapter_id,
                "status": job.status, "output_name": job.output_name, "output_path": job.output_path,
                "base_model_id": job.result_id,
                "error": {"code": job.error_code, "message": job.error_message, "param": job.error_param or None}
                if job.error_code else None,
                "created_by": job.created_by.username if job.created_by_id else None,
                "created_at": job.created_at, "started_at": job.started_at, "finished_at": job.finished_at}


class AdapterEventOut(Schema):
    id: int
    action: str
    from_stage: str
    to_stage: str
    actor: str | None
    note: str
    data: dict
    created_at: datetime


class LineageOut(Schema):
    adapter: dict
    dataset: dict | None
    validation_dataset: dict | None
    task: dict | None
    evaluations: list[dict]
    merges: list[dict]
    exports: list[dict]
    events: list[AdapterEventOut]
