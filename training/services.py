"""Business rules for training tasks, and the adapter lookups every door uses."""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from accounts.models import Team
from accounts.visibility import Actor, acting_user, get_visible, resolve_team, visible_to
from catalog.models import BaseModel
from catalog.services import base_model_get
from core.commands import format_bytes
from core.errors import ApplicationError, NotFound
from datasets_app.models import DatasetVersion
from datasets_app.services import PREFERENCE_SOURCES, dataset_version_get, version_stats
from jobs import runtime
from jobs.models import JobStatus, Worker
from jobs.requirements import Requirements, requirements_parse
from jobs.services import job_check_name, job_check_priority, job_check_quota, job_get, unique_name
from ml.hparams import (
    AUTO,
    InvalidParams,
    MemoryEstimate,
    ResolvedParams,
    TrainingParams,
    check_method,
    estimate_run_memory,
    resolve_params,
)
from ml.train.checkpoints import checkpoint_problem
from training.devices import available_memory_bytes, detect_device, gpu_count, gpu_memory_gb
from training.models import Adapter, TrainingTask
from training.signals import evaluation_metric_names

TRAINABLE_KINDS = {"chat", "text"}  # dataset kinds a causal LM trains on
METADATA_KEY_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
METADATA_MAX_KEYS = 16
METADATA_MAX_VALUE = 512
SUFFIX_RE = re.compile(r"^[A-Za-z0-9_-]{0,64}$")
# The dataset kinds each training method trains on (datasets_app.formats.kind_of)
METHOD_KINDS = {"sft": TRAINABLE_KINDS, "dpo": {"preference"}, "orpo": {"preference"}, "kto": {"kto"}}
PAIR_METHODS = ("dpo", "orpo")  # the methods that train on preference pairs
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


def _token_stats(version, base_model: BaseModel) -> dict:
    """The version's token lengths under the base model's tokenizer: counted at upload when that base model was
    chosen, else now (``version_stats`` loads the tokenizer only, and caches the counts on the version)."""
    stats = version_stats(version=version, base_model=base_model)
    return (stats.get("tokens") or {}).get(base_model.name) or {}


@dataclass
class TrainingPlan:
    """What a task would run with, worked out before anything is queued: every resolved value with the reason
    of each automatic one, the memory estimate against the memory available, and, per parameter the caller
    gave, the value "auto" would have picked instead (``alternatives``, for the start form)."""

    method: str
    examples: int
    given: dict
    resolved: ResolvedParams
    estimate: MemoryEstimate
    available_bytes: int
    alternatives: dict[str, tuple[object, str]] = field(default_factory=dict)

    @property
    def refusal(self) -> str | None:
        return self.estimate.refusal(self.available_bytes)

    def to_dict(self) -> dict:
        values = self.resolved.to_dict()
        reasons = values.pop("auto")
        fields = {}
        for name in TrainingParams.model_fields:
            if name not in values:
                continue
            given = name in self.given and self.given[name] != AUTO
            auto_value, auto_reason = self.alternatives.get(name, (values[name], reasons.get(name, "")))
            fields[name] = {"value": values[name], "given": given,
                            "reason": "given" if given else reasons.get(name) or "default",
                            "auto_value": auto_value, "auto_reason": auto_reason or "default"}
        refusal = self.refusal
        estimate = self.estimate
        return {"method": self.method, "examples": self.examples, "device": self.resolved.device,
                "steps_per_epoch": self.resolved.steps_per_epoch, "total_steps": self.resolved.total_steps,
                "effective_batch_size": self.resolved.effective_batch_size, "params": self.given, "fields": fields,
                "memory": {"total_bytes": estimate.total_bytes, "total": format_bytes(estimate.total_bytes),
                           "available_bytes": self.available_bytes, "available": format_bytes(self.available_bytes),
                           "fits": refusal is None, "parts": estimate.parts, "describes": estimate.describe(),
                           "verdict": refusal or f"Fits: about {format_bytes(estimate.total_bytes)} of the "
                                                 f"{format_bytes(self.available_bytes)} available on {estimate.device}."}}


