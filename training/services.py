"""Business rules for training tasks, and the adapter lookups every door uses."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from accounts.models import Team
from accounts.visibility import Actor, acting_user, get_visible, resolve_team, visible_to
from catalog.models import BaseModel
from catalog.services import base_model_get
from core.errors import ApplicationError, NotFound
from datasets_app.models import DatasetVersion
from datasets_app.services import dataset_version_get
from jobs import runtime
from jobs.models import JobStatus, Worker
from jobs.requirements import Requirements, requirements_parse
from jobs.services import job_check_name, job_check_priority, job_check_quota, job_get, unique_name
from training.checkpoints import checkpoint_problem
from training.devices import available_memory_bytes, detect_device, gpu_count, gpu_memory_gb
from training.models import Adapter, TrainingTask
from training.params import PREFERENCE_METHODS, InvalidParams, check_method, estimate_memory, resolve_params
from training.signals import evaluation_metric_names

TRAINABLE_KINDS = {"chat", "text"}  # dataset kinds a causal LM trains on
METADATA_KEY_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
METADATA_MAX_KEYS = 16
METADATA_MAX_VALUE = 512
SUFFIX_RE = re.compile(r"^[A-Za-z0-9_-]{0,64}$")
# The dataset kinds each training method trains on (datasets_app.formats.kind_of)
METHOD_KINDS = {"sft": TRAINABLE_KINDS, "dpo": {"preference"}, "orpo": {"preference"}, "kto": {"kto"}}
KIND_WORDS = {"chat": "chat data", "text": "plain text", "preference": "preference pairs", "kto": "labelled answers",
              "classification": "classification data"}


def _version_ref(user: Actor, ref: object, *, param: str) -> DatasetVersion:
    try:
        return dataset_version_get(user=user, ref=ref)
    except NotFound:
        raise NotFound(f"Dataset {ref!r} not found.", code="dataset_not_found", param=param) from None


def _format_refusal(version, method: str) -> str | None:
    """Why ``method`` cannot train on this version's format, naming both (None when it can)."""
    kind = version.kind
    if kind in METHOD_KINDS[method]:
        return None
    held = f"Dataset format {version.format!r} holds {KIND_WORDS.get(kind or '', kind or 'unknown data')}"
    if method == "sft":
        if kind in ("preference", "kto"):
            other = "dpo or orpo" if kind == "preference" else "kto"
            return (f"{held}, which supervised fine-tuning (method sft) cannot train on; train it with method "
                    f"{other}, or upload chat, Alpaca, ShareGPT or text data for SFT.")
        return (f"Dataset format {version.format!r} cannot train a causal LM; use a chat, Alpaca, ShareGPT "
                "or text dataset (classification data trains a classifier).")
    if method == "kto":
        return (f"{held}; method kto trains on labelled answers (format kto: prompt, completion and a boolean "
                "label)" + ("; preference pairs train with method dpo or orpo." if kind == "preference" else "."))
    return (f"{held}; method {method} trains on preference pairs (format preference: prompt, chosen and rejected, "
            "or OpenAI's input, preferred_output and non_preferred_output)"
            + ("; chat data trains with method sft." if kind in TRAINABLE_KINDS else "."))


def _check_version(version, *, team: Team, param: str, method: str = "sft") -> str | None:
    """Why the version cannot be trained on by ``method`` (None when it can)."""
    if version.dataset.team_id != team.pk:
        return f"Dataset version {version.pk} belongs to another team."
    if version.status != "ready":
        errors = (version.report or {}).get("errors") or []
        lines = "; ".join(f"line {e.get('line')}: {e.get('code')}: {e.get('message')}" for e in errors[:20])
        more = f" (and {len(errors) - 20} more)" if len(errors) > 20 else ""
        return f"The file has errors and cannot be used for training: {lines}{more}" if lines else \
            "The dataset version failed validation."
    return _format_refusal(version, method)


