"""An adapter's life after training: scan, promote and approve, archive and delete, export (zip with a model
card, Ollama bundle), merge into a standalone base model, lineage and reproduce.

Every door (admin, ``/api/``, ``/v1/`` model resolution, ``manage.py adapter``, the worker) calls these
functions; rule violations raise ``core.errors.ApplicationError`` like the rest of the services.

Stages: ``draft -> candidate -> production``. Moving to production needs the approval of a team admin who
is not the adapter's author (whoever created the adapter or its task); a member's "promote to production"
records a request that such an admin approves. One adapter per (team, model name) is in production: the
previous one goes back to candidate in the same transaction, and a unique constraint on
``(team, model_name, production_slot)`` makes a second one impossible even under concurrent approvals.
"""

from __future__ import annotations

import io
import json
import logging
import re
import shutil
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import ForeignKey, OneToOneField, Q
from django.utils import timezone

from accounts import visibility
from accounts.models import Team
from accounts.visibility import Actor, acting_user
from catalog import model_scan
from catalog.models import BaseModel
from core.errors import ApplicationError, Conflict, NotFound, PermissionDenied
from jobs import runtime
from jobs.models import ACTIVE, Job, JobStatus
from jobs.registry import kinds
from jobs.services import job_check_priority, job_check_quota, job_reproduce, unique_name
from training.models import Adapter, AdapterEvent, MergeJob
from training.signals import lineage_requested

log = logging.getLogger(__name__)
SAFE_NAME_RE = re.compile(r"[^A-Za-z0-9._-]+")
STAMP_SUFFIX_RE = re.compile(r"_\d{8}-\d{6}$")
OLLAMA_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,99}(?::[A-Za-z0-9._-]{1,50})?$")
Stage = Adapter.Stage


def _event(adapter: Adapter, who, action: str, *, from_stage: str = "", to_stage: str = "", note: str = "",
           data: dict | None = None) -> AdapterEvent:
    return AdapterEvent.objects.create(adapter=adapter, actor=acting_user(who),
                                       action=action, from_stage=from_stage, to_stage=to_stage,
                                       note=(note or "")[:2000], data=data or {})


def _adapter_links(model: type[Job]) -> list[str]:
    """The names of ``model``'s foreign keys to Adapter (the jobs that use or produce an adapter)."""
    return [f.name for f in model._meta.get_fields()
            if isinstance(f, ForeignKey | OneToOneField) and f.related_model is Adapter]


def origin_task(adapter: Adapter) -> Job | None:
    """The job that produced the adapter: its training task, or the job of another kind that points at it
    one-to-one (a classifier task, say); None when it was found by a scan."""
    if adapter.task_id:
        return adapter.task
    for kind in kinds():
        for name in _adapter_links(kind.model):
            if isinstance(kind.model._meta.get_field(name), OneToOneField):
                job = kind.model.objects.filter(**{name: adapter}).first()
                if job is not None:
                    return job
    return None


def default_model_name(task) -> str:
    """The name a trained adapter is served under: its task's, or the original's for clones ("reproduce")."""
    seen = set()
    while getattr(task, "cloned_from_id", None) and task.cloned_from_id not in seen:
        seen.add(task.pk)
        parent = type(task).objects.filter(pk=task.cloned_from_id).first()
        if parent is None:
            break
        task = parent
    return task.name


def author_ids(adapter: Adapter) -> set[int]:
    """Who counts as the adapter's author (may not approve it for production)."""
    ids = {adapter.created_by_id}
    task = origin_task(adapter)
    if task is not None:
        ids.add(task.created_by_id)
    return {i for i in ids if i is not None}


def can_approve(who, adapter: Adapter) -> bool:
    user = acting_user(who)
    return visibility.can_manage(who, adapter.team) and getattr(user, "pk", None) not in author_ids(adapter)


def _readable(who, adapter: Adapter) -> None:
    if not visibility.can_read(who, adapter):
        raise NotFound("Adapter not found.", code="adapter_not_found", param="adapter")


def _locked(adapter: Adapter) -> Adapter:
    return Adapter.objects.select_for_update().select_related("team", "base_model").get(pk=adapter.pk)


def _require_live(adapter: Adapter, doing: str) -> None:
    if adapter.status == Adapter.Status.ARCHIVED:
        raise Conflict(f"Adapter {adapter.name!r} is archived: restore it before you {doing}.",
                       code="adapter_archived", param="adapter")
    if adapter.files_deleted_at:
        raise Conflict(f"Adapter {adapter.name!r} has no files on disk any more.", code="adapter_files_missing",
                       param="adapter")


def _copy_state(target: Adapter, source: Adapter) -> Adapter:
    for f in ("stage", "production_slot", "stage_changed_at", "approval_requested_by_id", "approval_requested_at",
              "status", "files_deleted_at", "model_name", "size_bytes"):
        setattr(target, f, getattr(source, f))
    return target


# ============================================================================================ rename

# The served name is ``<team>/<model name>:production``: no ``/``, ``:`` or whitespace in a model name.
MODEL_NAME_RE = re.compile(r"^[^\s/:]{1,200}$")


