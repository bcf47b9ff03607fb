"""/v1/ fine-tuning jobs, models and chat completions: the OpenAI protocol onto our services.

A fine-tuning job is a ``TrainingTask`` (same row, same admin); its id is ``ftjob-<pk>``. The fine-tuned
model is named ``ft:<base>:<team>:<suffix>:<pk>`` and each checkpoint ``...:ckpt-step-N``.
"""

# No `from __future__ import annotations`: ninja resolves the schemas at import.
import json
import re
import time
import uuid
from typing import Any, Literal

from django.conf import settings
from django.http import StreamingHttpResponse
from ninja import Router, Schema
from pydantic import ConfigDict, Field

from accounts.auth import principal
from accounts.visibility import resolve_team, visible_to
from catalog.models import BaseModel
from core.errors import ApplicationError, NotFound
from jobs import services as job_services
from jobs.models import ACTIVE
from openai_compat.files import version_from_file_id
from openai_compat.ids import job_id, ts
from training import services
from training.models import Adapter, Checkpoint, TrainingTask

router = Router(tags=["fine-tuning"])
JOB_ID = re.compile(r"^ftjob-(\d+)$")
EVENT_ID = re.compile(r"^ftevent-(\d+)$")
METADATA_KEY = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
STATUS_MAP = {"validating": "validating_files"}
HYPERPARAMETERS = ("n_epochs", "batch_size", "learning_rate_multiplier", "learning_rate", "lora_r", "lora_alpha",
                   "lora_dropout")


# ------------------------------------------------------------------------------------------------ schemas

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


# --- method "dpo" (preference fine-tuning): everything of it lives in this block and in the *_method helpers ---

class DpoHyperparameters(Hyperparameters):
    beta: float | Literal["auto"] | None = None


class DpoMethod(Schema):
    hyperparameters: DpoHyperparameters | None = None


# OpenAI's method types -> our training methods
METHODS = {"supervised": "sft", "dpo": "dpo"}


def _method_of(payload: "JobCreateIn") -> str:
    return METHODS[payload.method.type] if payload.method else "sft"


def _method_hyperparameters(payload: "JobCreateIn"):
    """The hyperparameters given inside ``method`` (supervised or dpo), or None."""
    method = payload.method
    if method is None:
        return None
    section = method.dpo if method.type == "dpo" else method.supervised
    return section.hyperparameters if section else None


def _method_out(task: TrainingTask, hyper: dict) -> dict:
    if task.method == TrainingTask.Method.DPO:
        beta = (task.resolved_params or {}).get("beta", (task.params or {}).get("beta", "auto"))
        return {"type": "dpo", "dpo": {"hyperparameters": {**hyper, "beta": beta}}}
    return {"type": "supervised", "supervised": {"hyperparameters": hyper}}

# --- end of method "dpo" ---


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


# ------------------------------------------------------------------------------------------------ mapping

def fine_tuned_name(task: TrainingTask) -> str:
    return f"ft:{task.base_model.name}:{task.team.name}:{task.suffix}:{task.pk}"


def _hyper_out(task: TrainingTask) -> dict:
    resolved = task.resolved_params or {}
    params = task.params or {}
    out = {}
    for key in ("n_epochs", "batch_size", "learning_rate_multiplier"):
        out[key] = resolved.get(key, params.get(key, "auto"))
    for key in ("learning_rate", "lora_r", "lora_alpha", "lora_dropout"):
        if key in resolved or key in params:
            out[key] = resolved.get(key, params.get(key))
    return out


def job_out(task: TrainingTask) -> dict:
    adapter = next(iter(task.adapters.all()), None)
    succeeded = task.status == "succeeded"
    estimated = None
    if task.status == "running" and task.eta_seconds:
        estimated = int(time.time() + task.eta_seconds)
    hyper = _hyper_out(task)
    return {
        "id": job_id(task), "model": task.base_model.name, "created_at": ts(task.created_at),
        "finished_at": ts(task.finished_at), "estimated_finish": estimated,
        "status": STATUS_MAP.get(task.status, task.status),
        "fine_tuned_model": fine_tuned_name(task) if succeeded else None, "organization_id": task.team.name,
        "training_file": f"file-{task.train_version_id}",
        "validation_file": f"file-{task.validation_version_id}" if task.validation_version_id else None,
        "result_files": [f"file-results-{task.pk}"] if succeeded else [],
        "trained_tokens": task.trained_tokens if succeeded else None,
        "seed": task.seed if task.seed is not None else int((task.params or {}).get("seed", 42)),
        "error": {"code": task.error_code, "message": task.error_message, "param": task.error_param or None}
        if task.error_code else None,
        "hyperparameters": hyper,
        "method": _method_out(task, hyper),
        "integrations": [], "metadata": task.metadata or None, "user_provided_suffix": task.suffix or None,
        "adapter_id": adapter.pk if adapter else None,
        "progress": {"step": task.step, "total_steps": task.total_steps, "percent": task.progress_percent,
                     "epoch": task.epoch, "tokens_per_second": task.tokens_per_second,
                     "eta_seconds": task.eta_seconds},
    }


