"""/api/ endpoints for training tasks and adapters."""

# No `from __future__ import annotations` here: ninja resolves Query[...] and response types at import.
from pathlib import Path

from django.http import HttpResponse, StreamingHttpResponse
from ninja import Query, Router, Schema, Status
from ninja.pagination import paginate
from pydantic import Field

from accounts.auth import principal
from core.errors import ApplicationError
from core.pagination import Mapped, Pagination
from core.schemas import ERRORS
from jobs.api import add_job_routes
from ml.train.checkpoints import checkpoint_problem
from training import lifecycle, recipes, services
from training.models import Adapter, TrainingTask
from training.schemas import (
    AdapterEventOut,
    AdapterOut,
    CheckpointOut,
    CloneIn,
    LineageOut,
    MergeIn,
    MergeJobOut,
    NoteIn,
    PromoteIn,
    ReproduceIn,
    ReproduceOut,
    TrainingTaskIn,
    TrainingTaskOut,
)

router = Router(tags=["training"])


class TaskFilter(Schema):
    team: str | None = None
    status: TrainingTask.Status | None = None


@router.post("/training/tasks", response={201: TrainingTaskOut, **ERRORS})
def task_create(request, payload: TrainingTaskIn):
    if payload.config is not None:
        task = recipes.training_recipe_task_create(
            user=principal(request), config=payload.config, team=payload.team, name=payload.name,
            base_model=payload.base_model, train_version=payload.train_version,
            validation_version=payload.validation_version, params=payload.params, priority=payload.priority or None,
            evaluate=payload.evaluate or None, evaluation_metrics=payload.evaluation_metrics)
        return Status(201, TrainingTaskOut.from_task(task))
    for name in ("base_model", "train_version"):
        if getattr(payload, name) is None:
            raise ApplicationError(f"{name}: required (or give a recipe in config).", code="invalid_parameter",
                                   param=name)
    task = services.training_task_create(user=principal(request), team=payload.team, name=payload.name,
                                         base_model=payload.base_model, train_version=payload.train_version,
                                         validation_version=payload.validation_version, params=payload.params,
                                         priority=payload.priority, evaluate=payload.evaluate,
                                         evaluation_metrics=payload.evaluation_metrics,
                                         requirements=payload.requirements, method=payload.method,
                                         start_adapter=payload.start_adapter)
    return Status(201, TrainingTaskOut.from_task(task))


@router.get("/training/tasks", response=list[TrainingTaskOut])
@paginate(Pagination)
def task_list(request, filters: Query[TaskFilter]):
    qs = services.training_task_list(user=principal(request), team=filters.team, status=filters.status)
    # The page is cut in SQL (Mapped), through the (team, -created_at) index: related rows come in a constant
    # number of prefetch queries, since joining the small team and base-model tables first made the database
    # sort every task of the team for each page.
    qs = qs.select_related(None).prefetch_related("adapters", "team", "base_model", "created_by")
    return Mapped(qs, lambda task: TrainingTaskOut.from_task(task, waiting=False))


@router.get("/training/tasks/{ref}", response={200: TrainingTaskOut, **ERRORS})
def task_detail(request, ref: str):
    return TrainingTaskOut.from_task(services.training_task_get(user=principal(request), ref=ref))


@router.get("/training/tasks/{ref}/recipe", response={200: None, **ERRORS})
def task_recipe(request, ref: str):
    """The YAML recipe that reproduces the task (POST it back as ``config``, or ``start_training --config``)."""
    who = principal(request)
    task = services.training_task_get(user=who, ref=ref)
    response = HttpResponse(recipes.training_recipe_export(user=who.user, task=task), content_type="application/yaml")
    response["Content-Disposition"] = f'attachment; filename="{task.name}.yaml"'
    return response


add_job_routes(router, path="/training/tasks", name="training_task", out=TrainingTaskOut.from_task,
               get=lambda *, user, ref: services.training_task_get(user=user, ref=ref), schema=TrainingTaskOut)


@router.post("/training/tasks/{ref}/clone", response={201: TrainingTaskOut, **ERRORS})
def task_clone(request, ref: str, payload: CloneIn):
    who = principal(request)
    task = services.training_task_get(user=who, ref=ref)
    clone = services.training_task_clone(user=who, task=task, name=payload.name, params=payload.params)
    return Status(201, TrainingTaskOut.from_task(clone))


@router.get("/training/tasks/{ref}/checkpoints", response={200: list[CheckpointOut], **ERRORS})
def task_checkpoints(request, ref: str):
    task = services.training_task_get(user=principal(request), ref=ref)
    return [{"id": c.pk, "step": c.step, "metrics": c.metrics, "created_at": c.created_at,
             "usable": checkpoint_problem(Path(c.path)) is None} for c in task.checkpoints.order_by("step")]


class AdapterFilter(Schema):
    team: str | None = None
    base_model: str | None = None
    kind: Adapter.Kind | None = None


@router.get("/adapters", response=list[AdapterOut])
@paginate(Pagination)
def adapter_list(request, filters: Query[AdapterFilter]):
    return services.adapter_list(user=principal(request), team=filters.team, base_model=filters.base_model,
                                 kind=filters.kind)