def adapter_rename(*, user: Actor, adapter: Adapter, name: str | None = None,
                   model_name: str | None = None) -> Adapter:
    """Change the adapter's name and/or the model name it is served under, with an audit event.

    Only these two columns are written. ``ft:`` ids name the training task and its base model, not the
    adapter, so they keep resolving. A new model name of an adapter in production moves
    ``<team>/<model name>:production`` with it; when another adapter is already in production under that
    model name the rename is refused (409), like a second approval would be."""
    visibility.require_write(user, adapter)
    values: dict[str, str] = {}
    with transaction.atomic():
        locked = _locked(adapter)
        if name is not None and name.strip() != locked.name:
            name = name.strip()
            if not name or len(name) > 200:
                raise ApplicationError("name must be 1-200 characters.", code="invalid_parameter", param="name")
            if Adapter.objects.filter(team_id=locked.team_id, name=name).exclude(pk=locked.pk).exists():
                raise Conflict(f"Another adapter of team {locked.team.name!r} is named {name!r}.", code="name_taken",
                               param="name")
            values["name"] = name
        if model_name is not None and model_name.strip() != locked.model_name:
            model_name = model_name.strip() or values.get("name", locked.name)
            if not MODEL_NAME_RE.match(model_name):
                raise ApplicationError("model_name must be 1-200 characters without spaces, '/' or ':'.",
                                       code="invalid_parameter", param="model_name")
            if model_name != locked.model_name:
                values["model_name"] = model_name
        if not values:
            return _copy_state(adapter, locked)
        try:
            with transaction.atomic():
                Adapter.objects.filter(pk=locked.pk).update(**values)
        except IntegrityError:
            if "model_name" in values and locked.stage == Stage.PRODUCTION:
                raise Conflict(f"Another adapter is in production as {locked.team.name}/{values['model_name']}; "
                               "move it out of production first.", code="production_conflict",
                               param="model_name") from None
            raise Conflict(f"Another adapter of team {locked.team.name!r} is named {values.get('name')!r}.",
                           code="name_taken", param="name") from None
        changes = {key: {"from": getattr(locked, key), "to": value} for key, value in values.items()}
        _event(locked, user, AdapterEvent.Action.RENAMED,
               note="; ".join(f"{key}: {c['from']} -> {c['to']}" for key, c in changes.items()), data=changes)
        locked.refresh_from_db()
    adapter.name, adapter.model_name = locked.name, locked.model_name
    return _copy_state(adapter, locked)


# ============================================================================================ stages

def adapter_promote(*, user, adapter: Adapter, stage: str, note: str = "") -> Adapter:
    """Move the adapter to ``stage``. Production: applied at once when the caller may approve it (team admin,
    not the author), otherwise recorded as a request for approval."""
    visibility.require_write(user, adapter)  # a viewer gets 403, another team's adapter 404
    if stage not in Stage.values:
        raise ApplicationError(f"Unknown stage {stage!r}: one of {', '.join(Stage.values)}.",
                               code="invalid_parameter", param="stage")
    if stage == Stage.PRODUCTION:
        with transaction.atomic():
            locked = _locked(adapter)
            _require_live(locked, "promote it")
            if locked.stage == Stage.PRODUCTION:
                raise Conflict(f"Adapter {locked.name!r} is already in production.", code="invalid_state",
                               param="stage")
            if locked.stage != Stage.CANDIDATE:
                raise Conflict(f"Adapter {locked.name!r} is a {locked.stage}: promote it to candidate first.",
                               code="invalid_transition", param="stage")
            if can_approve(user, locked):
                return _copy_state(adapter, _to_production(locked, user, note=note))
            locked.approval_requested_by = acting_user(user)
            locked.approval_requested_at = timezone.now()
            locked.save(update_fields=["approval_requested_by", "approval_requested_at"])
            _event(locked, user, AdapterEvent.Action.REQUESTED, from_stage=locked.stage, to_stage=Stage.PRODUCTION,
                   note=note or "Waiting for the approval of a team admin who is not the author.")
            return _copy_state(adapter, locked)
    with transaction.atomic():
        locked = _locked(adapter)
        _require_live(locked, "change its stage")
        if locked.stage == stage:
            raise Conflict(f"Adapter {locked.name!r} is already a {stage}.", code="invalid_state", param="stage")
        if locked.stage == Stage.PRODUCTION and not visibility.can_manage(user, locked.team):
            raise PermissionDenied("Only a team admin can take an adapter out of production.",
                                   code="approval_required")
        previous = locked.stage
        locked.stage = stage
        locked.production_slot = None
        locked.stage_changed_at = timezone.now()
        locked.approval_requested_by = None
        locked.approval_requested_at = None
        locked.save(update_fields=["stage", "production_slot", "stage_changed_at", "approval_requested_by",
                                   "approval_requested_at"])
        _event(locked, user, AdapterEvent.Action.PROMOTED, from_stage=previous, to_stage=stage, note=note)
    return _copy_state(adapter, locked)


def adapter_approve(*, user, adapter: Adapter, note: str = "") -> Adapter:
    """A team admin who is not the author puts a candidate into production (replacing the current one)."""
    _readable(user, adapter)
    if not visibility.can_manage(user, adapter.team):
        raise PermissionDenied("Only a team admin can approve an adapter for production.", code="approval_required")
    if getattr(acting_user(user), "pk", None) in author_ids(adapter):
        raise PermissionDenied("You are this adapter's author: another team admin must approve it.",
                               code="self_approval")
    with transaction.atomic():
        locked = _locked(adapter)
        _require_live(locked, "approve it")
        if locked.stage == Stage.PRODUCTION:
            raise Conflict(f"Adapter {locked.name!r} is already in production.", code="invalid_state")
        if locked.stage != Stage.CANDIDATE:
            raise Conflict(f"Adapter {locked.name!r} is a {locked.stage}: only candidates can be approved.",
                           code="invalid_transition", param="stage")
        return _copy_state(adapter, _to_production(locked, user, note=note))