def _plan(params: dict | None, *, base_model: BaseModel, version, tokens: dict, has_validation: bool,
          method: str = "sft", alternatives: bool = False, gpus: int | None = None) -> TrainingPlan:
    """The parameters a task runs with (resolved once, from the data's real token lengths ``tokens``) and the
    memory estimate of the batch they give; ``gpus``: the GPUs the task requires (what ``num_processes="auto"``
    is planned for, else this host's)."""
    device = detect_device()
    labels = (version.stats or {}).get("labels") or {}
    label_counts = (int(labels.get("desirable", 0)), int(labels.get("undesirable", 0))) if labels else None

    def resolve(values):
        return resolve_params(values, n_examples=version.row_count, n_tokens_mean=tokens.get("mean"),
                              n_tokens_max=tokens.get("max"), device=device, gpu_memory_gb=gpu_memory_gb(),
                              has_chat_template=base_model.has_chat_template,
                              model_max_length=base_model.max_position_embeddings,
                              has_validation=has_validation, method=method, label_counts=label_counts,
                              gpu_count=gpus or gpu_count())

    try:
        resolved = resolve(params)
    except InvalidParams as exc:
        raise ApplicationError(exc.message, code="invalid_parameter", param=exc.field or "hyperparameters",
                               details=exc.errors and [{"param": str(e.get("loc", ("",))[0]), "message": e.get("msg")}
                                                       for e in exc.errors]) from None
    # Unpacked batches are as long as their longest example; packed rows fill max_seq_length.
    longest = None if resolved.packing else tokens.get("max")
    estimate = estimate_run_memory(resolved, config=base_model.config, parameter_count=base_model.parameter_count,
                                   device=device, tokens_per_sequence=longest)
    estimate.available_bytes = available_memory_bytes(device)
    others: dict[str, tuple[object, str]] = {}
    if alternatives:
        # What each given value would be left to "auto", the other given values kept.
        for name in params or {}:
            if name not in TrainingParams.model_fields or (params or {})[name] == AUTO:
                continue
            try:
                other = resolve({k: v for k, v in (params or {}).items() if k != name})
            except InvalidParams:
                continue
            others[name] = (getattr(other, name, None), other.auto.get(name, "default"))
    return TrainingPlan(method=method, examples=version.row_count, given=dict(params or {}), resolved=resolved,
                        estimate=estimate, available_bytes=estimate.available_bytes, alternatives=others)


def _resolve(params: dict | None, *, base_model: BaseModel, version, tokens: dict, has_validation: bool,
             method: str = "sft", gpus: int | None = None) -> tuple[ResolvedParams, MemoryEstimate]:
    """The resolved parameters and their estimate, refused when the estimate does not fit the device."""
    plan = _plan(params, base_model=base_model, version=version, tokens=tokens, has_validation=has_validation,
                 method=method, gpus=gpus)
    if plan.refusal:
        raise ApplicationError(plan.refusal, code="insufficient_memory", param="batch_size")
    return plan.resolved, plan.estimate


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


def _inputs(user: Actor, *, team, method, base_model, train_version, validation_version, start_adapter,
            openai_names: bool = False):
    """The team, method, base model, start adapter and dataset versions of a task, each looked up as the user
    sees it (a bad one is refused naming its field; the OpenAI protocol names the files training_file and
    validation_file)."""
    team = resolve_team(user, team)
    try:
        method = check_method(method or "sft")
    except InvalidParams as exc:
        raise ApplicationError(exc.message, code="invalid_parameter", param="method") from None
    if base_model in (None, ""):
        raise ApplicationError("Choose a base model.", code="invalid_parameter", param="base_model")
    model = base_model_get(user=user, ref=base_model.pk if isinstance(base_model, BaseModel) else base_model,
                           kind=BaseModel.Kind.CAUSAL_LM)
    start = _start_adapter(user, start_adapter, base_model=model) if start_adapter not in (None, "") else None
    if train_version in (None, ""):
        raise ApplicationError("Choose the training data.", code="invalid_parameter",
                               param="training_file" if openai_names else "train_version")
    train = _version_ref(user, train_version, param="training_file" if openai_names else "train_version")
    validation = None
    if validation_version not in (None, ""):
        validation = _version_ref(user, validation_version,
                                  param="validation_file" if openai_names else "validation_version")
    return team, method, model, start, train, validation


