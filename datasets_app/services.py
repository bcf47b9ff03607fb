"""Business rules for datasets: upload (validate, normalise, store), find, split, inspect, delete, style build.

Every door (the /api/ router, the admin, the commands, the training side) calls these functions.
``user`` is a Django user or an ``accounts.visibility.Principal``; commands act as a real user too
(``accounts.commands.command_actor``).
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import random
import re
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pydantic
from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Count, Max, ProtectedError, QuerySet

from accounts.models import Team
from accounts.visibility import Principal, acting_user, as_principal, require_write, resolve_team, visible_to
from catalog.models import BaseModel
from catalog.services import base_model_get
from core.errors import ApplicationError, Conflict, NotFound
from datasets_app import formats, storage, style, validation
from datasets_app.models import Dataset, DatasetVersion
from ml import data as ml_data
from ml.errors import TrainingError
from ml.hparams import TEMPLATES
from ml.model import cached_tokenizer
from ml.templates import resolve_template, template_supports_tools

log = logging.getLogger(__name__)

DATASET_NAME_RE = re.compile(r"^\w[\w.\-]{0,99}$")
# "team/name@3", "name@3", "name"
VERSION_REF_RE = re.compile(r"^(?:(?P<team>[\w-]+)/)?(?P<name>\w[\w.\-]{0,99}?)(?:@(?P<number>\d+))?$")
DEFAULT_MAX_TOKENS = 2048
PREVIEW_MAX = 50


def validation_limits() -> validation.Limits:
    return validation.Limits(
        max_bytes=int(settings.MAX_UPLOAD_BYTES),
        max_line_bytes=int(settings.DATASET_MAX_LINE_BYTES),
        max_depth=int(settings.DATASET_MAX_JSON_DEPTH),
    )


def _clean_format(value: str | None) -> str | None:
    try:
        return formats.canonical_format(value)
    except ValueError as exc:
        raise ApplicationError(str(exc), code="unknown_format", param="format") from None


def _clean_mapping(columns: formats.ColumnMapping | dict | str | None) -> formats.ColumnMapping | None:
    """A column mapping from ``"our=theirs,..."``, a JSON object / dict of columns, or a ColumnMapping;
    None for nothing to map."""
    if columns is None or columns == "" or columns == {}:
        return None
    try:
        if isinstance(columns, str) and columns.strip().startswith("{"):
            try:
                columns = json.loads(columns)
            except json.JSONDecodeError as exc:
                raise ValueError(f"columns: invalid JSON ({exc.msg})") from None
            if not isinstance(columns, dict):
                raise ValueError("columns: expected a JSON object")
        if isinstance(columns, formats.ColumnMapping):
            mapping = columns
        elif isinstance(columns, dict) and ("columns" in columns or "tags" in columns):
            mapping = formats.ColumnMapping.model_validate(columns)
        elif isinstance(columns, dict):
            mapping = formats.ColumnMapping(columns=columns)
        else:
            mapping = formats.ColumnMapping(columns=formats.parse_columns(str(columns)))
    except (ValueError, pydantic.ValidationError) as exc:
        errors = exc.errors() if isinstance(exc, pydantic.ValidationError) else None
        message = "; ".join(e["msg"].removeprefix("Value error, ") for e in errors) if errors else str(exc)
        raise ApplicationError(f"Invalid column mapping: {message}", code="invalid_mapping", param="columns") from None
    return mapping or None


@dataclass
class DatasetInfoEntry:
    """What a LLaMA-Factory ``dataset_info.json`` entry says about one file."""

    name: str
    path: Path
    format: str | None
    mapping: formats.ColumnMapping


def dataset_info_read(*, path: str | Path, entry: str) -> DatasetInfoEntry:
    """Read entry ``entry`` of a LLaMA-Factory ``dataset_info.json``: its ``file_name`` (relative to the
    file's folder), format (``formatting``, ``ranking``, ``kto_tag``) and column mapping (``columns``, ``tags``)."""
    info_path = Path(path).expanduser()
    try:
        info = json.loads(info_path.read_text(encoding="utf-8-sig"))
    except (OSError, ValueError) as exc:
        raise ApplicationError(f"Cannot read {info_path}: {exc}", code="invalid_dataset_info",
                               param="dataset_info") from None
    if not isinstance(info, dict) or entry not in info:
        names = ", ".join(sorted(info)[:20]) if isinstance(info, dict) else ""
        raise ApplicationError(f"{info_path.name} has no entry {entry!r} (entries: {names or 'none'}).",
                               code="invalid_dataset_info", param="entry")
    item = info[entry]
    if not isinstance(item, dict) or not item.get("file_name"):
        hub = next((k for k in ("hf_hub_url", "ms_hub_url", "om_hub_url", "script_url", "cloud_file_name")
                    if isinstance(item, dict) and k in item), None)
        why = f"it names {hub}, and this server reads local files only" if hub else "it has no file_name"
        raise ApplicationError(f"Entry {entry!r} cannot be imported: {why}.", code="invalid_dataset_info",
                               param="entry")
    try:
        fmt, mapping = formats.mapping_from_dataset_info(item, entry)
    except ValueError as exc:
        raise ApplicationError(str(exc), code="invalid_dataset_info", param="entry") from None
    return DatasetInfoEntry(name=entry, path=info_path.parent / item["file_name"], format=fmt, mapping=mapping)


def _clean_name(name: str | None) -> str:
    name = (name or "").strip()
    if not DATASET_NAME_RE.match(name) or name.isdigit():
        raise ApplicationError("Dataset name must be 1-100 letters, digits, '.', '-' or '_' (not only digits), "
                               "starting with a letter or digit.", code="invalid_dataset_name", param="name")
    return name


def _size_of(fileobj: IO | Path) -> int | None:
    if isinstance(fileobj, Path):  # a save_to_disk folder: the validator sums its Arrow files
        return None
    size = getattr(fileobj, "size", None)  # Django's UploadedFile
    if isinstance(size, int):
        return size
    try:
        stat = os.fstat(fileobj.fileno())
        if stat.st_size or os.path.isfile(getattr(fileobj, "name", "")):
            return stat.st_size - (fileobj.tell() if fileobj.seekable() else 0)
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        pass
    return None


def _too_large(max_bytes: int) -> ApplicationError:
    return ApplicationError(f"The file is larger than the maximum upload size of {max_bytes:,} bytes "
                            "(setting MAX_UPLOAD_BYTES).", code="file_too_large", param="file", status=413)


# ---------------------------------------------------------------------------------------------------------------
# Base models and tokenizers (the training app owns BaseModel; imported lazily to keep the app order).


def resolve_base_model(*, user, ref: Any):
    """A base model the user can see, by instance, id or name; None for an empty ref."""
    if ref is None or ref == "":
        return None
    if isinstance(ref, BaseModel):
        return ref
    return base_model_get(user=user, ref=ref)


def _tokenizer(base_model) -> Any:
    try:
        return cached_tokenizer(base_model.path)
    except Exception as exc:
        raise ApplicationError(f"Cannot load the tokenizer of base model {base_model.name!r}: {exc}",
                               code="tokenizer_unavailable", param="base_model") from None


def max_tokens_for(base_model) -> int:
    """The context length examples are checked against: the model's position limit, else 2048."""
    value = getattr(base_model, "max_position_embeddings", None)
    return int(value) if value else DEFAULT_MAX_TOKENS


def _token_counter(base_model) -> Callable[[dict], int]:
    tokenizer = _tokenizer(base_model)
    return lambda record: ml_data.count_tokens(tokenizer, record)


def _text_counter(base_model) -> Callable[[str], int]:
    return style.tokenizer_counter(_tokenizer(base_model))


# ---------------------------------------------------------------------------------------------------------------
# Datasets


def dataset_list(*, user, team: str | int | None = None, format: str | None = None) -> QuerySet[Dataset]:
    qs = visible_to(user, Dataset.objects.select_related("team", "created_by"))
    if team not in (None, ""):
        qs = qs.filter(team_id=int(team)) if str(team).isdigit() else qs.filter(team__name=team)
    if format:
        qs = qs.filter(format=_clean_format(format))
    return qs.annotate(version_count=Count("versions"), latest_number=Max("versions__number"))


def dataset_get(*, user, ref: str | int) -> Dataset:
    """A dataset the user can see, by id, ``name`` or ``team/name``."""
    qs = visible_to(user, Dataset.objects.select_related("team", "created_by"))
    text = str(ref).strip()
    if text.isdigit():
        found = qs.filter(pk=int(text))
    else:
        team_name, _, name = text.rpartition("/")
        found = qs.filter(name=name, **({"team__name": team_name} if team_name else {}))
    rows = list(found[:2])
    if not rows:
        raise NotFound(f"Dataset {text!r} not found.", code="dataset_not_found", param="dataset")
    if len(rows) > 1:
        raise ApplicationError(f"Several of your teams have a dataset {text!r}: write it as team/name.",
                               code="ambiguous_dataset", param="dataset")
    return rows[0]


def _dataset_for(team: Team, name: str, *, description: str, fmt: str | None, who: Principal) -> Dataset:
    dataset = Dataset.objects.filter(team=team, name=name).first()
    if dataset is None:
        try:
            with transaction.atomic():
                dataset = Dataset.objects.create(team=team, name=name, description=description,
                                                 format=fmt or "", created_by=acting_user(who))
        except IntegrityError:  # created concurrently by another upload
            dataset = Dataset.objects.get(team=team, name=name)
    elif description and description != dataset.description:
        dataset.description = description
        dataset.save(update_fields=["description"])
    return dataset


def _check_kind(dataset: Dataset | None, fmt: str | None) -> None:
    if dataset is None or not dataset.format or not fmt:
        return
    if formats.kind_of(dataset.format) != formats.kind_of(fmt):
        raise Conflict(f"Dataset {dataset.name!r} holds {formats.kind_of(dataset.format)} data ({dataset.format}); "
                       f"this file is {formats.kind_of(fmt)} data ({fmt}). Upload it under another name.",
                       code="format_mismatch", param="format")


def _create_version(dataset: Dataset, **fields: Any) -> DatasetVersion:
    with transaction.atomic():
        locked = Dataset.objects.select_for_update().get(pk=dataset.pk)
        number = (locked.versions.aggregate(m=Max("number"))["m"] or 0) + 1
        version = DatasetVersion.objects.create(dataset=locked, number=number, **fields)
        if not locked.format and fields.get("status") == DatasetVersion.Status.READY and fields.get("format"):
            Dataset.objects.filter(pk=locked.pk).update(format=fields["format"])
    version.dataset = Dataset.objects.select_related("team").get(pk=dataset.pk)
    return version


def dataset_upload(*, user, team: Team | str | int | None, name: str, fileobj: IO | Path, filename: str,
                   format: str | None = None, description: str = "", base_model: Any = None,
                   columns: formats.ColumnMapping | dict | str | None = None, skip_invalid: bool = False,
                   format_reason: str = "") -> DatasetVersion:
    """Validate an uploaded file row by row, store its normalised form and record a new version.

    Data problems never raise: the result is a version with ``status=failed`` and the report, and
    nothing is stored on disk; with ``skip_invalid`` the valid rows are stored (a ready version) and the
    report keeps the others (``skipped_examples``), unless the file itself is unusable (unknown format,
    unreadable, too few valid rows). ``columns`` maps the file's keys onto ours (``"instruction=question,..."``,
    a dict, or a ColumnMapping); it is stored on the version. ``fileobj`` is a binary file, or the Path of a
    ``datasets.save_to_disk`` folder. Identical content (after normalisation) already in the dataset returns
    that version (with ``deduplicated = True`` set on the object). Parameter problems raise
    ``ApplicationError``: bad name/format/team/mapping, no permission, file over MAX_UPLOAD_BYTES (413),
    a file of another kind than the dataset's (409).
    """
    who = as_principal(user)
    team = resolve_team(who, team, write=True)
    name = _clean_name(name)
    fmt = _clean_format(format)
    mapping = _clean_mapping(columns)
    filename = storage.sanitize_filename(filename)
    limits = validation_limits()
    size = _size_of(fileobj)
    if size is not None and size > limits.max_bytes:
        raise _too_large(limits.max_bytes)
    model = resolve_base_model(user=who, ref=base_model)
    existing = Dataset.objects.filter(team=team, name=name).first()
    _check_kind(existing, fmt)
    counter = _token_counter(model) if model is not None else None
    text_counter = _text_counter(model) if model is not None else None
    max_tokens = max_tokens_for(model) if model is not None else None

    writer = storage.NormalisedWriter(team.name)
    try:
        report = validation.validate(fileobj, format=fmt, filename=filename, limits=limits,
                                     token_counter=counter, max_tokens=max_tokens, sink=writer.write,
                                     mapping=mapping, skip_invalid=skip_invalid, format_reason=format_reason,
                                     text_counter=text_counter, chunk_tokens=settings.DATASET_TEXT_CHUNK_TOKENS)
        if report.counts.get("file_too_large"):
            raise _too_large(limits.max_bytes)
        _check_kind(existing, report.format)
        stats = dict(report.stats)
        if model is not None and "tokens" in stats:
            stats["tokens"] = {model.name: stats["tokens"]}
        report_data = report.to_dict()
        common = {"source_filename": filename, "format": report.format or fmt or "", "report": report_data,
                  "stats": stats, "created_by": acting_user(who),
                  "mapping": mapping.model_dump(exclude_none=True) if mapping else {}}
        if not report.usable:
            writer.abort()
            dataset = _dataset_for(team, name, description=description, fmt=None, who=who)
            version = _create_version(dataset, status=DatasetVersion.Status.FAILED, row_count=0, **common)
            log.info("dataset upload %s failed validation: %s", version.ref, report.summary())
            return version
        sha = writer.sha256
        dataset = existing
        if dataset is not None:
            same = dataset.versions.filter(sha256=sha, status=DatasetVersion.Status.READY) \
                .order_by("split_role", "number").first()
            if same is not None:
                writer.abort()
                same.deduplicated = True
                same.upload_report = report_data  # this file's own report (format, container), not stored
                if model is not None and "tokens" in stats and model.name not in same.stats.get("tokens", {}):
                    # The token statistics were computed anyway: keep them on the existing version (a cache).
                    same.stats = {**same.stats, "tokens": {**same.stats.get("tokens", {}), **stats["tokens"]}}
                    DatasetVersion.objects.filter(pk=same.pk).update(stats=same.stats)
                return same
        relative = writer.commit()
    except BaseException:
        writer.abort()
        raise
    dataset = _dataset_for(team, name, description=description, fmt=report.format, who=who)
    version = _create_version(dataset, status=DatasetVersion.Status.READY, sha256=sha, path=relative,
                              row_count=report.valid_examples, **common)
    version.deduplicated = False
    return version


# Where a preference version built from people's judgements came from (``report["lineage"]["source"]``).
PREFERENCE_SOURCES = ("review", "playground")


def preference_version_create(*, user, team: Team, name: str, rows: list[dict], lineage: dict, filename: str,
                              description: str, too_few: str, param: str) -> DatasetVersion:
    """The one way a preference dataset version is built from judged pairs (blind-review votes, playground pairs):
    ``rows`` (``{"prompt": [msgs], "chosen": [msgs], "rejected": [msgs]}``) are uploaded as a ``preference`` file
    and ``lineage`` (``source`` one of ``PREFERENCE_SOURCES``, its ``counts`` and one entry per row under ``pairs``)
    is stored on the version as ``report["lineage"]``. Fewer usable rows than a dataset needs is a Conflict
    (``too_few_pairs``): ``too_few`` says what was found, e.g. "The review has 3 decided votes (...)"."""
    if lineage.get("source") not in PREFERENCE_SOURCES or len(lineage.get("pairs") or []) != len(rows):
        raise ValueError("lineage needs a known source and one entry per row")
    needed = validation_limits().min_examples
    if len(rows) < needed:
        raise Conflict(f"{too_few}; a preference dataset needs at least {needed} pairs.", code="too_few_pairs",
                       param=param)
    body = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")
    version = dataset_upload(user=user, team=team, name=name, fileobj=io.BytesIO(body), filename=filename,
                             format=formats.PREFERENCE, description=description)
    if not version.is_ready:  # cannot happen with rows we wrote, but never hand back a failed version silently
        errors = "; ".join(e.get("message", "") for e in (version.report.get("errors") or [])[:5])
        raise ApplicationError(f"The pairs did not validate: {errors}", code="invalid_dataset", param=param)
    report = {**(version.report or {}), "lineage": lineage}
    DatasetVersion.objects.filter(pk=version.pk).update(report=report)
    version.report = report
    return version


# ---------------------------------------------------------------------------------------------------------------
# Versions


def _versions_visible_to(user) -> QuerySet[DatasetVersion]:
    return visible_to(user, DatasetVersion.objects.select_related("dataset", "dataset__team", "created_by"),
                      team_field="dataset__team")


def dataset_version_list(*, user, dataset: Dataset | None = None, status: str | None = None
                         ) -> QuerySet[DatasetVersion]:
    qs = _versions_visible_to(user)
    if dataset is not None:
        qs = qs.filter(dataset=dataset)
    if status:
        qs = qs.filter(status=status)
    return qs.order_by("dataset_id", "-number")


def dataset_version_get(*, user, ref: str | int | DatasetVersion, require_ready: bool = False) -> DatasetVersion:
    """A version the user can see: by id, ``name@N``, ``team/name@N``, or ``name`` (its latest ready full upload).

    ``name`` alone skips split versions, so it means "the data as last uploaded". With
    ``require_ready=True`` a failed version raises Conflict (what a training task wants).
    """
    qs = _versions_visible_to(user)
    if isinstance(ref, DatasetVersion):
        ref = ref.pk
    text = str(ref).strip()
    not_found = NotFound(f"Dataset version {text!r} not found.", code="dataset_version_not_found",
                         param="dataset")
    if text.isdigit():
        version = qs.filter(pk=int(text)).first()
    else:
        match = VERSION_REF_RE.match(text)
        if not match:
            raise not_found
        qs = qs.filter(dataset__name=match["name"])
        if match["team"]:
            qs = qs.filter(dataset__team__name=match["team"])
        if len(qs.order_by().values_list("dataset_id", flat=True).distinct()[:2]) > 1:
            raise ApplicationError(f"Several of your teams have a dataset {match['name']!r}: write team/name.",
                                   code="ambiguous_dataset", param="dataset")
        if match["number"]:
            version = qs.filter(number=int(match["number"])).first()
        else:
            version = qs.filter(status=DatasetVersion.Status.READY, split_role="").order_by("-number").first()
    if version is None:
        raise not_found
    if require_ready and not version.is_ready:
        raise Conflict(f"Dataset version {version.ref} failed validation ({version.error_count} errors); "
                       "fix the file and upload it again.", code="dataset_version_failed", param="dataset")
    return version


def _require_ready(version: DatasetVersion) -> None:
    if not version.is_ready or not version.path:
        raise Conflict(f"Dataset version {version.ref} failed validation and has no data.",
                       code="dataset_version_failed", param="dataset")


def version_file(version: DatasetVersion) -> Path:
    """Absolute path of a ready version's normalised JSONL (for downloads and the training loader)."""
    _require_ready(version)
    try:
        path = storage.absolute(version.path)
    except ValueError:  # a row pointing outside DATA_DIR is never served (a damaged or tampered database)
        raise Conflict(f"The stored file of dataset version {version.ref} is not under DATA_DIR; it is not served.",
                       code="dataset_file_missing", param="dataset") from None
    if not path.is_file():
        raise Conflict(f"The file of dataset version {version.ref} is missing from DATA_DIR.",
                       code="dataset_file_missing", param="dataset")
    return path


def iter_records(version: DatasetVersion) -> Iterator[dict]:
    """The normalised records of a ready version, in order, read lazily."""
    path = version_file(version)
    with path.open("rb") as fh:
        for line in fh:
            yield json.loads(line)


def _existing_split(version: DatasetVersion, *, seed: int | None, ratio: float | None,
                    val_sha: str | None = None) -> tuple[DatasetVersion, DatasetVersion] | None:
    qs = version.splits.filter(status=DatasetVersion.Status.READY, split_seed=seed)
    pairs: dict[str, DatasetVersion] = {}
    for child in qs.order_by("-number"):
        if ratio is not None and (child.split_ratio is None or abs(child.split_ratio - ratio) > 1e-9):
            continue
        if val_sha and child.split_role == DatasetVersion.SplitRole.VALIDATION and child.sha256 != val_sha:
            continue
        pairs.setdefault(child.split_role, child)
    train, val = pairs.get("train"), pairs.get("validation")
    return (train, val) if train and val else None


def _write_split(parent: DatasetVersion, val_rows: set[int], *, seed: int | None, ratio: float,
                 who: Principal) -> tuple[DatasetVersion, DatasetVersion]:
    team_name = parent.dataset.team.name
    train_w, val_w = storage.NormalisedWriter(team_name), storage.NormalisedWriter(team_name)
    train_stats, val_stats = validation.StatsAccumulator(), validation.StatsAccumulator()
    try:
        for index, line in enumerate(storage.iter_lines(parent.path)):
            record = json.loads(line)
            if index in val_rows:
                val_w.write(line)
                val_stats.add(record)
            else:
                train_w.write(line)
                train_stats.add(record)
        train_path, val_path = train_w.commit(), val_w.commit()
    except BaseException:
        train_w.abort()
        val_w.abort()
        raise
    common = {"format": parent.format, "status": DatasetVersion.Status.READY, "parent": parent,
              "split_seed": seed, "split_ratio": ratio, "created_by": acting_user(who)}
    with transaction.atomic():
        train = _create_version(parent.dataset, sha256=train_w.sha256, path=train_path, row_count=train_w.rows,
                                split_role=DatasetVersion.SplitRole.TRAIN,
                                source_filename=f"{parent.ref} (train split)", stats=train_stats.to_dict(),
                                report=_split_report(parent, train_w.rows), **common)
        val = _create_version(parent.dataset, sha256=val_w.sha256, path=val_path, row_count=val_w.rows,
                              split_role=DatasetVersion.SplitRole.VALIDATION,
                              source_filename=f"{parent.ref} (validation split)", stats=val_stats.to_dict(),
                              report=_split_report(parent, val_w.rows), **common)
    return train, val


def _split_report(parent: DatasetVersion, rows: int) -> dict:
    return {"split_of": parent.ref, "format": parent.format, "examples": rows, "valid_examples": rows, "ok": True,
            "error_count": 0, "warning_count": 0, "counts": {}, "errors": [], "warnings": []}


def dataset_version_split(*, user, version: DatasetVersion, val_ratio: float = 0.1, seed: int = 42,
                          validation: DatasetVersion | str | int | None = None
                          ) -> tuple[DatasetVersion, DatasetVersion]:
    """Cut a ready version into train and validation versions (children with ``parent=version``).

    With ``validation`` (another ready version of the same team and kind), the pair is recorded
    without cutting: train is ``version``'s content, validation that version's. The same seed and
    ratio (or the same validation content) returns the pair made before.
    """
    who = as_principal(user)
    require_write(who, version, team_field="dataset__team")
    _require_ready(version)
    if version.split_role:
        raise Conflict(f"{version.ref} is already a {version.split_role} split; split the version it came from.",
                       code="already_split", param="version")
    if validation not in (None, ""):
        return _attach_validation(who, version, validation)
    try:
        ratio = float(val_ratio)
        seed = int(seed)
    except (TypeError, ValueError):
        raise ApplicationError("val_ratio must be a number and seed an integer.", code="invalid_split",
                               param="val_ratio") from None
    if not 0 < ratio < 1 or math.isnan(ratio):
        raise ApplicationError("val_ratio must be between 0 and 1 (exclusive).", code="invalid_split",
                               param="val_ratio")
    if seed < 0:
        raise ApplicationError("seed must be a non-negative integer.", code="invalid_split", param="seed")
    existing = _existing_split(version, seed=seed, ratio=ratio)
    if existing:
        return existing
    n = version.row_count
    k = min(n - 1, max(1, round(n * ratio)))
    if n < 2 or k < 1:
        raise ApplicationError(f"{version.ref} has {n} example(s): too few to split.", code="invalid_split",
                               param="val_ratio")
    # random.Random(seed).sample is deterministic for a seed; only the validation indices are kept.
    val_rows = set(random.Random(seed).sample(range(n), k))
    return _write_split(version, val_rows, seed=seed, ratio=ratio, who=who)


def _attach_validation(who: Principal, version: DatasetVersion, validation_ref: Any
                       ) -> tuple[DatasetVersion, DatasetVersion]:
    val_src = validation_ref if isinstance(validation_ref, DatasetVersion) else \
        dataset_version_get(user=who, ref=validation_ref, require_ready=True)
    _require_ready(val_src)
    if val_src.pk == version.pk:
        raise ApplicationError("The validation version must differ from the one being split.",
                               code="invalid_split", param="validation")
    if val_src.dataset.team_id != version.dataset.team_id:
        raise ApplicationError("The validation version must belong to the same team.", code="invalid_split",
                               param="validation")
    if val_src.kind != version.kind:
        raise ApplicationError(f"The validation version holds {val_src.kind} data, {version.ref} holds "
                               f"{version.kind} data.", code="format_mismatch", param="validation")
    if version.kind == formats.KIND_CLASSIFICATION:
        known = set((version.stats or {}).get("labels", {}))
        unseen = [label for label in (val_src.stats or {}).get("labels", {}) if label not in known]
        if unseen:
            raise ApplicationError(f"The validation data has labels the training data lacks: {', '.join(unseen)}.",
                                   code="label_unseen", param="validation",
                                   details=[{"line": None, "code": "label_unseen", "message": f"label {u!r}"}
                                            for u in unseen])
    existing = _existing_split(version, seed=None, ratio=None, val_sha=val_src.sha256)
    if existing:
        return existing
    ratio = val_src.row_count / max(1, val_src.row_count + version.row_count)
    common = {"format": version.format, "status": DatasetVersion.Status.READY, "parent": version,
              "split_seed": None, "split_ratio": ratio, "created_by": acting_user(who)}
    with transaction.atomic():
        train = _create_version(version.dataset, sha256=version.sha256, path=version.path,
                                row_count=version.row_count, split_role=DatasetVersion.SplitRole.TRAIN,
                                source_filename=f"{version.ref} (train)", stats=_basic(version.stats),
                                report=_split_report(version, version.row_count), **common)
        val = _create_version(version.dataset, sha256=val_src.sha256, path=val_src.path,
                              row_count=val_src.row_count, split_role=DatasetVersion.SplitRole.VALIDATION,
                              source_filename=f"{val_src.ref} (validation)", stats=_basic(val_src.stats),
                              report=_split_report(version, val_src.row_count), **common)
    return train, val


def _basic(stats: dict | None) -> dict:
    return {k: v for k, v in (stats or {}).items() if k not in ("tokens", "style")}


def _describe_protected(objects: Iterable[Any]) -> str:
    names = []
    for obj in list(objects)[:5]:
        label = obj._meta.verbose_name
        names.append(f"{label} {obj.ref}" if isinstance(obj, DatasetVersion) else f"{label} {obj} (#{obj.pk})")
    return ", ".join(names)


def _remove_unreferenced(paths: Iterable[str]) -> None:
    for path in set(paths):
        if path and not DatasetVersion.objects.filter(path=path).exists():
            storage.remove(path)


def dataset_version_delete(*, user, version: DatasetVersion) -> None:
    """Delete a version and, once no version points at it, its file. Refused (409) while it is in use:
    by a training task (their foreign keys PROTECT it) or by the splits cut from it."""
    who = as_principal(user)
    require_write(who, version, team_field="dataset__team")
    path = version.path
    ref = version.ref
    try:
        with transaction.atomic():
            version.delete()
    except ProtectedError as exc:
        raise Conflict(f"Dataset version {ref} cannot be deleted: it is used by "
                       f"{_describe_protected(exc.protected_objects)}.", code="dataset_version_in_use",
                       param="version") from None
    transaction.on_commit(lambda: _remove_unreferenced([path]))


def dataset_delete(*, user, dataset: Dataset) -> None:
    """Delete a dataset with all its versions (refused while a training task uses one of them)."""
    who = as_principal(user)
    require_write(who, dataset)
    paths = list(dataset.versions.values_list("path", flat=True))
    name = dataset.name
    try:
        with transaction.atomic():
            # Splits first: a parent version is PROTECTed by the splits cut from it.
            dataset.versions.filter(parent__isnull=False).delete()
            dataset.delete()
    except ProtectedError as exc:
        raise Conflict(f"Dataset {name!r} cannot be deleted: it is used by "
                       f"{_describe_protected(exc.protected_objects)}.", code="dataset_in_use",
                       param="dataset") from None
    transaction.on_commit(lambda: _remove_unreferenced(paths))


# ---------------------------------------------------------------------------------------------------------------
# Inspect: statistics, histogram, preview


def version_stats(*, version: DatasetVersion, base_model: Any = None) -> dict:
    """Rows, turns, characters, labels, duplicates; with a base model also the token-length
    distribution (min/median/p95/max, histogram) under its tokenizer, cached per model on the version."""
    stats = json.loads(json.dumps(version.stats or {}))
    if base_model is None:
        return stats
    _require_ready(version)
    cached = stats.get("tokens", {}).get(base_model.name)
    if cached is None:
        tokenizer = _tokenizer(base_model)
        hist = validation.LengthHistogram()
        failures = 0
        for record in iter_records(version):
            try:
                hist.add(ml_data.count_tokens(tokenizer, record))
            except Exception:  # a template that rejects the example: counted, shown in the preview
                failures += 1
        cached = hist.summary(limit=max_tokens_for(base_model))
        cached["template_errors"] = failures
        stats.setdefault("tokens", {})[base_model.name] = cached
        # update(): stats are a cache; nothing else of the immutable version is written.
        DatasetVersion.objects.filter(pk=version.pk).update(stats=stats)
        version.stats = stats
    return stats


def version_histogram_png(*, version: DatasetVersion, base_model: Any = None) -> bytes:
    """A PNG histogram of tokens per example under ``base_model`` (characters without one)."""
    from matplotlib.figure import Figure  # Agg canvas, no pyplot global state: safe in a web process

    stats = version_stats(version=version, base_model=base_model)
    if base_model is not None:
        summary = stats.get("tokens", {}).get(base_model.name, {})
        xlabel = f"tokens per example ({base_model.name})"
    else:
        summary = stats.get("characters", {})
        xlabel = "characters per example"
    hist = summary.get("histogram") or {"edges": [0, 1], "counts": [0]}
    edges, counts = hist["edges"], hist["counts"]
    fig = Figure(figsize=(7, 3.2), dpi=100)
    ax = fig.add_subplot()
    widths = [edges[i + 1] - edges[i] for i in range(len(counts))]
    ax.bar(edges[:-1], counts, width=widths, align="edge", color="#417690", edgecolor="white")
    if summary.get("limit") and summary.get("max", 0) >= summary["limit"] * 0.8:
        ax.axvline(summary["limit"], color="#ba2121", linestyle="--", label=f"limit {summary['limit']}")
        ax.legend(loc="upper right")
    for key, color in (("median", "#333333"), ("p95", "#e07b00")):
        if summary.get(key) is not None:
            ax.axvline(summary[key], color=color, linestyle=":", linewidth=1)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("examples")
    ax.set_title(f"{version.ref}: {summary.get('count', 0)} examples, median {summary.get('median')}, "
                 f"p95 {summary.get('p95')}, max {summary.get('max')}", fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def template_label(tokenizer: Any, template: str = "auto") -> str:
    """Which template the preview (and a training run with this ``template``) renders with, in words."""
    if template not in ("auto", "chat_template"):
        return f"{template} (chosen)"
    if ml_data.has_chat_template(tokenizer):
        return "model"
    name = resolve_template("auto", has_chat_template=False)
    return f"fallback ({name}: the base model has no chat template)"


PREVIEW_TEMPLATES = ("auto", *TEMPLATES)
PREVIEW_LOSS_ON = ("assistant", "all")


def version_preview(*, version: DatasetVersion, base_model: Any, n: int = 5, template: str = "auto",
                    loss_on: str = "assistant") -> dict:
    """The first ``n`` examples rendered exactly as training renders them (``ml.data``: with ``template`` — "auto":
    the base model's chat template, else the fallback template "auto" resolves to — and the loss on ``loss_on``),
    cut into segments with the trained tokens marked."""
    _require_ready(version)
    if base_model is None:
        raise ApplicationError("Choose a base model: the preview renders with its tokenizer.",
                               code="base_model_required", param="base_model")
    if template not in PREVIEW_TEMPLATES:
        raise ApplicationError(f"template: choose one of {', '.join(PREVIEW_TEMPLATES)}.", code="invalid_parameter",
                               param="template")
    if loss_on not in PREVIEW_LOSS_ON:
        raise ApplicationError(f"loss_on: choose one of {', '.join(PREVIEW_LOSS_ON)}.", code="invalid_parameter",
                               param="loss_on")
    n = max(1, min(int(n), PREVIEW_MAX))
    tokenizer = _tokenizer(base_model)
    try:
        source = ml_data.template_source(tokenizer, template)
    except TrainingError as exc:
        raise ApplicationError(exc.message, code="invalid_parameter", param="template") from None
    limit = max_tokens_for(base_model)
    examples = []
    for index, record in enumerate(iter_records(version), 1):
        if index > n:
            break
        try:
            encoded = ml_data.encode_record(tokenizer, record, with_offsets=True, template=template, loss_on=loss_on)
        except Exception as exc:
            examples.append({"index": index, "error": f"the chat template rejects this example: {exc}"})
            continue
        examples.append({
            "index": index,
            "template": "model" if encoded.rendered.template == "chat_template" else encoded.rendered.template,
            "text": encoded.rendered.text,
            "segments": ml_data.segments(encoded),
            "tokens": len(encoded.input_ids),
            "trained_tokens": encoded.n_trained,
            "over_limit": len(encoded.input_ids) > limit,
            "label": None if record.get("label") is None else str(record["label"]),
        })
    return {"version": version.ref, "base_model": base_model.name, "max_tokens": limit,
            "chat_template": template_label(tokenizer, template), "loss_on": loss_on,
            "tools_rendering": "model" if template_supports_tools(source)
            else "fallback (tools in the system message, <tool_call> / <tool_response> blocks)",
            "examples": examples}


# ---------------------------------------------------------------------------------------------------------------
# Style corpus


@dataclass
class StyleBuildResult:
    version: DatasetVersion
    train: DatasetVersion | None = None
    validation: DatasetVersion | None = None
    stats: dict = field(default_factory=dict)
    stats_path: str = ""


def style_dataset_build(*, user, team: Team | str | int | None, name: str, source_dir: str | Path,
                        base_model: Any = None, min_tokens: int = 300, max_tokens: int = 800,
                        val_ratio: float = 0.05, seed: int = 42, description: str = "",
                        progress: Callable[[str, int, int], None] | None = None) -> StyleBuildResult:
    """Markdown articles -> chunks -> three instruction examples each -> a dataset version split into
    train/validation by chunk (the examples of one chunk never straddle the split), plus a stats JSON.

    ``progress(article, index, total)`` is called before each article.
    """
    who = as_principal(user)
    team = resolve_team(who, team, write=True)
    name = _clean_name(name)
    source = Path(source_dir).expanduser()
    if not source.is_dir():
        raise ApplicationError(f"{source} is not a folder.", code="invalid_source", param="source_dir")
    if not 0 < min_tokens < max_tokens:
        raise ApplicationError("Need 0 < min-tokens < max-tokens.", code="invalid_chunking", param="min_tokens")
    if not 0 < val_ratio < 1:
        raise ApplicationError("val-ratio must be between 0 and 1.", code="invalid_split", param="val_ratio")
    model = resolve_base_model(user=who, ref=base_model)
    count = style.tokenizer_counter(_tokenizer(model)) if model is not None else style.jieba_counter()
    paths = style.find_articles(source)
    if not paths:
        raise ApplicationError(f"No Markdown (*.md) files under {source}.", code="invalid_source",
                               param="source_dir")

    chunk_tokens = validation.LengthHistogram()
    per_template = dict.fromkeys(style.TEMPLATES, 0)
    row_chunk: list[int] = []
    articles_used = short_articles = dropped_tokens = 0
    chunk_index = 0
    with tempfile.TemporaryFile() as tmp:
        for i, path in enumerate(paths):
            if progress:
                progress(str(path.relative_to(source)), i, len(paths))
            article = style.read_article(path, source)
            chunks, dropped = style.chunk_article(article, count, min_tokens=min_tokens, max_tokens=max_tokens)
            dropped_tokens += dropped
            if not chunks:
                short_articles += 1
                continue
            articles_used += 1
            for chunk in chunks:
                chunk_tokens.add(chunk.tokens)
                for template, example in style.make_examples(chunk):
                    tmp.write(json.dumps(example, ensure_ascii=False).encode("utf-8") + b"\n")
                    per_template[template] += 1
                    row_chunk.append(chunk_index)
                chunk_index += 1
        if progress:
            progress("", len(paths), len(paths))
        tmp.seek(0)
        version = dataset_upload(user=who, team=team, name=name, fileobj=tmp, filename="style.jsonl",
                                 format=formats.OPENAI, base_model=model,
                                 description=description or f"Style corpus built from {source.name}/")
    stats: dict[str, Any] = {
        "source_dir": str(source), "articles": len(paths), "articles_used": articles_used,
        "short_articles_skipped": short_articles, "dropped_tokens": dropped_tokens, "chunks": chunk_index,
        "chunk_tokens": chunk_tokens.summary(), "examples": sum(per_template.values()), "per_template": per_template,
        "counter": f"tokenizer:{model.name}" if model is not None else "jieba words",
        "min_tokens": min_tokens, "max_tokens": max_tokens, "val_ratio": val_ratio, "seed": seed,
    }
    result = StyleBuildResult(version=version, stats=stats)
    if not version.is_ready:
        return result
    # Split by chunk so that the three examples of one chunk land on the same side.
    val_chunks: set[int] = set()
    if chunk_index >= 2:
        k = min(chunk_index - 1, max(1, round(chunk_index * val_ratio)))
        val_chunks = set(random.Random(seed).sample(range(chunk_index), k))
    if not val_chunks:
        raise ApplicationError("Too few chunks to hold out a validation set; add articles or lower --min-tokens.",
                               code="invalid_split", param="val_ratio")
    val_rows = {row for row, c in enumerate(row_chunk) if c in val_chunks}
    pair = _existing_split(version, seed=seed, ratio=val_ratio) or \
        _write_split(version, val_rows, seed=seed, ratio=val_ratio, who=who)
    result.train, result.validation = pair
    stats.update({"train_chunks": chunk_index - len(val_chunks), "validation_chunks": len(val_chunks),
                  "train_examples": pair[0].row_count, "validation_examples": pair[1].row_count,
                  "versions": {"full": version.ref, "train": pair[0].ref, "validation": pair[1].ref}})
    relative = storage.relative_path(team.name, version.sha256, suffix=".style-stats.json")
    target = storage.absolute(relative)
    tmp_target = target.with_name(f".{target.name}.tmp")
    tmp_target.write_text(json.dumps(stats, ensure_ascii=False, indent=2), encoding="utf-8")
    os.replace(tmp_target, target)
    result.stats_path = relative
    merged = {**(version.stats or {}), "style": stats}
    DatasetVersion.objects.filter(pk=version.pk).update(stats=merged)
    version.stats = merged
    return result