def _resolve(params: dict | None, *, base_model: BaseModel, version, has_validation: bool, method: str = "sft",
             gpus: int | None = None):
    """Resolve the parameters and estimate the run's memory; ``gpus``: the GPUs the task requires (what
    ``num_processes="auto"`` is planned for, else this host's)."""
    device = detect_device()
    stats = version.stats or {}
    # Token statistics are kept per tokenizer (base model name) once computed at upload or inspection.
    tokens = (stats.get("tokens") or {}).get(base_model.name) or {}
    labels = stats.get("labels") or {}
    label_counts = (int(labels.get("desirable", 0)), int(labels.get("undesirable", 0))) if labels else None
    try:
        resolved = resolve_params(params, n_examples=version.row_count, n_tokens_mean=tokens.get("mean"),
                                  n_tokens_max=tokens.get("max"), device=device, gpu_memory_gb=gpu_memory_gb(),
                                  has_chat_template=base_model.has_chat_template,
                                  model_max_length=base_model.max_position_embeddings,
                                  has_validation=has_validation, method=method, label_counts=label_counts,
                                  gpu_count=gpus or gpu_count())
    except InvalidParams as exc:
        raise ApplicationError(exc.message, code="invalid_parameter", param=exc.field or "hyperparameters",
                               details=exc.errors and [{"param": str(e.get("loc", ("",))[0]), "message": e.get("msg")}
                                                       for e in exc.errors]) from None
    # A preference batch holds two sequences per example (chosen and rejected; KTO: the answer and its KL
    # counterpart); the reference pass runs without gradients and keeps no activations.
    sequences = resolved.batch_size * (2 if method in PREFERENCE_METHODS else 1)
    estimate = estimate_memory(config=base_model.config, parameter_count=base_model.parameter_count or None,
                               quantization=resolved.quantization, batch_size=sequences,
                               max_seq_length=resolved.max_seq_length, device=device, lora_r=resolved.lora_r,
                               target_modules=resolved.target_modules, num_processes=resolved.num_processes,
                               strategy=resolved.strategy)
    refusal = estimate.refusal(available_memory_bytes(device))
    if refusal:
        raise ApplicationError(refusal, code="insufficient_memory", param="batch_size")
    return resolved, estimate


def _requirements(requested: Requirements, *, device: str, processes: int = 1) -> dict:
    """The worker the task needs: what the caller asked for, and by default the device the recipe planned the
    task for (planned for CUDA: a CUDA worker, with a GPU per process; planned for the CPU: any worker can run
    it, its processes as gloo ranks)."""
    if requested.device is None and device == "cuda":
        requested = requirements_parse({**requested.to_dict(), "device": "cuda"})
    if requested.device == "cuda" and processes > requested.gpu_count:
        requested = requirements_parse({**requested.to_dict(), "gpus": processes})
    return requested.to_dict()


def training_task_processes(task: TrainingTask, worker: Worker | None) -> int:
    """How many processes run the task on ``worker`` (the kind's ``processes``): ``num_processes``, where
    ``"auto"`` is every GPU of the worker (one process on a CPU worker)."""
    wanted = (task.params or {}).get("num_processes", 1)
    if task.method != TrainingTask.Method.SFT:
        return 1
    if wanted == "auto":
        if worker is not None and worker.device == "cuda" and worker.gpus:
            return len(worker.gpus)
        return 1
    return max(1, int(wanted))


