"""/api/ endpoints for datasets and their versions.

Upload answers (POST /api/datasets, multipart: file, name, team?, format?, description?, base_model?,
columns?, skip_invalid?):

- ``201`` a new ready version;
- ``200`` the existing version when the same content (after normalisation) was uploaded before
  (``deduplicated: true``);
- ``201`` with ``skip_invalid``: a ready version of the valid rows, ``skipped_examples`` and the report of
  the rest;
- ``422`` the upload failed validation: the body is still the version (``status: "failed"``, its id,
  the first errors with line numbers). The failed version is kept and visible, its full report is at
  ``/api/dataset-versions/{id}/report``; nothing of it is stored as data.
- ``400``/``403``/``404``/``409``/``413`` for parameter problems (bad format name, read-only role,
  unknown team, a file of another kind than the dataset's, over MAX_UPLOAD_BYTES).

Versions are addressed by id or ``name@N`` (``name`` alone: its latest ready full upload).
"""

# No `from __future__ import annotations` here: ninja resolves Query[...] and response types at import.

import json

from django.http import FileResponse, HttpResponse
from ninja import File, Form, Query, Router, Schema, Status
from ninja.files import UploadedFile
from ninja.pagination import paginate

from accounts.auth import principal
from core.pagination import Pagination
from core.schemas import ErrorOut
from datasets_app import services
from datasets_app.schemas import (
    DatasetDetailOut,
    DatasetFilter,
    DatasetOut,
    DatasetUploadIn,
    DatasetVersionOut,
    PreviewOut,
    ReportOut,
    SplitIn,
    SplitOut,
    StatsOut,
)

router = Router(tags=["datasets"])
ERRORS = {400: ErrorOut, 401: ErrorOut, 403: ErrorOut, 404: ErrorOut, 409: ErrorOut}


class PreviewQuery(Schema):
    base_model: str
    n: int = 5


class StatsQuery(Schema):
    base_model: str | None = None


@router.post("/datasets", response={200: DatasetVersionOut, 201: DatasetVersionOut, 422: DatasetVersionOut,
                                    413: ErrorOut, **ERRORS})
def dataset_upload(request, file: File[UploadedFile], payload: Form[DatasetUploadIn]):
    """Upload a file as a new version of the dataset ``name`` (created if new). See the module notes for
    the status codes: 201 new, 200 identical content already there, 422 failed validation."""
    version = services.dataset_upload(user=principal(request), team=payload.team, name=payload.name,
                                      fileobj=file, filename=file.name, format=payload.format,
                                      description=payload.description, base_model=payload.base_model,
                                      columns=payload.columns, skip_invalid=payload.skip_invalid)
    if not version.is_ready:
        return Status(422, version)
    return Status(200 if getattr(version, "deduplicated", False) else 201, version)


@router.get("/datasets", response=list[DatasetOut])
@paginate(Pagination)
def dataset_list(request, filters: Query[DatasetFilter]):
    return services.dataset_list(user=principal(request), team=filters.team, format=filters.format)


@router.get("/datasets/{ref}", response={200: DatasetDetailOut, **ERRORS})
def dataset_detail(request, ref: str):
    """A dataset (by id, or name) with its versions and the statistics of its latest ready version."""
    who = principal(request)
    dataset = services.dataset_get(user=who, ref=ref)
    versions = list(services.dataset_version_list(user=who, dataset=dataset))
    latest = next((v for v in versions if v.is_ready and not v.split_role), None)
    dataset.version_rows = versions
    dataset.latest_stats = latest.stats if latest else None
    return dataset


@router.delete("/datasets/{ref}", response={204: None, **ERRORS})
def dataset_delete(request, ref: str):
    who = principal(request)
    services.dataset_delete(user=who, dataset=services.dataset_get(user=who, ref=ref))
    return Status(204, None)