def training_task_plan(*, user: Actor, base_model: BaseModel | str | int, train_version,
                       validation_version=None, params: dict | None = None, team: Team | str | None = None,
                       method: str = "sft", start_adapter: Adapter | str | int | None = None) -> TrainingPlan:
    """What ``training_task_create`` would plan for these inputs, without creating anything: the resolved values
    and why, what "auto" would pick for each given value, and the memory estimate with its verdict (a run that
    does not fit is a plan whose ``refusal`` says so, which create refuses). The same lookups and checks as
    create, so what the start form shows is what create checks."""
    team, method, model, _start, train, validation = _inputs(
        user, team=team, method=method, base_model=base_model, train_version=train_version,
        validation_version=validation_version, start_adapter=start_adapter)
    for version, param in ((train, "train_version"), (validation, "validation_version")):
        if version is not None:
            problem = _check_version(version, team=team, param=param, method=method)
            if problem:
                raise ApplicationError(problem, code="invalid_dataset", param=param)
    return _plan(params, base_model=model, version=train, tokens=_token_stats(train, model),
                 has_validation=validation is not None, method=method, alternatives=True)


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
    team, method, model, start, train, validation = _inputs(
        user, team=team, method=method, base_model=base_model, train_version=train_version,
        validation_version=validation_version, start_adapter=start_adapter, openai_names=fail_invalid_files)
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

    # Counted before the transaction: tokenising a large version takes a while, and the counts are a cache.
    tokens = {} if file_problem else _token_stats(train, model)
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
        resolved, estimate = _resolve(params, base_model=model, version=train, tokens=tokens,
                                      has_validation=validation is not None, method=method, gpus=requested.gpus)
        task.resolved_params = resolved.to_dict()
        task.auto_explanation = resolved.auto
        task.estimated_memory_bytes = estimate.total_bytes
        task.memory_estimate = estimate.to_dict()
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
                             + f"; estimated peak memory {estimate.describe()}.")
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


def preference_task_create(*, user: Actor, version: DatasetVersion, base_model: BaseModel,
                           start_adapter: Adapter | None, name: str, params: dict | None = None, method: str = "dpo",
                           metadata: dict | None = None) -> TrainingTask:
    """Queue a preference task (DPO by default) on a version built from judged pairs (a blind review's votes or the
    playground's pairs, ``datasets_app.services.preference_version_create``): on ``start_adapter``, or a fresh
    adapter of ``base_model``. The source's own rules (which adapter a review's ``train`` means) are its caller's."""
    source = ((version.report or {}).get("lineage") or {}).get("source")
    if source not in PREFERENCE_SOURCES:
        raise ApplicationError(f"Dataset version {version.ref} was not built from judged pairs (a review or the "
                               "playground).", code="invalid_parameter", param="dataset")
    if method not in PAIR_METHODS:
        raise ApplicationError(f"method must be one of {', '.join(PAIR_METHODS)} (they train on pairs).",
                               code="invalid_parameter", param="method")
    return training_task_create(user=user, team=version.dataset.team, name=name, base_model=base_model,
                                train_version=version, params=params or {}, method=method,
                                start_adapter=start_adapter, metadata={"source": source, **(metadata or {})})


def training_task_latest_checkpoint(task: TrainingTask) -> str | None:
    """The newest checkpoint whose folder is complete on disk (a corrupt latest one is skipped)."""
    for ckpt in task.checkpoints.order_by("-step"):
        if checkpoint_problem(Path(ckpt.path)) is None:
            return ckpt.path
    return None


# What training/tracking.py writes in a run folder (that module imports torch, which the web process never loads).
TENSORBOARD_DIR = "tensorboard"
MLFLOW_RUN_FILE = "mlflow_run.json"


@dataclass
class TrackingLinks:
    """Where a task's run is tracked: its TensorBoard event files (and a TensorBoard serving them, when
    ``TENSORBOARD_URL`` is set), and its MLflow run once the worker logged one."""

    tensorboard_dir: str
    tensorboard_run: str
    tensorboard_written: bool
    tensorboard_command: str
    tensorboard_url: str = ""
    mlflow_run_id: str = ""
    mlflow_experiment_id: str = ""
    mlflow_tracking_uri: str = ""
    mlflow_url: str = ""


def training_task_tracking(*, task: TrainingTask) -> TrackingLinks:
    """The tracking of a task the caller already sees: read from its run folder, never from a path typed in."""
    folder = runtime.run_dir(task)
    events = folder / TENSORBOARD_DIR
    links = TrackingLinks(tensorboard_dir=str(events), tensorboard_run=f"{folder.name}/{TENSORBOARD_DIR}",
                          tensorboard_written=events.is_dir(),
                          tensorboard_command=f"tensorboard --logdir {events}",
                          tensorboard_url=settings.TENSORBOARD_URL)
    try:
        run = json.loads((folder / MLFLOW_RUN_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return links
    if not isinstance(run, dict) or not run.get("run_id"):
        return links
    links.mlflow_run_id = str(run["run_id"])
    links.mlflow_experiment_id = str(run.get("experiment_id") or "")
    links.mlflow_tracking_uri = str(run.get("tracking_uri") or "")
    if links.mlflow_tracking_uri.startswith(("http://", "https://")) and links.mlflow_experiment_id:
        links.mlflow_url = (f"{links.mlflow_tracking_uri.rstrip('/')}/#/experiments/{links.mlflow_experiment_id}"
                            f"/runs/{links.mlflow_run_id}")
    return links


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