def _tasks(who):
    return visible_to(who, TrainingTask.objects.all()).select_related("team", "base_model").prefetch_related(
        "adapters")


def get_job(who, value: str) -> TrainingTask:
    match = JOB_ID.match(value or "")
    if not match:
        raise NotFound(f"No such fine-tuning job: {value!r}.", code="job_not_found", param="fine_tuning_job_id")
    task = _tasks(who).filter(pk=int(match.group(1))).first()
    if task is None:
        raise NotFound(f"No such fine-tuning job: {value!r}.", code="job_not_found", param="fine_tuning_job_id")
    return task


def _params_from(payload: JobCreateIn) -> dict:
    params: dict = {}
    for source in (payload.hyperparameters, _method_hyperparameters(payload)):
        if source is None:
            continue
        for key, value in source.model_dump(exclude_none=True).items():
            params[key] = value
    if payload.seed is not None:
        params["seed"] = payload.seed
    return params


def _check_quota(team) -> None:
    limit = getattr(settings, "TEAM_MAX_ACTIVE_JOBS", 20)
    active = TrainingTask.objects.filter(team=team, status__in=list(ACTIVE)).count()
    if active >= limit:
        raise ApplicationError(f"Team {team.name!r} already has {active} active fine-tuning jobs (limit {limit}); "
                               "wait for one to finish or cancel one.", code="quota_exceeded", status=429)


# ------------------------------------------------------------------------------------------------ jobs

@router.post("/fine_tuning/jobs", response={200: JobOut})
def job_create(request, payload: JobCreateIn):

    who = principal(request)
    team = resolve_team(who, None)
    _check_quota(team)
    training = version_from_file_id(who, payload.training_file, param="training_file")
    validation = None
    if payload.validation_file:
        validation = version_from_file_id(who, payload.validation_file, param="validation_file")
    try:
        base = services.base_model_get(user=who, ref=payload.model, kind=BaseModel.Kind.CAUSAL_LM)
    except NotFound:
        raise NotFound(f"The model {payload.model!r} does not exist or you do not have access to it.",
                       code="model_not_found", param="model") from None
    except ApplicationError as exc:
        raise ApplicationError(exc.message, code=exc.code, param="model") from None
    metadata = payload.metadata or {}
    if len(metadata) > 16 or any(not METADATA_KEY.match(k) or len(v) > 512 for k, v in metadata.items()):
        raise ApplicationError("metadata: at most 16 keys of 1-64 characters [A-Za-z0-9_.-], values up to 512.",
                               code="invalid_metadata", param="metadata")
    suffix = payload.suffix or ""
    if suffix and not re.match(r"^[A-Za-z0-9_-]+$", suffix):
        raise ApplicationError("suffix may contain letters, digits, '-' and '_' only.", code="invalid_suffix",
                               param="suffix")
    name = f"ft-{suffix or base.name}-{uuid.uuid4().hex[:8]}"
    try:
        task = services.training_task_create(user=who, team=team, name=name, base_model=base,
                                             train_version=training, validation_version=validation,
                                             params=_params_from(payload), suffix=suffix, metadata=metadata,
                                             fail_invalid_files=True, method=_method_of(payload))
    except ApplicationError as exc:
        if exc.code == "invalid_parameter" and exc.param and "." not in exc.param and exc.param != "hyperparameters":
            exc.param = f"hyperparameters.{exc.param}"
        raise
    return job_out(task)


@router.get("/fine_tuning/jobs", response=JobList)
def job_list(request, after: str | None = None, limit: int = 20):
    who = principal(request)
    qs = _tasks(who).order_by("-pk")
    if after:
        match = JOB_ID.match(after)
        if not match:
            raise ApplicationError(f"after: {after!r} is not a job id.", code="invalid_cursor", param="after")
        qs = qs.filter(pk__lt=int(match.group(1)))
    for key, value in request.GET.items():
        m = re.match(r"^metadata\[(.+)\]$", key)
        if m:
            if not METADATA_KEY.match(m.group(1)):
                raise ApplicationError(f"{key}: invalid metadata key.", code="invalid_metadata", param=key)
            qs = qs.filter(**{f"metadata__{m.group(1)}": value})
    limit = max(1, min(int(limit), 100))
    rows = list(qs[: limit + 1])
    return {"object": "list", "data": [job_out(t) for t in rows[:limit]], "has_more": len(rows) > limit}


