"""The schemas of the OpenAI protocol on /v1/ (fine-tuning jobs, models, chat completions): what clients send and
what the official SDK parses. Our extensions are marked; everything else keeps the protocol's names."""

# No `from __future__ import annotations`: ninja resolves the schemas at import.
from typing import Any, Literal

from ninja import Schema
from pydantic import ConfigDict, Field


class Hyperparameters(Schema):
    model_config = ConfigDict(extra="forbid")

    n_epochs: int | Literal["auto"] | None = None
    batch_size: int | Literal["auto"] | None = None
    learning_rate_multiplier: float | Literal["auto"] | None = None
    learning_rate: float | Literal["auto"] | None = None
    lora_r: int | Literal["auto"] | None = None
    lora_alpha: float | Literal["auto"] | None = None
    lora_dropout: float | Literal["auto"] | None = None


class SupervisedMethod(Schema):
    hyperparameters: Hyperparameters | None = None


class DpoHyperparameters(Hyperparameters):
    beta: float | Literal["auto"] | None = None


class DpoMethod(Schema):
    hyperparameters: DpoHyperparameters | None = None


class MethodIn(Schema):
    type: Literal["supervised", "dpo"]
    supervised: SupervisedMethod | None = None
    dpo: DpoMethod | None = None


class JobCreateIn(Schema):
    model: str
    training_file: str
    validation_file: str | None = None
    hyperparameters: Hyperparameters | None = None
    suffix: str | None = Field(None, max_length=64)
    seed: int | None = Field(None, ge=0, le=2**31 - 1)
    metadata: dict[str, str] | None = None
    method: MethodIn | None = None
    integrations: list[Any] | None = None


class JobError(Schema):
    code: str
    message: str
    param: str | None = None


class JobOut(Schema):
    object: str = "fine_tuning.job"
    id: str
    model: str
    created_at: int
    finished_at: int | None
    estimated_finish: int | None
    status: str
    fine_tuned_model: str | None
    organization_id: str
    training_file: str
    validation_file: str | None
    result_files: list[str]
    trained_tokens: int | None
    seed: int
    error: JobError | None
    hyperparameters: dict
    method: dict
    integrations: list = []
    metadata: dict | None
    user_provided_suffix: str | None = None
    # extensions
    adapter_id: int | None = None
    progress: dict | None = None


class JobList(Schema):
    object: str = "list"
    data: list[JobOut]
    has_more: bool


class EventOut(Schema):
    object: str = "fine_tuning.job.event"
    id: str
    created_at: int
    level: str
    message: str
    type: str
    data: dict | None


class EventList(Schema):
    object: str = "list"
    data: list[EventOut]
    has_more: bool


class CheckpointOut(Schema):
    object: str = "fine_tuning.job.checkpoint"
    id: str
    created_at: int
    fine_tuning_job_id: str
    fine_tuned_model_checkpoint: str
    step_number: int
    metrics: dict


class CheckpointList(Schema):
    object: str = "list"
    data: list[CheckpointOut]
    has_more: bool
    first_id: str | None = None
    last_id: str | None = None


class ModelOut(Schema):
    id: str
    object: str = "model"
    created: int
    owned_by: str


class ModelList(Schema):
    object: str = "list"
    data: list[ModelOut]
    has_more: bool = False


class ChatMessageIn(Schema):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[dict] | None = None


class ChatIn(Schema):
    model_config = ConfigDict(extra="allow")

    model: str
    messages: list[ChatMessageIn] = Field(..., min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int | None = Field(None, ge=1, le=1)
    stream: bool | None = False
    stream_options: dict | None = None
