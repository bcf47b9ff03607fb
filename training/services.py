"""Business rules for base models, training tasks and adapters."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from accounts.models import Team
from accounts.visibility import get_visible, require_write, resolve_team, visible_to
from core.errors import ApplicationError, Conflict, NotFound
from training import job_services, model_scan
from training.models import BaseModel

log = logging.getLogger(__name__)
SAFE_NAME_RE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass
class ScanRow:
    name: str
    action: str  # added, updated, unchanged, converted, unavailable, error
    kind: str = ""
    parameter_count: int = 0
    size_bytes: int = 0
    path: str = ""
    message: str = ""


@dataclass
class ScanReport:
    rows: list[ScanRow] = field(default_factory=list)

    def count(self, action: str) -> int:
        return sum(1 for r in self.rows if r.action == action)


def models_dir() -> Path:
    return Path(settings.DATA_DIR) / "models"


def default_scan_roots() -> list[Path]:
    return [models_dir(), *settings.MODEL_DIRS]


def _register(candidate: model_scan.Candidate, folder: Path, *, team: Team | None, converted: bool,
              user=None) -> ScanRow:
    info = model_scan.inspect_hf_dir(folder)
    values = {
        "kind": info.kind,
        "path": str(folder.resolve()),
        "source_path": str(candidate.path.resolve()),
        "format": BaseModel.Format.GGUF if candidate.format == "gguf" else BaseModel.Format.HF,
        "architecture": info.architecture,
        "model_type": info.model_type,
        "parameter_count": info.parameter_count,
        "size_bytes": info.size_bytes,
        "tokenizer_present": info.tokenizer_present,
        "has_chat_template": info.has_chat_template,
        "config": info.config,
        "bundled": candidate.bundled_package is not None,
        "available": True,
        "last_scanned_at": timezone.now(),
    }
    with transaction.atomic():
        obj = BaseModel.objects.select_for_update().filter(name=candidate.name).first()
        if obj is None:
            obj = BaseModel.objects.create(name=candidate.name, team=team, created_by=user, **values)
            action = "added"
        else:
            tracked = ("kind", "path", "parameter_count", "size_bytes", "available", "tokenizer_present",
                       "has_chat_template", "architecture")
            changed = any(getattr(obj, k) != values[k] for k in tracked)
            for key, value in values.items():
                setattr(obj, key, value)
            obj.save(update_fields=list(values))
            action = "updated" if changed else "unchanged"
    if converted and action != "unchanged":
        action = "converted"
    return ScanRow(name=obj.name, action=action, kind=obj.kind, parameter_count=obj.parameter_count,
                   size_bytes=obj.size_bytes, path=obj.path)


def base_models_scan(*, paths: Iterable[str | Path] | None = None, include_defaults: bool = True,
                     team: Team | None = None, user=None,
                     progress: Callable[[str, int, int], None] | None = None) -> ScanReport:
    """Register base models found on disk; convert GGUF files once; mark vanished ones unavailable.

    ``progress(name, index, total)`` is called before each candidate is processed.
    """
    report = ScanReport()
    converted_root = models_dir().resolve()
    candidates: list[model_scan.Candidate] = []
    if include_defaults:
        candidates += model_scan.bundled_candidates()
        roots = default_scan_roots()
    else:
        roots = []
    roots += [Path(p).expanduser() for p in (paths or [])]
    for root in roots:
        if not Path(root).exists() and Path(root) != models_dir():
            report.rows.append(ScanRow(name=str(root), action="error", path=str(root),
                                       message="path does not exist"))
            continue
        candidates += list(model_scan.discover(Path(root)))
    # One candidate per name; a converted folder of a GGUF counts as that GGUF's output, not a new model.
    seen: dict[str, model_scan.Candidate] = {}
    for cand in candidates:
        if cand.format == "hf" and cand.path.resolve().parent == converted_root and \
                (cand.path / model_scan.SOURCE_MARKER).is_file():
            seen.setdefault(cand.name, cand)
            continue
        prior = seen.get(cand.name)
        if prior is None or (prior.path.resolve().parent == converted_root and cand.format == "gguf"):
            seen[cand.name] = cand
    total = len(seen)
    for index, cand in enumerate(seen.values()):
        if progress:
            progress(cand.name, index, total)
        try:
            if cand.format == "gguf":
                target = models_dir() / SAFE_NAME_RE.sub("_", cand.name)
                sha = model_scan.file_sha256(cand.path)
                fresh = not model_scan.converted_is_current(target, sha)
                model_scan.convert_gguf(cand.path, target, source_sha=sha)
                report.rows.append(_register(cand, target, team=team, converted=fresh, user=user))
            else:
                report.rows.append(_register(cand, cand.path, team=team, converted=False, user=user))
        except Exception as exc:  # one broken folder must not stop the scan of the others
            log.warning("scan of %s failed: %s", cand.path, exc)
            report.rows.append(ScanRow(name=cand.name, action="error", path=str(cand.path), message=str(exc)))
    if progress:
        progress("", total, total)
    for obj in BaseModel.objects.filter(available=True):
        if not Path(obj.path).is_dir():
            obj.available = False
            obj.save(update_fields=["available"])
            report.rows.append(ScanRow(name=obj.name, action="unavailable", kind=obj.kind, path=obj.path,
                                       message="folder vanished"))
    return report


def base_model_list(*, user, kind: str | None = None, available: bool | None = None):
    qs = visible_to(user, BaseModel.objects.all(), include_global=True)
    if kind:
        qs = qs.filter(kind=kind)
    if available is not None:
        qs = qs.filter(available=available)
    return qs


def base_model_get(*, user, ref: str | int, kind: str | None = None, require_available: bool = True) -> BaseModel:
    """Find a base model the user can see by id or name; optionally require its kind and availability."""
    qs = BaseModel.objects.all()
    lookup = {"pk": int(ref)} if isinstance(ref, int) or str(ref).isdigit() else {"name": str(ref)}
    try:
        obj = get_visible(user, qs, include_global=True, **lookup)
    except NotFound:
        raise NotFound(f"Base model {ref!r} not found.", code="model_not_found", param="base_model") from None
    if kind and obj.kind != kind:
        raise ApplicationError(f"Base model {obj.name!r} is a {obj.kind} model; a {kind} model is needed.",
                               code="wrong_model_kind", param="base_model")
    if require_available and not obj.available:
        raise ApplicationError(f"Base model {obj.name!r} is unavailable: its folder {obj.path} is missing. "
                               "Run `manage.py scan_models`.", code="model_unavailable", param="base_model")
    return obj


# ================================================================================================ tasks

TRAINABLE_KINDS = {"chat", "text"}  # dataset kinds a causal LM trains on


def _version_ref(user, ref, *, param: str):
    from datasets_app.models import DatasetVersion

    if isinstance(ref, DatasetVersion):
        version = ref
        if not can_read_version(user, version):
            raise NotFound("Dataset version not found.", code="dataset_not_found", param=param)
        return version
    from datasets_app.services import dataset_version_get

    try:
        return dataset_version_get(user=user, ref=ref)
    except NotFound:
        raise NotFound(f"Dataset {ref!r} not found.", code="dataset_not_found", param=param) from None


def can_read_version(user, version) -> bool:
    from accounts.visibility import can_read

    return can_read(user, version, team_field="dataset__team")


def _check_version(version, *, team: Team, param: str) -> str | None:
    """Why the version cannot be trained on (None when it can)."""
    if version.dataset.team_id != team.pk:
        return f"Dataset version {version.pk} belongs to another team."
    if version.status != "ready":
        errors = (version.report or {}).get("errors") or []
        lines = "; ".join(f"line {e.get('line')}: {e.get('code')}: {e.get('message')}" for e in errors[:20])
        more = f" (and {len(errors) - 20} more)" if len(errors) > 20 else ""
        return f"The file has errors and cannot be used for training: {lines}{more}" if lines else \
            "The dataset version failed validation."
    if version.kind not in TRAINABLE_KINDS:
        return (f"Dataset format {version.format!r} cannot train a causal LM; use a chat, Alpaca, ShareGPT "
                "or text dataset (classification data trains a classifier).")
    return None


def _resolve(params: dict | None, *, base_model: BaseModel, version, has_validation: bool):
    from training.devices import available_memory_bytes, detect_device, gpu_memory_gb
    from training.params import InvalidParams, estimate_memory, resolve_params

    device = detect_device()
    stats = version.stats or {}
    # Token statistics are kept per tokenizer (base model name) once computed at upload or inspection.
    tokens = (stats.get("tokens") or {}).get(base_model.name) or {}
    try:
        resolved = resolve_params(params, n_examples=version.row_count, n_tokens_mean=tokens.get("mean"),
                                  n_tokens_max=tokens.get("max"), device=device, gpu_memory_gb=gpu_memory_gb(),
                                  has_chat_template=base_model.has_chat_template,
                                  model_max_length=base_model.max_position_embeddings,
                                  has_validation=has_validation)
    except InvalidParams as exc:
        raise ApplicationError(exc.message, code="invalid_parameter", param=exc.field or "hyperparameters",
                               details=exc.errors and [{"param": str(e.get("loc", ("",))[0]), "message": e.get("msg")}
                                                       for e in exc.errors]) from None
    estimate = estimate_memory(config=base_model.config, parameter_count=base_model.parameter_count or None,
                               quantization=resolved.quantization, batch_size=resolved.batch_size,
                               max_seq_length=resolved.max_seq_length, device=device, lora_r=resolved.lora_r,
                               target_modules=resolved.target_modules)
    refusal = estimate.refusal(available_memory_bytes(device))
    if refusal:
        raise ApplicationError(refusal, code="insufficient_memory", param="batch_size")
    return resolved, estimate


def _unique_task_name(team: Team, name: str) -> str:
    from training.models import TrainingTask

    if not TrainingTask.objects.filter(team=team, name=name).exists():
        return name
    n = 2
    while TrainingTask.objects.filter(team=team, name=f"{name}-{n}").exists():
        n += 1
    return f"{name}-{n}"


def _evaluation_request(evaluate, metrics) -> list[str]:
    """Validate the evaluation a task asks for on success; the names come from the evaluation app."""
    from training.signals import evaluation_metric_names

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


def training_task_create(*, user, name: str | None, base_model: BaseModel | str | int, train_version,
                         validation_version=None, params: dict | None = None, team: Team | str | None = None,
                         priority: int = 0, suffix: str = "", metadata: dict | None = None,
                         fail_invalid_files: bool = False, cloned_from=None, evaluate: bool = False,
                         evaluation_metrics: list[str] | str | None = None):
    """Validate everything synchronously, then create a queued task and wake a worker on commit.

    ``fail_invalid_files`` (the OpenAI protocol): a file that failed validation still creates the job,
    which fails at once in validating_files with the row-level report, instead of a 400.
    """
    from training import jobs
    from training.models import JobStatus, TrainingTask

    team = resolve_team(user, team)
    model = base_model_get(user=user, ref=base_model.pk if isinstance(base_model, BaseModel) else base_model,
                           kind=BaseModel.Kind.CAUSAL_LM)
    train = _version_ref(user, train_version, param="training_file" if fail_invalid_files else "train_version")
    validation = None
    if validation_version not in (None, ""):
        validation = _version_ref(user, validation_version,
                                  param="validation_file" if fail_invalid_files else "validation_version")
    if not isinstance(priority, int) or not -100 <= priority <= 100:
        raise ApplicationError("priority must be an integer from -100 to 100.", code="invalid_parameter",
                               param="priority")
    metrics_requested = _evaluation_request(evaluate, evaluation_metrics)
    name = (name or "").strip() or f"{model.name}-{train.dataset.name}"
    if len(name) > 180:
        raise ApplicationError("name is longer than 180 characters.", code="invalid_parameter", param="name")
    file_problem = None
    for version, param in ((train, "training_file" if fail_invalid_files else "train_version"),
                           (validation, "validation_file" if fail_invalid_files else "validation_version")):
        if version is None:
            continue
        problem = _check_version(version, team=team, param=param)
        if problem and not (fail_invalid_files and version.status != "ready"):
            raise ApplicationError(problem, code="invalid_dataset", param=param)
        if problem and file_problem is None:
            file_problem = (problem, param)

    now = timezone.now()
    with transaction.atomic():
        task = TrainingTask(name=_unique_task_name(team, name), team=team, created_by=getattr(user, "user", user),
                            base_model=model, train_version=train, validation_version=validation,
                            params=params or {}, priority=priority, suffix=suffix[:64], metadata=metadata or {},
                            cloned_from=cloned_from, evaluate_on_success=bool(evaluate),
                            evaluation_metrics=metrics_requested)
        if file_problem:
            task.status = JobStatus.FAILED
            task.finished_at = now
            task.error_code = "invalid_file"
            task.error_message = file_problem[0]
            task.error_param = file_problem[1]
            task.save()
            jobs.add_event(task, f"Validation failed: {file_problem[0]}", level="error")
            return task
        resolved, estimate = _resolve(params, base_model=model, version=train, has_validation=validation is not None)
        task.resolved_params = resolved.to_dict()
        task.auto_explanation = resolved.auto
        task.estimated_memory_bytes = estimate.total_bytes
        task.seed = resolved.seed
        task.total_steps = resolved.total_steps
        task.status = JobStatus.QUEUED
        task.queued_at = now
        task.save()
        jobs.add_event(task, f"Created: {train.row_count} training examples, {resolved.n_epochs} epochs, "
                             f"lr {resolved.learning_rate:g}, LoRA r={resolved.lora_r}, "
                             f"quantization {resolved.quantization}, device {resolved.device}; "
                             f"estimated peak memory {estimate.total_bytes / 1024**3:.1f} GiB.")
        jobs.enqueue(task)
    return task


def training_task_list(*, user, team: str | None = None, status: str | None = None):
    from training.models import TrainingTask

    qs = visible_to(user, TrainingTask.objects.all()).select_related("team", "base_model", "created_by")
    if team:
        qs = qs.filter(team__name=team)
    if status:
        qs = qs.filter(status=status)
    return qs


def training_task_get(*, user, ref: str | int, for_update: bool = False):
    from training.models import TrainingTask

    lookup = {"pk": int(ref)} if isinstance(ref, int) or str(ref).isdigit() else {"name": str(ref)}
    try:
        task = get_visible(user, TrainingTask.objects.select_related("team", "base_model"), **lookup)
    except NotFound:
        raise NotFound(f"Training task {ref!r} not found.", code="task_not_found") from None
    except TrainingTask.MultipleObjectsReturned:
        raise ApplicationError(f"Several tasks are named {ref!r}: use the id.", code="ambiguous_name") from None
    if for_update:
        require_write(user, task)
    return task


def training_task_cancel(*, user, task):
    return job_services.job_cancel(user=user, job=task)


def training_task_pause(*, user, task):
    return job_services.job_pause(user=user, job=task)


def training_task_resume(*, user, task):
    return job_services.job_resume(user=user, job=task, checkpoint=latest_checkpoint_path(task))


def training_task_retry(*, user, task):
    """Run a failed or cancelled task again, continuing from its last good checkpoint if it has one."""
    if task.error_code == "invalid_file":
        require_write(user, task)
        raise Conflict("This task's data failed validation: fix the file and create a new task.",
                       code="invalid_state")
    return job_services.job_retry(user=user, job=task, checkpoint=latest_checkpoint_path(task))


def training_task_clone(*, user, task, name: str | None = None, params: dict | None = None, **changes):
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
        evaluate=task.evaluate_on_success, evaluation_metrics=task.evaluation_metrics)


def latest_checkpoint_path(task) -> str | None:
    """The newest checkpoint whose folder is complete on disk (a corrupt latest one is skipped)."""
    from training.checkpoints import checkpoint_problem

    for ckpt in task.checkpoints.order_by("-step"):
        if checkpoint_problem(Path(ckpt.path)) is None:
            return ckpt.path
    return None


def training_events_page(*, task, after: int | None = None, limit: int = 100):
    """Keyset pagination over a task's events (constant cost however long the log)."""
    limit = max(1, min(int(limit), 1000))
    qs = task.events.order_by("id")
    if after is not None:
        qs = qs.filter(id__gt=after)
    rows = list(qs[: limit + 1])
    return rows[:limit], len(rows) > limit