@router.get("/fine_tuning/jobs/{fine_tuning_job_id}", response=JobOut)
def job_retrieve(request, fine_tuning_job_id: str):
    return job_out(get_job(principal(request), fine_tuning_job_id))


@router.post("/fine_tuning/jobs/{fine_tuning_job_id}/cancel", response=JobOut)
def job_cancel(request, fine_tuning_job_id: str):
    who = principal(request)
    task = job_services.job_cancel(user=who, job=get_job(who, fine_tuning_job_id))
    return job_out(task)


@router.post("/fine_tuning/jobs/{fine_tuning_job_id}/pause", response=JobOut)
def job_pause(request, fine_tuning_job_id: str):
    who = principal(request)
    return job_out(job_services.job_pause(user=who, job=get_job(who, fine_tuning_job_id)))


@router.post("/fine_tuning/jobs/{fine_tuning_job_id}/resume", response=JobOut)
def job_resume(request, fine_tuning_job_id: str):
    who = principal(request)
    return job_out(job_services.job_resume(user=who, job=get_job(who, fine_tuning_job_id)))


@router.get("/fine_tuning/jobs/{fine_tuning_job_id}/events", response=EventList)
def job_events(request, fine_tuning_job_id: str, after: str | None = None, limit: int = 20):
    """Newest first; ``after`` is the last event id of the previous page (the next page is older)."""
    task = get_job(principal(request), fine_tuning_job_id)
    qs = task.events.order_by("-id")
    if after:
        match = EVENT_ID.match(after)
        if not match:
            raise ApplicationError(f"after: {after!r} is not an event id.", code="invalid_cursor", param="after")
        qs = qs.filter(id__lt=int(match.group(1)))
    limit = max(1, min(int(limit), 1000))
    rows = list(qs[: limit + 1])
    data = [{"id": f"ftevent-{e.pk}", "created_at": ts(e.created_at), "level": e.level, "message": e.message,
             "type": e.type, "data": e.data if e.type == "metrics" else None} for e in rows[:limit]]
    return {"object": "list", "data": data, "has_more": len(rows) > limit}


@router.get("/fine_tuning/jobs/{fine_tuning_job_id}/checkpoints", response=CheckpointList)
def job_checkpoints(request, fine_tuning_job_id: str, after: str | None = None, limit: int = 10):
    task = get_job(principal(request), fine_tuning_job_id)
    qs = task.checkpoints.order_by("-step")
    if after and after.startswith("ftckpt-") and after[7:].isdigit():
        qs = qs.filter(pk__lt=int(after[7:]))
    limit = max(1, min(int(limit), 100))
    rows = list(qs[: limit + 1])
    name = fine_tuned_name(task)
    data = [{"id": f"ftckpt-{c.pk}", "created_at": ts(c.created_at), "fine_tuning_job_id": job_id(task),
             "fine_tuned_model_checkpoint": f"{name}:ckpt-step-{c.step}", "step_number": c.step,
             "metrics": {"step": c.step, **(c.metrics or {})}} for c in rows[:limit]]
    return {"object": "list", "data": data, "has_more": len(rows) > limit,
            "first_id": data[0]["id"] if data else None, "last_id": data[-1]["id"] if data else None}


# ------------------------------------------------------------------------------------------------ models

def _succeeded_tasks(who):
    return _tasks(who).filter(status="succeeded").order_by("-pk")


@router.get("/models", response=ModelList)
def model_list(request):
    who = principal(request)
    data = []
    for m in services.base_model_list(user=who, kind=BaseModel.Kind.CAUSAL_LM, available=True).select_related("team"):
        data.append({"id": m.name, "created": ts(m.created_at), "owned_by": m.team.name if m.team_id else "system"})
    for task in _succeeded_tasks(who).prefetch_related("checkpoints"):
        data.append({"id": fine_tuned_name(task), "created": ts(task.finished_at), "owned_by": task.team.name})
        for c in task.checkpoints.all():
            data.append({"id": f"{fine_tuned_name(task)}:ckpt-step-{c.step}", "created": ts(c.created_at),
                         "owned_by": task.team.name})
    production = visible_to(who, Adapter.objects.filter(stage=Adapter.Stage.PRODUCTION, status=Adapter.Status.READY,
                                                        kind=Adapter.Kind.CAUSAL_LM)).select_related("team")
    for adapter in production.order_by("team__name", "model_name"):
        data.append({"id": adapter.serving_name, "created": ts(adapter.stage_changed_at or adapter.created_at),
                     "owned_by": adapter.team.name})
    return {"object": "list", "data": data, "has_more": False}


