"""/api/ endpoints for base models, training tasks and adapters, and /v1/models."""

# No `from __future__ import annotations` here: ninja resolves Query[...] and response types at import.
from django.http import StreamingHttpResponse
from ninja import Query, Router, Schema, Status
from ninja.pagination import paginate

from accounts.auth import principal
from accounts.visibility import team_ids
from core.errors import PermissionDenied
from core.pagination import Pagination
from core.schemas import ErrorOut
from training import services
from training.models import Adapter, BaseModel, TrainingTask
from training.schemas import (
    AdapterOut,
    BaseModelOut,
    CheckpointOut,
    CloneIn,
    EventPage,
    ScanOut,
    TrainingTaskIn,
    TrainingTaskOut,
)

router = Router(tags=["base models"])
ERRORS = {400: ErrorOut, 401: ErrorOut, 403: ErrorOut, 404: ErrorOut, 409: ErrorOut}


class BaseModelFilter(Schema):
    kind: BaseModel.Kind | None = None
    available: bool | None = None


@router.get("/base-models", response=list[BaseModelOut])
@paginate(Pagination)
def base_model_list(request, filters: Query[BaseModelFilter]):
    return services.base_model_list(user=principal(request), kind=filters.kind,
                                    available=filters.available).select_related("team")


@router.post("/base-models/scan", response={200: ScanOut, **ERRORS})
def base_model_scan(request):
    """Rescan the configured model folders (not arbitrary paths: those are for the command line)."""
    who = principal(request)
    writable = team_ids(who, write=True)
    if writable is not None and not writable:
        raise PermissionDenied("Scanning needs a member or admin role in a team.")
    report = services.base_models_scan(user=who.user)
    return {"rows": [vars(r) for r in report.rows]}


@router.get("/base-models/{ref}", response={200: BaseModelOut, **ERRORS})
def base_model_detail(request, ref: str):
    return services.base_model_get(user=principal(request), ref=ref, require_available=False)


# ------------------------------------------------------------------------------------------ training tasks
tasks_router = Router(tags=["training"])


class TaskFilter(Schema):
    team: str | None = None
    status: TrainingTask.Status | None = None


@tasks_router.post("/training/tasks", response={201: TrainingTaskOut, **ERRORS})
def task_create(request, payload: TrainingTaskIn):
    task = services.training_task_create(user=principal(request), team=payload.team, name=payload.name,
                                         base_model=payload.base_model, train_version=payload.train_version,
                                         validation_version=payload.validation_version, params=payload.params,
                                         priority=payload.priority)
    return Status(201, TrainingTaskOut.from_task(task))


@tasks_router.get("/training/tasks", response=list[TrainingTaskOut])
@paginate(Pagination)
def task_list(request, filters: Query[TaskFilter]):
    qs = services.training_task_list(user=principal(request), team=filters.team, status=filters.status)
    return [TrainingTaskOut.from_task(t) for t in qs.prefetch_related("adapters").select_related("created_by")]


@tasks_router.get("/training/tasks/{ref}", response={200: TrainingTaskOut, **ERRORS})
def task_detail(request, ref: str):
    return TrainingTaskOut.from_task(services.training_task_get(user=principal(request), ref=ref))


def _control(request, ref: str, action):
    who = principal(request)
    task = services.training_task_get(user=who, ref=ref)
    return TrainingTaskOut.from_task(action(user=who, task=task))


@tasks_router.post("/training/tasks/{ref}/cancel", response={200: TrainingTaskOut, **ERRORS})
def task_cancel(request, ref: str):
    return _control(request, ref, services.training_task_cancel)


@tasks_router.post("/training/tasks/{ref}/pause", response={200: TrainingTaskOut, **ERRORS})
def task_pause(request, ref: str):
    return _control(request, ref, services.training_task_pause)


@tasks_router.post("/training/tasks/{ref}/resume", response={200: TrainingTaskOut, **ERRORS})
def task_resume(request, ref: str):
    return _control(request, ref, services.training_task_resume)


@tasks_router.post("/training/tasks/{ref}/retry", response={200: TrainingTaskOut, **ERRORS})
def task_retry(request, ref: str):
    return _control(request, ref, services.training_task_retry)


@tasks_router.post("/training/tasks/{ref}/clone", response={201: TrainingTaskOut, **ERRORS})
def task_clone(request, ref: str, payload: CloneIn):
    who = principal(request)
    task = services.training_task_get(user=who, ref=ref)
    clone = services.training_task_clone(user=who, task=task, name=payload.name, params=payload.params)
    return Status(201, TrainingTaskOut.from_task(clone))


@tasks_router.get("/training/tasks/{ref}/events", response={200: EventPage, **ERRORS})
def task_events(request, ref: str, after: int | None = None, limit: int = 100):
    task = services.training_task_get(user=principal(request), ref=ref)
    rows, has_more = services.training_events_page(task=task, after=after, limit=limit)
    return {"items": rows, "has_more": has_more, "next_after": rows[-1].id if rows else after}


@tasks_router.get("/training/tasks/{ref}/checkpoints", response={200: list[CheckpointOut], **ERRORS})
def task_checkpoints(request, ref: str):
    from pathlib import Path

    from training.checkpoints import checkpoint_problem

    task = services.training_task_get(user=principal(request), ref=ref)
    return [{"id": c.pk, "step": c.step, "metrics": c.metrics, "created_at": c.created_at,
             "usable": checkpoint_problem(Path(c.path)) is None} for c in task.checkpoints.order_by("step")]


class AdapterFilter(Schema):
    team: str | None = None
    base_model: str | None = None
    kind: Adapter.Kind | None = None


@tasks_router.get("/adapters", response=list[AdapterOut])
@paginate(Pagination)
def adapter_list(request, filters: Query[AdapterFilter]):
    return services.adapter_list(user=principal(request), team=filters.team, base_model=filters.base_model,
                                 kind=filters.kind)


@tasks_router.get("/adapters/{ref}", response={200: AdapterOut, **ERRORS})
def adapter_detail(request, ref: str):
    return services.adapter_get(user=principal(request), ref=ref)


@tasks_router.post("/adapters/{ref}/archive", response={200: AdapterOut, **ERRORS})
def adapter_archive(request, ref: str):
    who = principal(request)
    return services.adapter_archive(user=who, adapter=services.adapter_get(user=who, ref=ref))


@tasks_router.get("/adapters/{ref}/download", response={200: None, **ERRORS})
def adapter_download(request, ref: str):
    adapter = services.adapter_get(user=principal(request), ref=ref)
    response = StreamingHttpResponse(services.adapter_zip_stream(adapter), content_type="application/zip")
    response["Content-Disposition"] = f'attachment; filename="{adapter.name}.zip"'
    return response