@router.get("/datasets/{ref}/versions", response={200: list[DatasetVersionOut], **ERRORS})
@paginate(Pagination)
def dataset_versions(request, ref: str):
    who = principal(request)
    return services.dataset_version_list(user=who, dataset=services.dataset_get(user=who, ref=ref))


@router.get("/dataset-versions/{ref}", response={200: DatasetVersionOut, **ERRORS})
def version_detail(request, ref: str):
    return services.dataset_version_get(user=principal(request), ref=ref)


@router.get("/dataset-versions/{ref}/report", response={200: ReportOut, **ERRORS})
def version_report(request, ref: str, download: bool = False):
    """The full validation report (``?download=true``: as a JSON attachment)."""
    version = services.dataset_version_get(user=principal(request), ref=ref)
    body = {"version": version.ref, "status": version.status, **(version.report or {})}
    if download:
        response = HttpResponse(json.dumps(body, ensure_ascii=False, indent=2),
                                content_type="application/json; charset=utf-8")
        response["Content-Disposition"] = f'attachment; filename="{_safe(version.ref)}.report.json"'
        return response
    return body


@router.get("/dataset-versions/{ref}/stats", response={200: StatsOut, **ERRORS})
def version_stats(request, ref: str, query: Query[StatsQuery]):
    """Rows, turns, characters, labels, duplicates; with ``base_model`` the token-length distribution."""
    who = principal(request)
    version = services.dataset_version_get(user=who, ref=ref)
    model = services.resolve_base_model(user=who, ref=query.base_model)
    stats = services.version_stats(version=version, base_model=model)
    return {"version": version.ref, "base_model": model.name if model else None, "stats": stats}


@router.get("/dataset-versions/{ref}/histogram.png", response={200: None, **ERRORS})
def version_histogram(request, ref: str, query: Query[StatsQuery]):
    """Histogram of tokens per example under ``base_model`` (characters without one), as a PNG."""
    who = principal(request)
    version = services.dataset_version_get(user=who, ref=ref)
    model = services.resolve_base_model(user=who, ref=query.base_model)
    return HttpResponse(services.version_histogram_png(version=version, base_model=model), content_type="image/png")


@router.get("/dataset-versions/{ref}/preview", response={200: PreviewOut, **ERRORS})
def version_preview(request, ref: str, query: Query[PreviewQuery]):
    """The first ``n`` examples as the base model's chat template renders them, trained tokens marked."""
    who = principal(request)
    version = services.dataset_version_get(user=who, ref=ref)
    model = services.resolve_base_model(user=who, ref=query.base_model)
    return services.version_preview(version=version, base_model=model, n=query.n)


@router.get("/dataset-versions/{ref}/download", response={200: None, **ERRORS})
def version_download(request, ref: str):
    """The normalised JSONL of a ready version."""
    version = services.dataset_version_get(user=principal(request), ref=ref)
    path = services.version_file(version)
    return FileResponse(path.open("rb"), as_attachment=True, filename=f"{_safe(version.ref)}.jsonl",
                        content_type="application/jsonl")


@router.post("/dataset-versions/{ref}/split", response={201: SplitOut, **ERRORS})
def version_split(request, ref: str, payload: SplitIn):
    """Cut train and validation versions with a seed and ratio (or pair it with a given validation version)."""
    who = principal(request)
    version = services.dataset_version_get(user=who, ref=ref)
    train, val = services.dataset_version_split(user=who, version=version, val_ratio=payload.val_ratio,
                                                seed=payload.seed, validation=payload.validation)
    return Status(201, {"train": train, "validation": val})


@router.delete("/dataset-versions/{ref}", response={204: None, **ERRORS})
def version_delete(request, ref: str):
    """Delete a version; 409 while a training task or a split of it uses it."""
    who = principal(request)
    services.dataset_version_delete(user=who, version=services.dataset_version_get(user=who, ref=ref))
    return Status(204, None)


def _safe(ref: str) -> str:
    return "".join(c if c.isalnum() or c in "._-@" else "_" for c in ref)