class ResolvedModel:
    """What a model name in a request points to: a base folder, and an adapter folder with its cache key."""

    def __init__(self, name: str, base: BaseModel, adapter_path: str | None = None, key: str | None = None,
                 owner: str = "system") -> None:
        self.name, self.base, self.adapter_path, self.key, self.owner = name, base, adapter_path, key, owner

    def require_files(self) -> "ResolvedModel":
        """A clear 404 instead of a loader traceback (500) when the folders vanished from disk."""
        from pathlib import Path

        missing = not (Path(self.base.path) / "config.json").is_file() or (
            self.adapter_path is not None and not (Path(self.adapter_path) / "adapter_config.json").is_file())
        if missing:
            raise NotFound(f"The files of model {self.name!r} are missing on this server; ask an admin to restore "
                           "or rescan them.", code="model_files_missing", param="model")
        return self


def resolve_model(who, name: str, *, param: str = "model") -> ResolvedModel:
    missing = NotFound(f"The model {name!r} does not exist or you do not have access to it.",
                       code="model_not_found", param=param)
    from training.lifecycle import PRODUCTION_REF_RE, adapter_for_serving

    if PRODUCTION_REF_RE.match(name):  # <team>/<model name>:production -> the adapter in production now
        try:
            adapter = adapter_for_serving(user=who, ref=name)
        except ApplicationError:
            raise missing from None
        return ResolvedModel(name, adapter.base_model, adapter.path, f"adapter-{adapter.pk}", adapter.team.name)
    if not name.startswith("ft:"):
        try:
            base = services.base_model_get(user=who, ref=name, kind=BaseModel.Kind.CAUSAL_LM)
        except ApplicationError:
            raise missing from None
        return ResolvedModel(name, base, owner=base.team.name if base.team_id else "system")
    parts = name.split(":")
    step = None
    if len(parts) == 6 and parts[5].startswith("ckpt-step-") and parts[5][10:].isdigit():
        step = int(parts[5][10:])
        parts = parts[:5]
    if len(parts) != 5 or not parts[4].isdigit():
        raise missing
    task = _succeeded_tasks(who).filter(pk=int(parts[4])).first()
    if task is None or fine_tuned_name(task) != ":".join(parts):
        raise missing
    if step is None:
        adapter = task.adapters.filter(status=Adapter.Status.READY).first()
        if adapter is None:
            raise missing
        return ResolvedModel(name, task.base_model, adapter.path, f"adapter-{adapter.pk}", task.team.name)
    ckpt = Checkpoint.objects.filter(task=task, step=step).first()
    if ckpt is None:
        raise missing
    return ResolvedModel(name, task.base_model, ckpt.path, f"ckpt-{ckpt.pk}", task.team.name)


@router.get("/models/{model_id}", response=ModelOut)
def model_retrieve(request, model_id: str):
    who = principal(request)
    resolved = resolve_model(who, model_id)
    created = resolved.base.created_at
    return {"id": model_id, "created": ts(created), "owned_by": resolved.owner}


# ------------------------------------------------------------------------------------------------ chat

def _text_of(content) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    parts = []
    for part in content:
        if isinstance(part, dict) and part.get("type") in ("text", "input_text"):
            parts.append(str(part.get("text", "")))
        else:
            raise ApplicationError("Only text content parts are supported.", code="unsupported_content",
                                   param="messages")
    return "".join(parts)


def _generation_request(payload: ChatIn):
    from training.inference import GenerationRequest

    limit = getattr(settings, "INFERENCE_MAX_NEW_TOKENS", 1024)
    wanted = payload.max_completion_tokens or payload.max_tokens or min(256, limit)
    if wanted > limit:
        raise ApplicationError(f"max_tokens is {wanted}; this server allows at most {limit}.",
                               code="max_tokens_too_large",
                               param="max_completion_tokens" if payload.max_completion_tokens else "max_tokens")
    stop = [payload.stop] if isinstance(payload.stop, str) else list(payload.stop or [])
    if len(stop) > 4:
        raise ApplicationError("stop: at most 4 sequences.", code="invalid_stop", param="stop")
    messages = []
    for m in payload.messages:
        role = "system" if m.role == "developer" else m.role
        messages.append({"role": role, "content": _text_of(m.content)})
    return GenerationRequest(messages=messages, max_new_tokens=wanted,
                             temperature=payload.temperature if payload.temperature is not None else 0.0,
                             top_p=payload.top_p if payload.top_p is not None else 1.0, seed=payload.seed,
                             stop=[s for s in stop if s])