def _evaluation_request(evaluate, metrics) -> list[str]:
    """Validate the evaluation a task asks for on success; the names come from the evaluation app."""
    if not isinstance(evaluate, bool):
        raise ApplicationError("evaluate must be true or false.", code="invalid_parameter", param="evaluate")
    if isinstance(metrics, str):
        metrics = [m.strip() for m in metrics.split(",") if m.strip()]
    metrics = list(metrics or [])
    if not evaluate:
        if metrics:
            raise ApplicationError("evaluation_metrics needs evaluate=true.", code="invalid_parameter",
                                   param="evaluation_metrics")
        return []
    if not evaluation_metric_names:
        raise ApplicationError("No evaluation app is installed.", code="invalid_parameter", param="evaluate")
    aliases = {"ppl": "perplexity", "sample": "samples"}
    cleaned: list[str] = []
    for name in metrics:
        name = aliases.get(str(name), str(name))
        if name not in evaluation_metric_names:
            raise ApplicationError(f"Unknown evaluation metric {name!r}; choose from "
                                   f"{', '.join(sorted(evaluation_metric_names))}.", code="invalid_parameter",
                                   param="evaluation_metrics")
        if name not in cleaned:
            cleaned.append(name)
    return cleaned


def check_metadata(metadata: object) -> dict[str, str]:
    """A task's metadata: at most 16 keys of 1-64 characters ``[A-Za-z0-9_.-]``, text values up to 512."""
    metadata = {} if metadata is None else metadata
    if not isinstance(metadata, dict) or len(metadata) > METADATA_MAX_KEYS or any(
            not isinstance(k, str) or not METADATA_KEY_RE.match(k) or not isinstance(v, str)
            or len(v) > METADATA_MAX_VALUE for k, v in metadata.items()):
        raise ApplicationError(f"metadata: at most {METADATA_MAX_KEYS} keys of 1-64 characters [A-Za-z0-9_.-], "
                               f"text values up to {METADATA_MAX_VALUE}.", code="invalid_metadata", param="metadata")
    return dict(metadata)


def check_suffix(suffix: object) -> str:
    """The suffix of the fine-tuned model's name (``ft:<base>:<team>:<suffix>:<id>``): up to 64 letters, digits,
    '-' and '_' (a ':' would break the name)."""
    suffix = "" if suffix is None else suffix
    if not isinstance(suffix, str) or not SUFFIX_RE.match(suffix):
        raise ApplicationError("suffix may contain up to 64 letters, digits, '-' and '_' only.",
                               code="invalid_suffix", param="suffix")
    return suffix


def _default_name(model: BaseModel, suffix: str) -> str:
    """A task nobody named (the OpenAI protocol has no names): random, so concurrent creates never collide."""
    return f"ft-{suffix or model.name}-{uuid.uuid4().hex[:8]}"


