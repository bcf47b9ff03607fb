"""/v1/files: the OpenAI files protocol on top of dataset versions (a file is a dataset version).

A training file is validated at upload with the same validator as every other door; a file with
errors still uploads (status ``error`` with the report in ``status_details``) so that a job created
from it fails in ``validating_files`` with the row-level report, as the protocol expects.
"""

# No `from __future__ import annotations`: ninja reads File/Form annotations at import.
import re
from pathlib import Path

from django.http import FileResponse, HttpResponse
from ninja import File, Form, Router, Schema
from ninja.files import UploadedFile

from accounts.auth import principal
from core.csv_export import to_csv
from core.errors import ApplicationError, NotFound
from datasets_app import services
from datasets_app.models import DatasetVersion
from openai_compat.ids import FILE_ID, RESULT_ID, job_id, ts
from training.models import TrainingTask
from training.services import training_task_list

router = Router(tags=["files"])


class FileOut(Schema):
    object: str = "file"
    id: str
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: str
    status_details: str | None = None


class FileList(Schema):
    object: str = "list"
    data: list[FileOut]
    has_more: bool = False


class DeletedOut(Schema):
    object: str = "file"
    id: str
    deleted: bool


def file_id(version: DatasetVersion) -> str:
    return f"file-{version.pk}"


def _report_text(version: DatasetVersion, limit: int = 20) -> str:
    errors = (version.report or {}).get("errors") or []
    lines = [f"line {e.get('line')}: {e.get('code')}: {e.get('message')}" for e in errors[:limit]]
    if len(errors) > limit:
        lines.append(f"... and {len(errors) - limit} more")
    return "; ".join(lines) or "validation failed"


def file_out(version: DatasetVersion) -> dict:
    size = 0
    if version.path:
        try:
            size = services.version_file(version).stat().st_size
        except (OSError, ApplicationError):
            size = 0
    ready = version.status == DatasetVersion.Status.READY
    return {"id": file_id(version), "bytes": size, "created_at": int(version.created_at.timestamp()),
            "filename": version.source_filename or f"{version.dataset.name}.jsonl", "purpose": "fine-tune",
            "status": "processed" if ready else "error", "status_details": None if ready else _report_text(version)}


def version_from_file_id(who, value: str, *, param: str = "file_id") -> DatasetVersion:
    match = FILE_ID.match(value or "")
    if not match:
        raise NotFound(f"No such file: {value!r}.", code="file_not_found", param=param)
    try:
        return services.dataset_version_get(user=who, ref=int(match.group(1)))
    except NotFound:
        raise NotFound(f"No such file: {value!r}.", code="file_not_found", param=param) from None


def _openai_files(who):
    return services.dataset_version_list(user=who).select_related("dataset").order_by("-pk")


@router.post("/files", response={200: FileOut})
def file_create(request, file: File[UploadedFile], purpose: Form[str]):
    who = principal(request)
    if purpose != "fine-tune":
        raise ApplicationError("Only purpose='fine-tune' is supported.", code="invalid_purpose", param="purpose")
    filename = Path(file.name or "upload.jsonl").name
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(filename).stem)[:80].strip("-.") or "upload"
    fmt = _upload_format(file.file)
    if fmt == "preference":  # its own dataset: a dataset holds one kind of data (chat files are named by stem)
        name = f"{name[:69]}-preference"
    version = services.dataset_upload(user=who, team=None, name=name, fileobj=file.file, filename=filename,
                                      format=fmt, description="Uploaded through /v1/files")
    return file_out(version)


def _upload_format(fileobj) -> str:
    """OpenAI's two fine-tuning file formats: chat (``messages``) for supervised jobs, and preference pairs
    (``input`` / ``preferred_output`` / ``non_preferred_output``) for DPO jobs, told apart by the first row."""
    head = fileobj.read(64 * 1024)
    fileobj.seek(0)
    first = next((line for line in head.splitlines() if line.strip()), b"")
    return "preference" if b'"preferred_output"' in first or b'"non_preferred_output"' in first else "openai"


@router.get("/files", response=FileList)
def file_list(request, purpose: str | None = None, limit: int = 10000, after: str | None = None):
    who = principal(request)
    qs = _openai_files(who)
    if after:
        match = FILE_ID.match(after)
        if match:
            qs = qs.filter(pk__lt=int(match.group(1)))
    limit = max(1, min(limit, 10000))
    rows = list(qs[: limit + 1])
    return {"object": "list", "data": [file_out(v) for v in rows[:limit]], "has_more": len(rows) > limit}


@router.get("/files/{file_id}", response={200: FileOut})
def file_retrieve(request, file_id: str):
    who = principal(request)
    if RESULT_ID.match(file_id):
        return result_file_out(who, file_id)
    return file_out(version_from_file_id(who, file_id))


@router.get("/files/{file_id}/content", response={200: None})
def file_content(request, file_id: str):
    who = principal(request)
    if RESULT_ID.match(file_id):
        return HttpResponse(result_file_csv(who, file_id), content_type="text/csv; charset=utf-8")
    version = version_from_file_id(who, file_id)
    if version.status != DatasetVersion.Status.READY:
        raise ApplicationError(f"File {file_id} failed validation and has no content: {_report_text(version)}",
                               code="file_not_processed", param="file_id")
    return FileResponse(services.version_file(version).open("rb"), content_type="application/jsonl",
                        as_attachment=True, filename=version.source_filename or f"{file_id}.jsonl")


@router.delete("/files/{file_id}", response={200: DeletedOut})
def file_delete(request, file_id: str):
    who = principal(request)
    version = version_from_file_id(who, file_id)
    services.dataset_version_delete(user=who, version=version)
    return {"id": file_id, "deleted": True}


# ------------------------------------------------------------------------------------------------ result files

def _result_task(who, file_id: str) -> TrainingTask:
    match = RESULT_ID.match(file_id)
    task = training_task_list(user=who, status=TrainingTask.Status.SUCCEEDED).filter(
        pk=int(match.group(1))).first() if match else None
    if task is None:
        raise NotFound(f"No such file: {file_id!r}.", code="file_not_found", param="file_id")
    return task


def result_file_csv(who, file_id: str) -> str:
    """``step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy`` from the job's metrics events."""
    task = _result_task(who, file_id)
    rows: dict[int, dict] = {}
    for data in task.events.filter(type="metrics").order_by("id").values_list("data", flat=True):
        if data and "step" in data:
            rows.setdefault(int(data["step"]), {}).update(data)
    header = ["step", "train_loss", "train_accuracy", "valid_loss", "valid_mean_token_accuracy"]
    keys = ["train_loss", "train_mean_token_accuracy", "valid_loss", "valid_mean_token_accuracy"]
    if task.method != TrainingTask.Method.SFT:  # preference runs: their rewards, as TRL logs them
        extra = [f"{split}_{name}" for split in ("train", "valid")
                 for name in ("rewards_chosen", "rewards_rejected", "reward_accuracy", "reward_margin")]
        header, keys = header + extra, keys + extra
    # Metrics come from event data: to_csv keeps numbers as they are and escapes formula-like text.
    return to_csv(header, ([step, *(rows[step].get(k, "") for k in keys)] for step in sorted(rows)),
                  lineterminator="\n")


def result_file_out(who, file_id: str) -> dict:
    task = _result_task(who, file_id)
    return {"id": file_id, "bytes": len(result_file_csv(who, file_id).encode()),
            "created_at": ts(task.finished_at), "filename": f"{job_id(task)}-results.csv",
            "purpose": "fine-tune-results", "status": "processed", "status_details": None}