def _to_production(adapter: Adapter, who, *, note: str) -> Adapter:
    """Inside a transaction, with ``adapter`` locked: demote the current production adapter, promote this one."""
    now = timezone.now()
    current = list(Adapter.objects.select_for_update().filter(team=adapter.team, model_name=adapter.model_name,
                                                              stage=Stage.PRODUCTION).exclude(pk=adapter.pk))
    for old in current:
        old.stage = Stage.CANDIDATE
        old.production_slot = None
        old.stage_changed_at = now
        old.save(update_fields=["stage", "production_slot", "stage_changed_at"])
        _event(old, who, AdapterEvent.Action.DEMOTED, from_stage=Stage.PRODUCTION, to_stage=Stage.CANDIDATE,
               note=f"Replaced in production by {adapter.name}.", data={"replaced_by": adapter.pk})
    requested_by = adapter.approval_requested_by
    previous = adapter.stage
    adapter.stage = Stage.PRODUCTION
    adapter.production_slot = True
    adapter.stage_changed_at = now
    adapter.approval_requested_by = None
    adapter.approval_requested_at = None
    try:
        with transaction.atomic():
            adapter.save(update_fields=["stage", "production_slot", "stage_changed_at", "approval_requested_by",
                                        "approval_requested_at"])
    except IntegrityError:
        raise Conflict(f"Another adapter named {adapter.model_name!r} was put in production at the same time; "
                       "try again.", code="production_conflict") from None
    _event(adapter, who, AdapterEvent.Action.APPROVED, from_stage=previous, to_stage=Stage.PRODUCTION, note=note,
           data={"requested_by": requested_by.username if requested_by else None,
                 "replaced": [a.pk for a in current]})
    return adapter


# ============================================================================================ archive / delete

def running_references(adapter: Adapter) -> list[str]:
    """Unfinished jobs of any kind that use the adapter (or produce it), as readable strings."""
    refs: list[str] = []
    task = origin_task(adapter)
    if task is not None and task.status in ACTIVE:
        refs.append(f"{type(task)._meta.verbose_name} {task.name!r} ({task.status})")
    for kind in kinds():
        links = _adapter_links(kind.model)
        if not links:
            continue
        cond = Q()
        for name in links:
            cond |= Q(**{name: adapter})
        for job in kind.model.objects.filter(cond, status__in=list(ACTIVE)).exclude(pk=getattr(task, "pk", None)
                                                                                    if type(task) is kind.model
                                                                                    else None):
            refs.append(f"{kind.model._meta.verbose_name} {job.name!r} ({job.status})")
    return refs


def _check_unused(adapter: Adapter, doing: str) -> None:
    refs = running_references(adapter)
    if refs:
        raise Conflict(f"Cannot {doing} adapter {adapter.name!r} while it is used by: {'; '.join(refs)}.",
                       code="adapter_in_use", param="adapter")
    if adapter.stage == Stage.PRODUCTION:
        raise Conflict(f"Adapter {adapter.name!r} is in production: move it back to candidate (or approve another "
                       f"one) before you {doing} it.", code="adapter_in_production", param="adapter")


def adapter_archive(*, user, adapter: Adapter, note: str = "") -> Adapter:
    visibility.require_write(user, adapter)
    with transaction.atomic():
        locked = _locked(adapter)
        if locked.status == Adapter.Status.ARCHIVED:
            return _copy_state(adapter, locked)
        _check_unused(locked, "archive")
        locked.status = Adapter.Status.ARCHIVED
        locked.save(update_fields=["status"])
        _event(locked, user, AdapterEvent.Action.ARCHIVED, note=note)
    return _copy_state(adapter, locked)


def adapter_restore(*, user, adapter: Adapter, note: str = "") -> Adapter:
    visibility.require_write(user, adapter)
    with transaction.atomic():
        locked = _locked(adapter)
        if locked.files_deleted_at:
            raise Conflict(f"Adapter {locked.name!r} has had its files deleted: it cannot be restored.",
                           code="adapter_files_missing")
        if locked.status != Adapter.Status.ARCHIVED:
            raise Conflict(f"Adapter {locked.name!r} is not archived.", code="invalid_state")
        locked.status = Adapter.Status.READY
        locked.save(update_fields=["status"])
        _event(locked, user, AdapterEvent.Action.RESTORED, note=note)
    return _copy_state(adapter, locked)


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
        return True
    except ValueError:
        return False


def adapter_delete(*, user, adapter: Adapter, note: str = "") -> Adapter:
    """Remove the adapter's files from disk; the row stays (archived) so its lineage and audit trail remain."""
    visibility.require_write(user, adapter)
    with transaction.atomic():
        locked = _locked(adapter)
        if locked.files_deleted_at:
            raise Conflict(f"Adapter {locked.name!r} has already been deleted.", code="invalid_state")
        _check_unused(locked, "delete")
        folder = Path(locked.path)
        freed = 0
        removed = False
        # Only files we own are removed: a folder registered by a scan of MODEL_DIRS stays where its owner put it.
        if folder.is_dir() and _inside(folder, Path(settings.DATA_DIR)):
            freed = model_scan.folder_size(folder)
            doomed = folder.with_name(f".deleting-{folder.name}")
            folder.rename(doomed)  # atomic: no reader ever sees a half-deleted adapter folder
            shutil.rmtree(doomed, ignore_errors=True)
            removed = True
        locked.status = Adapter.Status.ARCHIVED
        locked.files_deleted_at = timezone.now()
        locked.save(update_fields=["status", "files_deleted_at"])
        _event(locked, user, AdapterEvent.Action.DELETED, note=note,
               data={"path": str(folder), "freed_bytes": freed, "removed": removed})
    return _copy_state(adapter, locked)


# ============================================================================================ lineage