@router.get("/adapters/{ref}", response={200: AdapterOut, **ERRORS})
def adapter_detail(request, ref: str):
    return services.adapter_get(user=principal(request), ref=ref)


def _adapter_action(request, ref: str, action, **kwargs):
    who = principal(request)
    return action(user=who, adapter=services.adapter_get(user=who, ref=ref), **kwargs)


@router.post("/adapters/{ref}/promote", response={200: AdapterOut, **ERRORS})
def adapter_promote(request, ref: str, payload: PromoteIn):
    """Change the stage (draft, candidate, production). Production needs the approval of a team admin who is
    not the author: such an admin's promote is the approval; anyone else's is recorded as a request."""
    return _adapter_action(request, ref, lifecycle.adapter_promote, stage=payload.stage, note=payload.note)


@router.post("/adapters/{ref}/approve", response={200: AdapterOut, **ERRORS})
def adapter_approve(request, ref: str, payload: NoteIn):
    """A team admin who is not the author puts a candidate into production (the previous one becomes candidate)."""
    return _adapter_action(request, ref, lifecycle.adapter_approve, note=payload.note)


@router.post("/adapters/{ref}/archive", response={200: AdapterOut, **ERRORS})
def adapter_archive(request, ref: str):
    return _adapter_action(request, ref, lifecycle.adapter_archive)


@router.post("/adapters/{ref}/restore", response={200: AdapterOut, **ERRORS})
def adapter_restore(request, ref: str):
    return _adapter_action(request, ref, lifecycle.adapter_restore)


@router.delete("/adapters/{ref}", response={200: AdapterOut, **ERRORS})
def adapter_delete(request, ref: str):
    """Delete the adapter's files (409 while a job uses it); the row stays, archived, with its history."""
    return _adapter_action(request, ref, lifecycle.adapter_delete)


def _zip_response(filename: str, stream) -> StreamingHttpResponse:
    response = StreamingHttpResponse(stream, content_type="application/zip")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


@router.get("/adapters/{ref}/download", response={200: None, **ERRORS})
def adapter_download(request, ref: str):
    """The adapter folder as a zip, with a README.md model card (same as /export)."""
    return _zip_response(*_adapter_action(request, ref, lifecycle.adapter_export))


@router.get("/adapters/{ref}/export", response={200: None, **ERRORS})
def adapter_export(request, ref: str):
    """The adapter folder as a zip, with a README.md model card (base, data hash, parameters, metrics)."""
    return _zip_response(*_adapter_action(request, ref, lifecycle.adapter_export))


class OllamaQuery(Schema):
    base: str | None = Field(None, alias="from", description="FROM line: a path or an Ollama model name "
                                                              "(default: the base model's folder).")
    name: str | None = Field(None, description="Model name for `ollama create` (default: the adapter's).")
    temperature: float | None = None


@router.get("/adapters/{ref}/ollama", response={200: None, **ERRORS})
def adapter_ollama(request, ref: str, query: Query[OllamaQuery]):
    """An Ollama bundle: Modelfile (FROM, ADAPTER ./adapter, TEMPLATE, PARAMETERs), the adapter and a README."""
    return _zip_response(*_adapter_action(request, ref, lifecycle.adapter_ollama_bundle, from_ref=query.base,
                                          name=query.name, temperature=query.temperature))


@router.post("/adapters/{ref}/merge", response={201: MergeJobOut, **ERRORS})
def adapter_merge(request, ref: str, payload: MergeIn):
    """Queue a merge of the adapter into its base model; the result registers as a new base model."""
    job = _adapter_action(request, ref, lifecycle.adapter_merge, name=payload.name, priority=payload.priority)
    return Status(201, MergeJobOut.from_job(job))


@router.get("/adapters/{ref}/lineage", response={200: LineageOut, **ERRORS})
def adapter_lineage(request, ref: str):
    """Dataset version -> task (params, versions, seed, device, duration) -> adapter -> evaluations -> exports."""
    return _adapter_action(request, ref, lifecycle.adapter_lineage)


@router.get("/adapters/{ref}/events", response={200: list[AdapterEventOut], **ERRORS})
def adapter_events(request, ref: str):
    return _adapter_action(request, ref, lifecycle.adapter_lineage)["events"]


@router.post("/adapters/{ref}/reproduce", response={201: ReproduceOut, **ERRORS})
def adapter_reproduce(request, ref: str, payload: ReproduceIn):
    """Clone the task that trained the adapter with identical inputs (data version, base, params, seed)."""
    task = _adapter_action(request, ref, lifecycle.adapter_reproduce, name=payload.name)
    kind = "training" if isinstance(task, TrainingTask) else "classifier"
    return Status(201, {"kind": kind, "id": task.pk, "name": task.name, "status": task.status})


@router.get("/merges", response=list[MergeJobOut])
@paginate(Pagination)
def merge_list(request):
    return Mapped(lifecycle.merge_job_list(user=principal(request)).select_related("created_by"), MergeJobOut.from_job)


@router.get("/merges/{job_id}", response={200: MergeJobOut, **ERRORS})
def merge_detail(request, job_id: int):
    return MergeJobOut.from_job(lifecycle.merge_job_get(user=principal(request), ref=job_id))