def training_task_create(*, user: Actor, name: str | None, base_model: BaseModel | str | int, train_version,
                         validation_version=None, params: dict | None = None, team: Team | str | None = None,
                         priority: int = 0, suffix: str = "", metadata: dict | None = None,
                         fail_invalid_files: bool = False, cloned_from=None, evaluate: bool = False,
                         evaluation_metrics: list[str] | str | None = None,
                         requirements: dict | None = None, method: str = "sft",
                         start_adapter: Adapter | str | int | None = None) -> TrainingTask:
    """Validate everything synchronously, then create a queued task and wake a worker on commit.

    ``fail_invalid_files`` (the OpenAI protocol): a file that failed validation still creates the job,
    which fails at once in validating_files with the row-level report, instead of a 400. Without a ``name`` the
    task gets ``ft-<suffix or base model>-<8 hex digits>``. The team's queue quota (``job_check_quota``) is
    checked in the transaction that creates the task. ``method`` decides the dataset formats accepted (sft:
    chat/text; dpo, orpo: preference; kto: kto); ``start_adapter`` trains an existing causal-LM adapter of the
    same base model further (the lineage records it).
    """
    team = resolve_team(user, team)
    try:
        method = check_method(method or "sft")
    except InvalidParams as exc:
        raise ApplicationError(exc.message, code="invalid_parameter", param="method") from None
    model = base_model_get(user=user, ref=base_model.pk if isinstance(base_model, BaseModel) else base_model,
                           kind=BaseModel.Kind.CAUSAL_LM)
    start = _start_adapter(user, start_adapter, base_model=model) if start_adapter not in (None, "") else None
    train = _version_ref(user, train_version, param="training_file" if fail_invalid_files else "train_version")
    validation = None
    if validation_version not in (None, ""):
        validation = _version_ref(user, validation_version,
                                  param="validation_file" if fail_invalid_files else "validation_version")
    metadata = check_metadata(metadata)
    suffix = check_suffix(suffix)
    priority = job_check_priority(priority)
    requested = requirements_parse(requirements)
    metrics_requested = _evaluation_request(evaluate, evaluation_metrics)
    name = job_check_name((name or "").strip() or _default_name(model, suffix))
    file_problem = None
    for version, param in ((train, "training_file" if fail_invalid_files else "train_version"),
                           (validation, "validation_file" if fail_invalid_files else "validation_version")):
        if version is None:
            continue
        problem = _check_version(version, team=team, param=param, method=method)
        if problem and not (fail_invalid_files and version.status != "ready"):
            raise ApplicationError(problem, code="invalid_dataset", param=param)
        if problem and file_problem is None:
            file_problem = (problem, param)

    now = timezone.now()
    with transaction.atomic():
        if not file_problem:
            job_check_quota(team)
        task = TrainingTask(name=unique_name(TrainingTask, team, name), team=team, created_by=acting_user(user),
                            base_model=model, train_version=train, validation_version=validation,
                            params=params or {}, priority=priority, suffix=suffix, metadata=metadata,
                            cloned_from=cloned_from, evaluate_on_success=bool(evaluate),
                            evaluation_metrics=metrics_requested, method=method, start_adapter=start)
        if file_problem:
            task.status = JobStatus.FAILED
            task.finished_at = now
            task.error_code = "invalid_file"
            task.error_message = file_problem[0]
            task.error_param = file_problem[1]
            task.save()
            runtime.add_event(task, f"Validation failed: {file_problem[0]}", level="error")
            return task
        resolved, estimate = _resolve(params, base_model=model, version=train, has_validation=validation is not None,
                                      method=method, gpus=requested.gpus)
        task.resolved_params = resolved.to_dict()
        task.auto_explanation = resolved.auto
        task.estimated_memory_bytes = estimate.total_bytes
        task.seed = resolved.seed
        task.total_steps = resolved.total_steps
        task.requirements = _requirements(requested, device=resolved.device, processes=resolved.num_processes)
        task.status = JobStatus.QUEUED
        task.queued_at = now
        task.save()
        what = {"sft": "training examples", "kto": "labelled answers"}.get(method, "preference pairs")
        how = "" if method == "sft" else f"{method.upper()} (beta {resolved.beta:g}" + (
            f", loss {resolved.loss_type}" if resolved.loss_type else "") + ")" + (
            f" from adapter {start.name}" if start else "") + ", "
        runtime.add_event(task, f"Created: {how}{train.row_count} {what}, {resolved.n_epochs} epochs, "
                             f"lr {resolved.learning_rate:g}, LoRA r={resolved.lora_r}, "
                             f"quantization {resolved.quantization}, device {resolved.device}"
                             + (f" x {resolved.num_processes} processes ({resolved.strategy})"
                                if resolved.num_processes > 1 else "")
                             + f"; estimated peak memory {estimate.total_bytes / 1024**3:.1f} GiB"
                             + (" per GPU." if resolved.num_processes > 1 and resolved.device == "cuda" else "."))
        runtime.enqueue(task)
    return task