def _version_info(version) -> dict | None:
    if version is None:
        return None
    return {"id": version.pk, "ref": version.ref, "dataset": version.dataset.name, "sha256": version.sha256,
            "rows": version.row_count, "format": version.format, "created_at": version.created_at}


def _task_info(task) -> dict | None:
    if task is None:
        return None
    kind = "training" if task._meta.model_name == "trainingtask" else "classifier"
    return {"kind": kind, "id": task.pk, "name": task.name, "status": task.status,
            "created_by": task.created_by.username if task.created_by_id else None,
            "params": task.params, "resolved_params": task.resolved_params,
            "library_versions": task.library_versions, "seed": task.seed, "device": task.device,
            "duration_seconds": task.duration_seconds, "started_at": task.started_at,
            "finished_at": task.finished_at, "metrics": task.metrics,
            "cloned_from": getattr(task, "cloned_from_id", None),
            "method": getattr(task, "method", None),
            "start_adapter": _start_info(getattr(task, "start_adapter", None))}


def _start_info(adapter: Adapter | None) -> dict | None:
    """The adapter a task trained further (SFT -> DPO), with the task that produced it."""
    if adapter is None:
        return None
    return {"id": adapter.pk, "name": adapter.name, "task": adapter.task_id,
            "method": adapter.task.method if adapter.task_id else None}