def _check_prompt(resolved: ResolvedModel, req) -> int:
    from training.inference import count_prompt_tokens

    limit = getattr(settings, "INFERENCE_MAX_PROMPT_TOKENS", 4096)
    n = count_prompt_tokens(resolved.base.path, req.messages)
    context = resolved.base.max_position_embeddings or limit
    if n > limit or n + req.max_new_tokens > context:
        raise ApplicationError(f"The prompt has {n} tokens; with max_tokens={req.max_new_tokens} it exceeds the "
                               f"limit ({min(limit, context)} tokens).", code="context_length_exceeded",
                               param="messages")
    return n


def _check_team_rate(team, tokens: int) -> None:
    """Per team and minute: at most INFERENCE_TEAM_REQUESTS_PER_MINUTE requests and
    INFERENCE_TEAM_TOKENS_PER_MINUTE tokens (prompt + max_tokens, counted when the request is admitted)."""
    from core.ratelimit import RateLimited, consume

    requests = getattr(settings, "INFERENCE_TEAM_REQUESTS_PER_MINUTE", 60)
    token_limit = getattr(settings, "INFERENCE_TEAM_TOKENS_PER_MINUTE", 200_000)
    over = consume(f"chat-requests:{team.pk}", 1, limit=requests)
    if over is not None:
        raise RateLimited(f"Team {team.name!r} sent {over.used} chat requests this minute (limit {requests}); "
                          f"retry in {over.retry_after}s.", retry_after=over.retry_after)
    over = consume(f"chat-tokens:{team.pk}", tokens, limit=token_limit)
    if over is not None:
        raise RateLimited(f"Team {team.name!r} used {over.used} of its {token_limit} tokens this minute and this "
                          f"request needs {tokens}; retry in {over.retry_after}s.", retry_after=over.retry_after,
                          code="tokens_rate_limit_exceeded")


@router.post("/chat/completions", response={200: dict})
def chat_completions(request, payload: ChatIn):
    from training import inference

    who = principal(request)
    resolved = resolve_model(who, payload.model).require_files()
    req = _generation_request(payload)
    prompt_tokens = _check_prompt(resolved, req)
    _check_team_rate(who.team or resolve_team(who, None, write=False), prompt_tokens + req.max_new_tokens)
    completion_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
    created = int(time.time())
    if not payload.stream:
        result = inference.generate(resolved.base.path, resolved.key, resolved.adapter_path, req)
        return {"id": completion_id, "object": "chat.completion", "created": created, "model": payload.model,
                "system_fingerprint": None,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": result.text, "refusal": None},
                             "logprobs": None, "finish_reason": result.finish_reason}],
                "usage": {"prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens,
                          "total_tokens": result.prompt_tokens + result.completion_tokens}}

    include_usage = bool((payload.stream_options or {}).get("include_usage"))

    def chunk(delta: dict, finish: str | None = None, usage: dict | None = None) -> str:
        body = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": payload.model,
                "system_fingerprint": None,
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
        if usage is not None:
            body = {**body, "choices": [], "usage": usage}
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

    def events():
        yield chunk({"role": "assistant", "content": ""})
        try:
            for piece in inference.generate_stream(resolved.base.path, resolved.key, resolved.adapter_path, req):
                if isinstance(piece, inference.GenerationResult):
                    yield chunk({}, piece.finish_reason)
                    if include_usage:
                        yield chunk({}, usage={"prompt_tokens": piece.prompt_tokens,
                                               "completion_tokens": piece.completion_tokens,
                                               "total_tokens": piece.prompt_tokens + piece.completion_tokens})
                else:
                    yield chunk({"content": piece})
        except Exception as exc:  # the status line is sent: report in-band, the OpenAI way
            err = {"error": {"message": f"Generation failed: {exc}", "type": "server_error", "param": None,
                             "code": "generation_failed"}}
            yield f"data: {json.dumps(err)}\n\n"
        yield "data: [DONE]\n\n"

    response = StreamingHttpResponse(events(), content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    return response