def _start_adapter(user: Actor, ref, *, base_model: BaseModel) -> Adapter:
    adapter = ref if isinstance(ref, Adapter) else None
    if adapter is None:
        try:
            adapter = adapter_get(user=user, ref=ref)
        except NotFound:
            raise NotFound(f"Adapter {ref!r} not found.", code="adapter_not_found", param="start_adapter") from None
    if adapter.kind != Adapter.Kind.CAUSAL_LM:
        raise ApplicationError(f"Adapter {adapter.name!r} is a {adapter.kind} adapter; start from a causal-LM "
                               "adapter.", code="invalid_parameter", param="start_adapter")
    if adapter.base_model_id != base_model.pk:
        raise ApplicationError(f"Adapter {adapter.name!r} was trained on {adapter.base_model.name}, not "
                               f"{base_model.name}: start from an adapter of the same base model.",
                               code="invalid_parameter", param="start_adapter")
    if not adapter.files_present or adapter.status != Adapter.Status.READY:
        raise ApplicationError(f"Adapter {adapter.name!r} is archived or its files were deleted.",
                               code="invalid_parameter", param="start_adapter")
    return adapter


def training_task_list(*, user: Actor, team: str | None = None, status: str | None = None) -> QuerySet[TrainingTask]:
    qs = visible_to(user, TrainingTask.objects.all()).select_related("team", "base_model", "created_by")
    if team:
        qs = qs.filter(team__name=team)
    if status:
        qs = qs.filter(status=status)
    return qs


def training_task_get(*, user: Actor, ref: str | int, for_update: bool = False) -> TrainingTask:
    return job_get(user=user, queryset=TrainingTask.objects.select_related("team", "base_model"), ref=ref,
                   code="task_not_found", label="Training task", for_update=for_update)


def training_task_clone(*, user: Actor, task: TrainingTask, name: str | None = None, params: dict | None = None,
                        **changes) -> TrainingTask:
    """A new task with the same inputs (and optional changes): "reproduce" and "clone with changes"."""
    merged = {**(task.params or {}), **(params or {})}
    if "seed" not in merged and task.seed is not None:
        merged["seed"] = task.seed
    return training_task_create(
        user=user, team=task.team, name=name or f"{task.name}-clone", base_model=changes.get("base_model",
                                                                                            task.base_model),
        train_version=changes.get("train_version", task.train_version),
        validation_version=changes.get("validation_version", task.validation_version), params=merged,
        priority=task.priority, suffix=task.suffix, metadata=task.metadata, cloned_from=task,
        evaluate=task.evaluate_on_success, evaluation_metrics=task.evaluation_metrics,
        requirements=changes.get("requirements", task.requirements),
        method=changes.get("method", task.method), start_adapter=changes.get("start_adapter", task.start_adapter))


def training_task_reproduce(*, user: Actor, job: TrainingTask, name: str | None = None) -> TrainingTask:
    """The ``reproduce`` of the training kind: the same inputs and seed, a new run."""
    return training_task_clone(user=user, task=job, name=name or f"{job.name}-repro")


def training_task_latest_checkpoint(task: TrainingTask) -> str | None:
    """The newest checkpoint whose folder is complete on disk (a corrupt latest one is skipped)."""
    for ckpt in task.checkpoints.order_by("-step"):
        if checkpoint_problem(Path(ckpt.path)) is None:
            return ckpt.path
    return None


# ================================================================================================ adapters

def adapter_list(*, user: Actor, team: str | None = None, base_model: str | None = None, kind: str | None = None):
    qs = visible_to(user, Adapter.objects.all()).select_related("team", "base_model", "task", "created_by",
                                                                "approval_requested_by")
    if team:
        qs = qs.filter(team__name=team)
    if base_model:
        qs = qs.filter(base_model__name=base_model)
    if kind:
        qs = qs.filter(kind=kind)
    return qs


def adapter_get(*, user: Actor, ref: str | int) -> Adapter:
    qs = Adapter.objects.select_related("team", "base_model", "task")
    lookup = {"pk": int(ref)} if isinstance(ref, int) or str(ref).isdigit() else {"name": str(ref)}
    try:
        return get_visible(user, qs, **lookup)
    except NotFound:
        raise NotFound(f"Adapter {ref!r} not found.", code="adapter_not_found", param="adapter") from None
    except Adapter.MultipleObjectsReturned:
        raise ApplicationError(f"Several adapters are named {ref!r}: use the id.", code="ambiguous_name",
                               param="adapter") from None