def _summary(adapter: Adapter) -> dict:
    try:
        return json.loads((Path(adapter.path) / "training_summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def adapter_lineage(*, user, adapter: Adapter) -> dict:
    """Where the adapter came from and where it went: data -> task -> adapter -> evaluations -> exports/merges."""
    _readable(user, adapter)
    task = origin_task(adapter)
    sections: dict = {"evaluations": []}
    # Other apps add what they know of the adapter (evaluation runs and their reviews, say).
    for _receiver, response in lineage_requested.send(sender=Adapter, adapter=adapter):
        sections.update(response or {})
    merges = [{"id": j.pk, "status": j.status, "output_name": j.output_name, "output_path": j.output_path,
               "base_model_id": j.result_id, "created_at": j.created_at, "finished_at": j.finished_at,
               "created_by": j.created_by.username if j.created_by_id else None}
              for j in adapter.merge_jobs.select_related("created_by").order_by("-created_at")]
    events = list(adapter.events.select_related("actor").order_by("-created_at", "-id")[:200])
    exports = [{"format": e.data.get("format"), "by": e.actor.username if e.actor_id else None, "at": e.created_at,
                "note": e.note} for e in events if e.action == AdapterEvent.Action.EXPORTED]
    summary = _summary(adapter) if task is None else {}
    return {
        "adapter": {"id": adapter.pk, "name": adapter.name, "model_name": adapter.model_name,
                    "team": adapter.team.name, "kind": adapter.kind, "stage": adapter.stage,
                    "status": adapter.status, "source": adapter.source, "base_model": adapter.base_model.name,
                    "files_present": adapter.files_present, "created_at": adapter.created_at,
                    "metrics": adapter.metrics, "lora_config": adapter.lora_config},
        "dataset": _version_info(task.train_version) if task else summary.get("dataset"),
        "validation_dataset": _version_info(task.validation_version) if task else None,
        "task": _task_info(task),
        **sections,
        "merges": merges,
        "exports": exports,
        "events": [{"id": e.pk, "action": e.action, "from_stage": e.from_stage, "to_stage": e.to_stage,
                    "actor": e.actor.username if e.actor_id else None, "note": e.note, "data": e.data,
                    "created_at": e.created_at} for e in events],
    }


def adapter_reproduce(*, user: Actor, adapter: Adapter, name: str | None = None) -> Job:
    """Queue the job that produced the adapter again with identical inputs (data version, base, params, seed)."""
    _readable(user, adapter)
    task = origin_task(adapter)
    if task is None:
        raise ApplicationError(f"Adapter {adapter.name!r} was found by a scan: there is no task to reproduce.",
                               code="no_task", param="adapter")
    return job_reproduce(user=user, job=task, name=name)


# ============================================================================================ export

def _library_versions() -> dict:

    out = {}
    for dist in ("torch", "transformers", "peft", "safetensors", "tokenizers"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


def _md_table(rows: Iterable[tuple[str, object]]) -> str:
    lines = ["| key | value |", "| --- | --- |"]
    for key, value in rows:
        text = json.dumps(value, default=str) if isinstance(value, (dict, list)) else str(value)
        lines.append(f"| {key} | {text.replace('|', '/')} |")
    return "\n".join(lines)


def model_card(adapter: Adapter) -> str:
    """The README.md of an export: base, data hash, parameters, metrics, library versions, how to load it."""
    task = origin_task(adapter)
    summary = _summary(adapter)
    base = adapter.base_model
    version = task.train_version if task else None
    params = (task.resolved_params or task.params) if task else summary.get("params", {})
    training_versions = (task.library_versions if task else None) or summary.get("versions") or {}
    auto_cls = "AutoModelForSequenceClassification" if adapter.kind == Adapter.Kind.CLASSIFIER else \
        "AutoModelForCausalLM"
    parts = [
        f"# {adapter.name}",
        "",
        f"A LoRA adapter ({adapter.get_kind_display()}) of team `{adapter.team.name}`, exported from LoRA Studio "
        f"on {timezone.now():%Y-%m-%d %H:%M UTC}. Stage: **{adapter.stage}**"
        f"{' (archived)' if adapter.status == Adapter.Status.ARCHIVED else ''}; served as "
        f"`{adapter.serving_name}` when in production.",
        "",
        "## Base model",
        "",
        _md_table([("name", base.name), ("architecture", base.architecture), ("parameters", base.parameter_count),
                   ("path on the server", base.path), ("source", base.source_path or "-")]),
        "",
        "## Training data",
        "",
    ]
    if version is not None:
        parts.append(_md_table([("dataset version", version.ref), ("sha256", version.sha256),
                                ("rows", version.row_count), ("format", version.format)]))
        if task.validation_version_id:
            v = task.validation_version
            parts += ["", _md_table([("validation version", v.ref), ("validation sha256", v.sha256)])]
    elif summary.get("dataset"):
        parts.append(_md_table(sorted(summary["dataset"].items())))
    else:
        parts.append("Unknown (the adapter was registered by a folder scan).")
    parts += ["", "## Training", ""]
    if task is not None:
        parts.append(_md_table([("task", f"{task.name} (#{task.pk})"), ("seed", task.seed),
                                ("device", task.device or "-"),
                                ("duration (s)", round(task.duration_seconds or 0, 1)),
                                ("author", task.created_by.username if task.created_by_id else "-")]))
        parts.append("")
    parts += ["### Parameters", "", _md_table(sorted((params or {}).items())) if params else "-", "",
              "### LoRA configuration", "", _md_table(sorted((adapter.lora_config or {}).items())), "",
              "## Metrics", "",
              _md_table(sorted((k, v) for k, v in (adapter.metrics or {}).items()
                               if isinstance(v, (int, float, str)))) if adapter.metrics else "-", ""]
    evaluations = adapter.evaluation_runs.filter(status=JobStatus.SUCCEEDED).order_by("-created_at")[:5] \
        if hasattr(adapter, "evaluation_runs") else []
    if evaluations:
        parts += ["### Evaluations", ""]
        for run in evaluations:
            parts.append(f"- {run.name} on dataset version {run.dataset_version_id}: "
                         f"{run.ppl_summary or ', '.join(run.metric_names)}")
        parts.append("")
    parts += ["## Library versions", "", "Training: " + (", ".join(f"{k} {v}" for k, v in
                                                                  sorted(training_versions.items())) or "-"),
              "", "Export: " + ", ".join(f"{k} {v}" for k, v in sorted(_library_versions().items())), "",
              "## Load it", "", "```python", "from peft import PeftModel",
              f"from transformers import {auto_cls}, AutoTokenizer", "",
              f'base = {auto_cls}.from_pretrained("{base.path}")',
              f'model = PeftModel.from_pretrained(base, "{adapter.name}")',
              f'tokenizer = AutoTokenizer.from_pretrained("{adapter.name}")', "```", ""]
    return "\n".join(parts)


class _Sink(io.RawIOBase):
    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        self.chunks.append(bytes(b))
        return len(b)


def zip_stream(entries: list[tuple[str, Path | bytes]]) -> Iterator[bytes]:
    """Yield a zip of ``(name in the archive, file or bytes)`` as it is built: constant memory, no temp file."""

    def generate():
        sink = _Sink()
        with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for arcname, source in entries:
                with zf.open(arcname, "w", force_zip64=True) as dest:
                    if isinstance(source, bytes):
                        dest.write(source)
                    else:
                        with source.open("rb") as src:
                            while block := src.read(1 << 20):
                                dest.write(block)
                                if sink.chunks:
                                    yield b"".join(sink.chunks)
                                    sink.chunks.clear()
                if sink.chunks:
                    yield b"".join(sink.chunks)
                    sink.chunks.clear()
        if sink.chunks:
            yield b"".join(sink.chunks)

    return generate()


def _adapter_files(adapter: Adapter) -> list[Path]:
    root = Path(adapter.path)
    if adapter.files_deleted_at or not root.is_dir():
        raise NotFound("The adapter's files are missing on disk.", code="adapter_files_missing", param="adapter")
    return [p for p in sorted(root.rglob("*")) if p.is_file() and not p.is_symlink()]


def adapter_export(*, user, adapter: Adapter) -> tuple[str, Iterator[bytes]]:
    """(file name, zip stream) of the adapter folder with a README.md model card."""
    _readable(user, adapter)
    root = Path(adapter.path)
    files = _adapter_files(adapter)
    entries: list[tuple[str, Path | bytes]] = [(f"{adapter.name}/README.md", model_card(adapter).encode())]
    # PEFT writes a template README.md of its own: ours replaces it.
    entries += [(f"{adapter.name}/{p.relative_to(root)}", p) for p in files if p.relative_to(root) != Path("README.md")]
    _event(adapter, user, AdapterEvent.Action.EXPORTED, data={"format": "zip"})
    return f"{adapter.name}.zip", zip_stream(entries)


# ---- Ollama

def read_chat_template(folder: Path) -> str | None:
    """The chat template of a tokenizer folder, from the files alone (no tokenizer load)."""
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    for name in ("chat_template.json", "tokenizer_config.json"):
        path = folder / name
        if not path.is_file():
            continue
        try:
            template = json.loads(path.read_text(encoding="utf-8")).get("chat_template")
        except (ValueError, AttributeError):
            continue
        if isinstance(template, list):  # [{"name": "default", "template": ...}, ...]
            named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
            template = named.get("default") or next(iter(named.values()), None)
        if template:
            return str(template)
    return None


@dataclass
class OllamaTemplate:
    """A chat template translated into Ollama's Go-template syntax."""

    style: str
    template: str
    stops: list[str]
    system: str | None = None


CHATML_GO = ("{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n"
             "{{ end }}<|im_start|>assistant\n")
LLAMA3_GO = ("{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n{{ .Content }}<|eot_id|>"
             "{{ end }}<|start_header_id|>assistant<|end_header_id|>\n\n")
_DEFAULT_SYSTEM_RE = re.compile(r"<\|im_start\|>system(?:\\n|\n)([^<>{}'\"\\]+?)<\|im_end\|>")


def ollama_template(jinja: str | None) -> OllamaTemplate | None:
    """Translate a Jinja chat template into a Go template for the common styles (ChatML, Llama 3).

    Arbitrary Jinja cannot be translated; templates of other styles return None (Ollama then uses the base
    model's own template, which is right when FROM names an Ollama model of the same family)."""
    if not jinja:
        return None
    if "<|im_start|>" in jinja and "<|im_end|>" in jinja:
        system = _DEFAULT_SYSTEM_RE.search(jinja)
        return OllamaTemplate("chatml", CHATML_GO, ["<|im_start|>", "<|im_end|>"],
                              system.group(1).strip() if system else None)
    if "<|start_header_id|>" in jinja and "<|eot_id|>" in jinja:
        return OllamaTemplate("llama3", LLAMA3_GO, ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"])
    return None


def _quoted(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)


def _single_line(value: str, param: str) -> str:
    value = (value or "").strip()
    if not value or "\n" in value or "\r" in value or '"""' in value or len(value) > 1000:
        raise ApplicationError(f"{param} must be one non-empty line (at most 1000 characters).",
                               code="invalid_parameter", param=param)
    return value


def modelfile(adapter: Adapter, *, from_ref: str | None = None, temperature: float | None = None,
              system: str | None = None) -> str:
    """An Ollama Modelfile: FROM the base, ADAPTER ./adapter, TEMPLATE from the chat template, PARAMETERs."""
    base = adapter.base_model
    from_ref = _single_line(from_ref, "from") if from_ref else base.path
    if temperature is not None and not (isinstance(temperature, (int, float)) and 0 <= temperature <= 2):
        raise ApplicationError("temperature must be between 0 and 2.", code="invalid_parameter", param="temperature")
    template = ollama_template(read_chat_template(Path(adapter.path)) or read_chat_template(Path(base.path)))
    task = origin_task(adapter)
    resolved = (task.resolved_params if task else None) or {}
    num_ctx = resolved.get("max_seq_length") or base.max_position_embeddings
    if base.max_position_embeddings and num_ctx:
        num_ctx = min(int(num_ctx), int(base.max_position_embeddings))
    lines = [f"# Ollama Modelfile for the LoRA adapter {adapter.name} (team {adapter.team.name}), "
             f"exported by LoRA Studio.",
             f"# Base model: {base.name}. FROM must be the same weights the adapter was trained on.",
             f"FROM {from_ref}",
             "ADAPTER ./adapter"]
    if template is not None:
        lines += [f"# Chat template translated from the tokenizer's Jinja template ({template.style} style).",
                  f'TEMPLATE """{template.template}"""']
        system = system if system is not None else template.system
        for stop in template.stops:
            lines.append(f"PARAMETER stop {_quoted(stop)}")
    else:
        lines.append("# The chat template could not be translated: Ollama uses the template of the FROM model.")
    lines.append(f"PARAMETER temperature {0.7 if temperature is None else temperature:g}")
    lines.append("PARAMETER top_p 0.9")
    if num_ctx:
        lines.append(f"PARAMETER num_ctx {int(num_ctx)}")
    if system:
        if '"""' in system:
            raise ApplicationError('system must not contain """.', code="invalid_parameter", param="system")
        lines.append(f'SYSTEM """{system}"""')
    return "\n".join(lines) + "\n"


def ollama_model_name(adapter: Adapter, name: str | None = None) -> str:
    name = (name or SAFE_NAME_RE.sub("-", adapter.model_name or adapter.name).strip("-._").lower() or "adapter")
    if not OLLAMA_NAME_RE.match(name):
        raise ApplicationError("name must be an Ollama model name: lower-case letters, digits, '.', '_', '-', "
                               "optionally ':tag'.", code="invalid_parameter", param="name")
    return name


def adapter_ollama_bundle(*, user, adapter: Adapter, from_ref: str | None = None, name: str | None = None,
                          temperature: float | None = None, system: str | None = None) -> tuple[str, Iterator[bytes]]:
    """(file name, zip stream): Modelfile + adapter/ (config and safetensors) + README.md with instructions."""
    _readable(user, adapter)
    if adapter.kind != Adapter.Kind.CAUSAL_LM:
        raise ApplicationError("Ollama serves causal language models: a classifier adapter cannot be bundled.",
                               code="wrong_adapter_kind", param="adapter")
    root = Path(adapter.path)
    files = _adapter_files(adapter)
    weights = [p for p in files if p.parent == root and p.suffix == ".safetensors"]
    if not (root / "adapter_config.json").is_file() or not weights:
        raise Conflict("The adapter folder has no adapter_config.json and safetensors weights.",
                       code="adapter_files_missing", param="adapter")
    model_name = ollama_model_name(adapter, name)
    text = modelfile(adapter, from_ref=from_ref, temperature=temperature, system=system)
    folder = f"{SAFE_NAME_RE.sub('_', adapter.name)}-ollama"
    readme = "\n".join([
        f"# {adapter.name} for Ollama", "",
        "This bundle holds an Ollama `Modelfile` and the LoRA adapter (safetensors) it applies:", "",
        "```", f"{folder}/", "  Modelfile", "  adapter/adapter_config.json",
        *[f"  adapter/{p.name}" for p in weights], "  README.md", "```", "",
        "## Create and run the model", "",
        "```sh", f"cd {folder}", f"ollama create {model_name} -f Modelfile", f"ollama run {model_name}", "```", "",
        f"`FROM` is `{text.split('FROM ', 1)[1].splitlines()[0]}`. It must be the base model the adapter was "
        f"trained on ({adapter.base_model.name}): a folder of safetensors weights on this machine, a GGUF file, "
        "or the name of an Ollama model with the same weights. Edit the line if the base lives elsewhere, or "
        "export again with `from=`.", "",
        "Ollama imports safetensors adapters for Llama, Mistral and Gemma family models.", "",
    ])
    entries: list[tuple[str, Path | bytes]] = [
        (f"{folder}/Modelfile", text.encode()), (f"{folder}/README.md", readme.encode()),
        (f"{folder}/adapter/adapter_config.json", root / "adapter_config.json"),
        *[(f"{folder}/adapter/{p.name}", p) for p in weights],
    ]
    _event(adapter, user, AdapterEvent.Action.EXPORTED, data={"format": "ollama", "from": from_ref or "",
                                                             "name": model_name})
    return f"{folder}.zip", zip_stream(entries)


# ============================================================================================ merge

def _models_dir() -> Path:
    return Path(settings.DATA_DIR) / "models"


def _merge_name_free(name: str) -> bool:
    return not (BaseModel.objects.filter(name=name).exists() or (_models_dir() / name).exists()
                or MergeJob.objects.filter(output_name=name, status__in=list(ACTIVE)).exists())


def adapter_merge(*, user, adapter: Adapter, name: str | None = None, priority: int = 0) -> MergeJob:
    """Queue a job that merges the adapter into its base and registers the result as a new base model."""
    visibility.require_write(user, adapter)
    if adapter.kind != Adapter.Kind.CAUSAL_LM:
        raise ApplicationError("Only causal LM adapters can be merged into a standalone model.",
                               code="wrong_adapter_kind", param="adapter")
    _require_live(adapter, "merge it")
    if not Path(adapter.path).is_dir():
        raise NotFound("The adapter's files are missing on disk.", code="adapter_files_missing", param="adapter")
    if not adapter.base_model.available:
        raise Conflict(f"Base model {adapter.base_model.name!r} is unavailable.", code="model_unavailable",
                       param="base_model")
    priority = job_check_priority(priority)
    if name:
        clean = SAFE_NAME_RE.sub("_", name.strip())[:180]
        if not clean or clean.startswith("."):
            raise ApplicationError("name must contain letters or digits.", code="invalid_parameter", param="name")
        if not _merge_name_free(clean):
            raise Conflict(f"A base model named {clean!r} already exists.", code="name_taken", param="name")
    else:
        stem = SAFE_NAME_RE.sub("_", f"{adapter.name}-merged")[:170]
        clean, n = stem, 2
        while not _merge_name_free(clean):
            clean, n = f"{stem}-{n}", n + 1
    with transaction.atomic():
        job_check_quota(adapter.team)
        job = MergeJob.objects.create(name=f"merge {adapter.name}"[:200], team=adapter.team, created_by=acting_user(user),
                                      adapter=adapter, output_name=clean, output_path=str(_models_dir() / clean),
                                      priority=priority, status=JobStatus.QUEUED, queued_at=timezone.now())
        runtime.add_event(job, f"Queued: merge {adapter.name} into {adapter.base_model.name} as {clean}.")
        _event(adapter, user, AdapterEvent.Action.MERGED, data={"merge_job": job.pk, "output_name": clean})
        runtime.enqueue(job)
    return job


def register_merged_model(job: MergeJob, folder: Path) -> BaseModel:
    """Register a finished merge folder as the team's base model (idempotent for a recovered run)."""
    info = model_scan.inspect_hf_dir(folder)
    values = {"kind": info.kind, "path": str(folder.resolve()), "source_path": job.adapter.path,
              "format": BaseModel.Format.HF, "architecture": info.architecture, "model_type": info.model_type,
              "parameter_count": info.parameter_count, "size_bytes": info.size_bytes,
              "tokenizer_present": info.tokenizer_present, "has_chat_template": info.has_chat_template,
              "config": info.config, "available": True, "last_scanned_at": timezone.now()}
    existing = BaseModel.objects.filter(name=job.output_name).first()
    if existing is not None and Path(existing.path).resolve() == folder.resolve():
        for key, value in values.items():
            setattr(existing, key, value)
        existing.save(update_fields=list(values))
        return existing
    name = job.output_name if existing is None else f"{job.output_name}-{job.pk}"
    return BaseModel.objects.create(name=name, team=job.team, created_by=job.created_by, **values)


def merge_job_get(*, user, ref: int | str) -> MergeJob:
    try:
        return visibility.get_visible(user, MergeJob.objects.select_related("team", "adapter", "result"),
                                      pk=int(ref))
    except (NotFound, ValueError):
        raise NotFound(f"Merge job {ref!r} not found.", code="merge_not_found") from None


def merge_job_list(*, user, adapter: Adapter | None = None):
    qs = visibility.visible_to(user, MergeJob.objects.select_related("team", "adapter", "result"))
    return qs.filter(adapter=adapter) if adapter is not None else qs


# ============================================================================================ scan

@dataclass
class AdapterScanRow:
    name: str
    action: str  # added, unchanged, unmatched, skipped, error
    path: str
    base_model: str = ""
    message: str = ""


def _adapter_folders(root: Path, depth: int = 0) -> Iterator[Path]:
    if not root.is_dir() or root.name.startswith("."):
        return
    if (root / "adapter_config.json").is_file():
        yield root
        return
    if depth >= 4:
        return
    try:
        entries = sorted(root.iterdir())
    except OSError:
        return
    for entry in entries:
        if entry.is_dir() and not entry.name.startswith("."):
            yield from _adapter_folders(entry, depth + 1)


def match_base_model(ref: str | None, *, team: Team | None) -> BaseModel | None:
    """The registered base model an adapter config names, by folder path or by name (last path part too)."""
    if not ref:
        return None
    qs = BaseModel.objects.all()
    qs = qs.filter(Q(team__isnull=True) | Q(team=team)) if team is not None else qs.filter(team__isnull=True)
    candidates = []
    if ref.startswith(("/", ".", "~")) or Path(ref).is_dir():
        resolved = str(Path(ref).expanduser().resolve())
        candidates = [m for m in qs.filter(Q(path=resolved) | Q(path=ref) | Q(source_path=resolved))]
    if not candidates:
        candidates = list(qs.filter(name=ref)) or list(qs.filter(name=Path(ref.rstrip("/")).name))
    candidates.sort(key=lambda m: (not m.available, m.team_id is None))
    return candidates[0] if candidates else None


def _param_count(folder: Path) -> int:
    total = 0
    for f in folder.glob("*.safetensors"):
        try:
            total += model_scan.safetensors_param_count(f)
        except (OSError, ValueError, KeyError):
            pass
    return total


def adapters_scan(*, paths: Iterable[str | Path] | None = None, include_defaults: bool = True,
                  team: Team | None = None, user=None) -> list[AdapterScanRow]:
    """Register adapter folders (with ``adapter_config.json``) found in DATA_DIR/adapters, MODEL_DIRS and
    ``paths``. Folders already registered are left alone; an adapter whose base model is not registered is
    reported (``unmatched``), not registered; new adapters need ``team`` (their owner), else ``skipped``."""
    roots = [Path(settings.DATA_DIR) / "adapters", *map(Path, settings.MODEL_DIRS)] if include_defaults else []
    roots += [Path(p).expanduser() for p in (paths or [])]
    known = {str(Path(p).resolve()) for p in Adapter.objects.values_list("path", flat=True)}
    rows: list[AdapterScanRow] = []
    seen: set[str] = set()
    for root in roots:
        for folder in _adapter_folders(root):
            resolved = str(folder.resolve())
            if resolved in seen or folder.name.startswith(".deleting-"):
                continue
            seen.add(resolved)
            if resolved in known:
                rows.append(AdapterScanRow(folder.name, "unchanged", resolved))
                continue
            try:
                config = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                rows.append(AdapterScanRow(folder.name, "error", resolved, message=f"adapter_config.json: {exc}"))
                continue
            ref = config.get("base_model_name_or_path")
            base = match_base_model(ref, team=team)
            if base is None:
                rows.append(AdapterScanRow(folder.name, "unmatched", resolved, base_model=str(ref or ""),
                                           message=f"no registered base model matches {ref!r}; scan it first"))
                continue
            if team is None:
                rows.append(AdapterScanRow(folder.name, "skipped", resolved, base_model=base.name,
                                           message="new adapter: pass --team to choose its owner"))
                continue
            classifier = str(config.get("task_type", "")).upper() == "SEQ_CLS"
            label_map = {}
            if (folder / "label_map.json").is_file():
                try:
                    label_map = json.loads((folder / "label_map.json").read_text(encoding="utf-8"))
                except ValueError:
                    label_map = {}
            summary = {}
            if (folder / "training_summary.json").is_file():
                try:
                    summary = json.loads((folder / "training_summary.json").read_text(encoding="utf-8"))
                except ValueError:
                    summary = {}
            metrics = {k: v for k, v in (summary.get("metrics") or {}).items() if isinstance(v, (int, float))}
            keep = ("r", "lora_alpha", "lora_dropout", "target_modules", "modules_to_save", "task_type", "bias",
                    "peft_type", "base_model_name_or_path")
            stem = SAFE_NAME_RE.sub("_", STAMP_SUFFIX_RE.sub("", folder.name))[:150] or "adapter"
            with transaction.atomic():
                adapter = Adapter.objects.create(
                    name=unique_name(Adapter, team, stem), model_name=stem, team=team,
                    created_by=acting_user(user),
                    kind=Adapter.Kind.CLASSIFIER if classifier else Adapter.Kind.CAUSAL_LM, base_model=base,
                    path=resolved, lora_config={k: config[k] for k in keep if k in config},
                    trainable_parameters=_param_count(folder), size_bytes=model_scan.folder_size(folder), metrics=metrics,
                    label_map=label_map if isinstance(label_map, dict) else {}, source=Adapter.Source.SCANNED)
                _event(adapter, user, AdapterEvent.Action.REGISTERED, note=f"Found by a scan at {resolved}.")
            known.add(resolved)
            rows.append(AdapterScanRow(adapter.name, "added", resolved, base_model=base.name))
    return rows


# ============================================================================================ registration

LORA_CONFIG_KEYS = ("r", "lora_alpha", "lora_dropout", "target_modules", "modules_to_save", "task_type", "bias",
                    "peft_type", "base_model_name_or_path")


def adapter_register(*, team: Team, created_by, kind: str, base_model: BaseModel, folder: Path, name: str,
                     model_name: str = "", task=None, metrics: dict, trainable: int,
                     label_map: dict | None = None) -> Adapter:
    """Register an adapter folder a job wrote (the worker calls this inside the transaction that records the
    job's success): a unique name in the team, the LoRA shape from its adapter_config.json, its size."""
    config = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
    adapter = Adapter.objects.create(
        name=unique_name(Adapter, team, name), model_name=model_name, team=team, created_by=created_by, kind=kind,
        base_model=base_model, task=task, path=str(folder),
        lora_config={k: config.get(k) for k in LORA_CONFIG_KEYS if k in config}, trainable_parameters=trainable,
        size_bytes=model_scan.folder_size(folder), metrics=metrics, label_map=label_map or {})
    return adapter
