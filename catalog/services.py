"""Base models: the scan that registers them (converting GGUF files once), lists and lookups."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from django.conf import settings
from django.contrib.admin.models import CHANGE, LogEntry
from django.db import IntegrityError, transaction
from django.db.models import QuerySet
from django.utils import timezone

from accounts.models import Team
from accounts.visibility import Actor, acting_user, get_visible, require_write, team_ids, visible_to
from catalog import model_scan
from catalog.models import BaseModel
from core.errors import ApplicationError, Conflict, NotFound, PermissionDenied

log = logging.getLogger(__name__)
SAFE_NAME_RE = re.compile(r"[^A-Za-z0-9._-]+")
# A base model's name is part of model ids (``ft:<base>:<team>:<suffix>:<id>``, ``team/name:production``):
# no ``:``, ``/`` or whitespace in it.
BASE_MODEL_NAME_RE = re.compile(r"^[^\s:/]{1,200}$")


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
        # By name, else by folder: a model renamed in the admin is still the model in that folder.
        obj = BaseModel.objects.select_for_update().filter(name=candidate.name).first() or \
            BaseModel.objects.select_for_update().filter(path=values["path"]).first()
        if obj is None:
            obj = BaseModel.objects.create(name=candidate.name, team=team, created_by=acting_user(user), **values)
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


def base_models_scan(*, user: Actor, paths: Iterable[str | Path] | None = None, include_defaults: bool = True,
                     team: Team | None = None,
                     progress: Callable[[str, int, int], None] | None = None) -> ScanReport:
    """Register base models found on disk; convert GGUF files once; mark vanished ones unavailable.

    Scanning needs a writer role: a superuser, or a member or admin of some team (of ``team`` when new models
    are registered as that team's). ``progress(name, index, total)`` is called before each candidate.
    """
    writable = team_ids(user, write=True)
    if writable is not None and not writable:
        raise PermissionDenied("Scanning needs a member or admin role in a team.")
    if team is not None:
        require_write(user, team)
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


def base_model_list(*, user: Actor, kind: str | None = None, available: bool | None = None) -> QuerySet[BaseModel]:
    qs = visible_to(user, BaseModel.objects.all(), include_global=True)
    if kind:
        qs = qs.filter(kind=kind)
    if available is not None:
        qs = qs.filter(available=available)
    return qs


def base_model_get(*, user: Actor, ref: str | int, kind: str | None = None, require_available: bool = True) -> BaseModel:
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


def base_model_rename(*, user: Actor, model: BaseModel, name: str) -> BaseModel:
    """Rename a base model (its team's writers; global models: superusers), recorded in the admin history.

    A base model's name is part of every ``ft:<base>:<team>:<suffix>:<id>`` id of the tasks trained on it, and
    clients keep those ids; so once a training task used the model, its name is fixed (409). Only the name
    column is written: a scan may update the others at the same time.
    """
    require_write(user, model)
    new = (name or "").strip()
    if not BASE_MODEL_NAME_RE.match(new):
        raise ApplicationError("A base model name is 1-200 characters without spaces, ':' or '/'.",
                               code="invalid_parameter", param="name")
    with transaction.atomic():
        locked = BaseModel.objects.select_for_update().get(pk=model.pk)
        if new == locked.name:
            return locked
        tasks = locked.training_tasks.count()
        if tasks:
            raise Conflict(f"Base model {locked.name!r} cannot be renamed: {tasks} training task(s) were trained on "
                           f"it, and their fine-tuned model ids (ft:{locked.name}:...) name it. Clients that saved "
                           "those ids would get 404.", code="model_in_use", param="name")
        if BaseModel.objects.filter(name=new).exclude(pk=locked.pk).exists():
            raise Conflict(f"A base model named {new!r} already exists.", code="name_taken", param="name")
        old = locked.name
        try:
            with transaction.atomic():
                BaseModel.objects.filter(pk=locked.pk).update(name=new)
        except IntegrityError:
            raise Conflict(f"A base model named {new!r} already exists.", code="name_taken", param="name") from None
        who = acting_user(user)
        if who is not None:
            LogEntry.objects.log_actions(user_id=who.pk, queryset=BaseModel.objects.filter(pk=locked.pk),
                                         action_flag=CHANGE, single_object=True,
                                         change_message=f"Renamed from {old!r} to {new!r}.")
        log.info("base model %s renamed %r -> %r by %s", locked.pk, old, new, who)
    locked.refresh_from_db()
    return locked
