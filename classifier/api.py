"""/api/classifier/ endpoints: classifier tasks (shared job machinery) and predictions."""

# No `from __future__ import annotations` here: ninja resolves Query[...] and response types at import.
from ninja import Query, Router, Schema, Status
from ninja.pagination import paginate

from accounts.auth import principal
from classifier import services
from classifier.models import ClassifierTask
from classifier.schemas import ClassifierTaskIn, ClassifierTaskOut, PredictIn, PredictOut
from core.pagination import Mapped, Pagination
from core.schemas import ERRORS
from jobs.api import add_job_routes

router = Router(tags=["classifier"])


class TaskFilter(Schema):
    team: str | None = None
    status: ClassifierTask.Status | None = None


@router.post("/classifier/tasks", response={201: ClassifierTaskOut, **ERRORS})
def task_create(request, payload: ClassifierTaskIn):
    task = services.classifier_task_create(user=principal(request), team=payload.team, name=payload.name,
                                           base_model=payload.base_model, train_version=payload.train_version,
                                           validation_version=payload.validation_version, params=payload.params,
                                           priority=payload.priority)
    return Status(201, ClassifierTaskOut.from_task(task))


@router.get("/classifier/tasks", response=list[ClassifierTaskOut])
@paginate(Pagination)
def task_list(request, filters: Query[TaskFilter]):
    qs = services.classifier_task_list(user=principal(request), team=filters.team, status=filters.status)
    return Mapped(qs, lambda task: ClassifierTaskOut.from_task(task, waiting=False))  # the page is cut in SQL


@router.get("/classifier/tasks/{ref}", response={200: ClassifierTaskOut, **ERRORS})
def task_detail(request, ref: str):
    return ClassifierTaskOut.from_task(services.classifier_task_get(user=principal(request), ref=ref))


add_job_routes(router, path="/classifier/tasks", name="classifier_task", out=ClassifierTaskOut.from_task,
               get=lambda *, user, ref: services.classifier_task_get(user=user, ref=ref), schema=ClassifierTaskOut)


@router.post("/classifier/{adapter_id}/predict", response={200: PredictOut, **ERRORS})
def predict(request, adapter_id: str, payload: PredictIn):
    """Classify one text (``{"text": ...}``) or a batch (``{"texts": [...]}``, at most CLASSIFIER_MAX_BATCH)."""
    who = principal(request)
    adapter = services.classifier_adapter_get(user=who, ref=adapter_id)
    texts = payload.texts if payload.texts is not None else payload.text
    return {"adapter_id": adapter.pk, "adapter": adapter.name,
            "predictions": services.classifier_predict(user=who, adapter=adapter, texts=texts)}