# ================================================================================================ adapters

def adapter_list(*, user, team: str | None = None, base_model: str | None = None, kind: str | None = None):
    from training.models import Adapter

    qs = visible_to(user, Adapter.objects.all()).select_related("team", "base_model", "task", "created_by",
                                                                "approval_requested_by")
    if team:
        qs = qs.filter(team__name=team)
    if base_model:
        qs = qs.filter(base_model__name=base_model)
    if kind:
        qs = qs.filter(kind=kind)
    return qs


def adapter_get(*, user, ref: str | int):
    from training.models import Adapter

    qs = Adapter.objects.select_related("team", "base_model", "task")
    lookup = {"pk": int(ref)} if isinstance(ref, int) or str(ref).isdigit() else {"name": str(ref)}
    try:
        return get_visible(user, qs, **lookup)
    except NotFound:
        raise NotFound(f"Adapter {ref!r} not found.", code="adapter_not_found", param="adapter") from None
    except Adapter.MultipleObjectsReturned:
        raise ApplicationError(f"Several adapters are named {ref!r}: use the id.", code="ambiguous_name",
                               param="adapter") from None


def adapter_unique_name(team: Team, name: str) -> str:
    from training.models import Adapter

    if not Adapter.objects.filter(team=team, name=name).exists():
        return name
    n = 2
    while Adapter.objects.filter(team=team, name=f"{name}-{n}").exists():
        n += 1
    return f"{name}-{n}"


def adapter_archive(*, user, adapter, note: str = ""):
    """Archive (refused while a job uses it or it is in production): see ``training.lifecycle``."""
    from training.lifecycle import adapter_archive as archive

    return archive(user=user, adapter=adapter, note=note)


def adapter_zip_stream(*, user, adapter):
    """The adapter folder as a streamed zip with a README.md model card (``training.lifecycle.adapter_export``)."""
    from training.lifecycle import adapter_export

    return adapter_export(user=user, adapter=adapter)[1]
