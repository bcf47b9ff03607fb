"""/v1/fine_tuning/jobs: the OpenAI fine-tuning protocol onto the training services.

A fine-tuning job is a ``TrainingTask`` (same row, same admin); its id is ``ftjob-<pk>``. The fine-tuned
model is named ``ft:<base>:<team>:<suffix>:<pk>`` and each checkpoint ``...:ckpt-step-N`` (``serving.services``
owns that grammar). The rules (team, quota, visibility of the model and the files, metadata, suffix, the
job's name) live in ``training.services.training_task_create``; this module translates ids, field names and
error parameters between the protocol and the service.
"""

# No `from __future__ import annotations`: ninja resolves the schemas at import.
import re
import time

from ninja import Router

from accounts.auth import principal
from core.errors import ApplicationError, NotFound
from jobs import services as job_services
from openai_compat.ids import FILE_ID, job_id, ts
from openai_compat.schemas import (
    CheckpointList,
    DpoHyperparameters,
    EventList,
    JobCreateIn,
    JobList,
    JobOut,
)
from serving.services import checkpoint_model_name, fine_tuned_model_name
from training import services
from training.models import TrainingTask

router = Router(tags=["fine-tuning"])
JOB_ID = re.compile(r"^ftjob-(\d+)$")
EVENT_ID = re.compile(r"^ftevent-(\d+)$")
CHECKPOINT_ID = re.compile(r"^ftckpt-(\d+)$")
METADATA_QUERY = re.compile(r"^metadata\[(.+)\]$")
STATUS_MAP = {"validating": "validating_files"}
HYPERPARAMETERS = frozenset(DpoHyperparameters.model_fields)  # the supervised ones and beta
# The service's parameter names -> the protocol's.
PARAMS = {"base_model": "model"}
CODES = {"dataset_not_found": "file_not_found", "dataset_version_not_found": "file_not_found"}


# ------------------------------------------------------------------------------------------------ mapping

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


# OpenAI's method types -> our training methods (preference fine-tuning is "dpo" in both).
METHODS = {"supervised": "sft", "dpo": "dpo"}


def _method_of(payload: JobCreateIn) -> str:
    return METHODS[payload.method.type] if payload.method else "sft"


def _method_hyperparameters(payload: JobCreateIn):
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


def job_out(task: TrainingTask) -> dict:
    adapter = next(iter(task.adapters.all()), None)
    succeeded = task.status == TrainingTask.Status.SUCCEEDED
    estimated = None
    if task.status == TrainingTask.Status.RUNNING and task.eta_seconds:
        estimated = int(time.time() + task.eta_seconds)
    hyper = _hyper_out(task)
    return {
        "id": job_id(task), "model": task.base_model.name, "created_at": ts(task.created_at),
        "finished_at": ts(task.finished_at), "estimated_finish": estimated,
        "status": STATUS_MAP.get(task.status, task.status),
        "fine_tuned_model": fine_tuned_model_name(task) if succeeded else None, "organization_id": task.team.name,
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


def get_job(who, value: str) -> TrainingTask:
    """``ftjob-<pk>`` -> the task, if the caller can see it (another team's job reads as missing)."""
    missing = NotFound(f"No such fine-tuning job: {value!r}.", code="job_not_found", param="fine_tuning_job_id")
    match = JOB_ID.match(value or "")
    if not match:
        raise missing
    try:
        return services.training_task_get(user=who, ref=int(match.group(1)))
    except NotFound:
        raise missing from None


def _file_pk(value: str, *, param: str) -> int:
    match = FILE_ID.match(value or "")
    if not match:
        raise NotFound(f"No such file: {value!r}.", code="file_not_found", param=param)
    return int(match.group(1))


def _params_from(payload: JobCreateIn) -> dict:
    params: dict = {}
    for source in (payload.hyperparameters, _method_hyperparameters(payload)):
        if source is not None:
            params.update(source.model_dump(exclude_none=True))
    if payload.seed is not None:
        params["seed"] = payload.seed
    return params


def _in_protocol_terms(exc: ApplicationError) -> ApplicationError:
    """The service's error with the protocol's parameter names (``model``, ``hyperparameters.n_epochs``...)."""
    if exc.param in PARAMS:
        exc.param = PARAMS[exc.param]
    if exc.code in CODES and exc.param in ("training_file", "validation_file"):
        exc.code = CODES[exc.code]
    if exc.code == "invalid_parameter" and exc.param in HYPERPARAMETERS:
        exc.param = f"hyperparameters.{exc.param}"
    return exc


# ------------------------------------------------------------------------------------------------ jobs

@router.post("/fine_tuning/jobs", response={200: JobOut})
def job_create(request, payload: JobCreateIn):
    training = _file_pk(payload.training_file, param="training_file")
    validation = _file_pk(payload.validation_file, param="validation_file") if payload.validation_file else None
    try:
        task = services.training_task_create(
            user=principal(request), team=None, name=None, base_model=payload.model, train_version=training,
            validation_version=validation,
            params=_params_from(payload), suffix=payload.suffix or "", metadata=payload.metadata,
            fail_invalid_files=True, method=_method_of(payload))
    except ApplicationError as exc:
        raise _in_protocol_terms(exc) from None
    return job_out(task)


@router.get("/fine_tuning/jobs", response=JobList)
def job_list(request, after: str | None = None, limit: int = 20):
    """Newest first; ``metadata[<key>]=<value>`` query parameters filter on the job's metadata."""
    qs = services.training_task_list(user=principal(request)).prefetch_related("adapters").order_by("-pk")
    if after:
        match = JOB_ID.match(after)
        if not match:
            raise ApplicationError(f"after: {after!r} is not a job id.", code="invalid_cursor", param="after")
        qs = qs.filter(pk__lt=int(match.group(1)))
    for key, value in request.GET.items():
        m = METADATA_QUERY.match(key)
        if m:
            if not services.METADATA_KEY_RE.match(m.group(1)):
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
    return job_out(job_services.job_cancel(user=who, job=get_job(who, fine_tuning_job_id)))


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
    match = CHECKPOINT_ID.match(after or "")
    if match:
        qs = qs.filter(pk__lt=int(match.group(1)))
    limit = max(1, min(int(limit), 100))
    rows = list(qs[: limit + 1])
    data = [{"id": f"ftckpt-{c.pk}", "created_at": ts(c.created_at), "fine_tuning_job_id": job_id(task),
             "fine_tuned_model_checkpoint": checkpoint_model_name(task, c.step), "step_number": c.step,
             "metrics": {"step": c.step, **(c.metrics or {})}} for c in rows[:limit]]
    return {"object": "list", "data": data, "has_more": len(rows) > limit,
            "first_id": data[0]["id"] if data else None, "last_id": data[-1]["id"] if data else None}
