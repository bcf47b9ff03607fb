"""Business rules for classifier tasks and predictions.

The queue, the claim, the supervised child, cancel/pause/resume/retry and crash recovery are the shared
machinery of ``training.jobs``; these services only add the classifier's own checks.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from accounts.models import Team
from accounts.visibility import get_visible, require_write, resolve_team, visible_to
from core.errors import ApplicationError, Conflict, NotFound
from training import job_services
from training.models import Adapter, BaseModel


def _version(user, ref, *, param: str):
    from datasets_app.models import DatasetVersion
    from training.services import can_read_version

    if isinstance(ref, DatasetVersion):
        if not can_read_version(user, ref):
            raise NotFound("Dataset version not found.", code="dataset_not_found", param=param)
        return ref
    from datasets_app.services import dataset_version_get

    try:
        return dataset_version_get(user=user, ref=ref)
    except NotFound:
        raise NotFound(f"Dataset {ref!r} not found.", code="dataset_not_found", param=param) from None


def _labels_of(version, *, team: Team, param: str) -> Counter:
    """Check a version can train/validate a classifier; returns its label counts."""
    from datasets_app.services import iter_records

    if version.dataset.team_id != team.pk:
        raise ApplicationError(f"Dataset version {version.pk} belongs to another team.", code="invalid_dataset",
                               param=param)
    if not version.is_ready:
        raise ApplicationError(f"Dataset version {version.ref} failed validation and cannot be used.",
                               code="invalid_dataset", param=param)
    if version.kind != "classification":
        raise ApplicationError(f"Dataset format {version.format!r} cannot train a classifier; upload "
                               "classification data ({\"text\": ..., \"label\": ...} per line).",
                               code="invalid_dataset", param=param)
    return Counter(str(r.get("label")) for r in iter_records(version))


def _unique_task_name(team: Team, name: str) -> str:
    from classifier.models import ClassifierTask

    if not ClassifierTask.objects.filter(team=team, name=name).exists():
        return name
    n = 2
    while ClassifierTask.objects.filter(team=team, name=f"{name}-{n}").exists():
        n += 1
    return f"{name}-{n}"


def validated_params(params: dict | None):
    from classifier.params import InvalidParams, validate_params

    try:
        return validate_params(params)
    except InvalidParams as exc:
        raise ApplicationError(exc.message, code="invalid_parameter", param=exc.field or "params",
                               details=[{"param": ".".join(str(p) for p in e.get("loc", ())),
                                         "message": e.get("msg")} for e in exc.errors] or None) from None


def classifier_task_create(*, user, name: str | None, base_model: BaseModel | str | int, train_version,
                           validation_version=None, params: dict | None = None, team: Team | str | None = None,
                           priority: int = 0):
    """Validate synchronously (model kind, data, labels, hyperparameters), create a queued task, wake a worker."""
    from classifier.models import ClassifierTask
    from classifier.recipe import label_map_from, label_map_to_json, stratified_split
    from training import jobs
    from training.models import JobStatus
    from training.services import base_model_get

    team = resolve_team(user, team)
    model = base_model_get(user=user, ref=base_model.pk if isinstance(base_model, BaseModel) else base_model,
                           kind=BaseModel.Kind.ENCODER)
    resolved = validated_params(params)
    train = _version(user, train_version, param="train_version")
    validation = None
    if validation_version not in (None, ""):
        validation = _version(user, validation_version, param="validation_version")
    if not isinstance(priority, int) or not -100 <= priority <= 100:
        raise ApplicationError("priority must be an integer from -100 to 100.", code="invalid_parameter",
                               param="priority")
    counts = _labels_of(train, team=team, param="train_version")
    if len(counts) < 2:
        raise ApplicationError(f"A classifier needs at least two labels; {train.ref} has {len(counts)}.",
                               code="invalid_dataset", param="train_version")
    if validation is not None:
        unknown = sorted(set(_labels_of(validation, team=team, param="validation_version")) - set(counts))
        if unknown:
            raise ApplicationError(f"The validation data has labels the training data lacks: {unknown}.",
                                   code="invalid_dataset", param="validation_version")
        n_train = sum(counts.values())
    else:
        rows = [{"label": label} for label, n in counts.items() for _ in range(n)]
        n_train = len(stratified_split(rows, val_ratio=resolved.val_ratio, seed=resolved.seed)[0])
        if n_train == len(rows):
            raise ApplicationError("Too few examples per label to hold out a validation split: add a validation "
                                   "set or more examples.", code="invalid_dataset", param="train_version")
    name = (name or "").strip() or f"{model.name}-{train.dataset.name}"
    if len(name) > 180:
        raise ApplicationError("name is longer than 180 characters.", code="invalid_parameter", param="name")

    label_map = label_map_to_json(label_map_from([{"label": label} for label in counts]))
    now = timezone.now()
    with transaction.atomic():
        task = ClassifierTask.objects.create(
            name=_unique_task_name(team, name), team=team, created_by=getattr(user, "user", user),
            base_model=model, train_version=train, validation_version=validation, params=params or {},
            resolved_params=resolved.to_dict(), label_map=label_map, priority=priority, seed=resolved.seed,
            total_steps=math.ceil(n_train / resolved.batch_size) * resolved.n_epochs,
            status=JobStatus.QUEUED, queued_at=now)
        jobs.add_event(task, f"Created: {sum(counts.values())} examples, labels "
                             f"{', '.join(f'{k} ({v})' for k, v in sorted(counts.items()))}; {resolved.n_epochs} "
                             f"epochs, lr {resolved.learning_rate:g}, LoRA r={resolved.lora_r}.")
        jobs.enqueue(task)
    return task


def classifier_task_list(*, user, team: str | None = None, status: str | None = None):
    from classifier.models import ClassifierTask

    qs = visible_to(user, ClassifierTask.objects.all()).select_related("team", "base_model", "created_by", "adapter")
    if team:
        qs = qs.filter(team__name=team)
    if status:
        qs = qs.filter(status=status)
    return qs


def classifier_task_get(*, user, ref: str | int, for_update: bool = False):
    from classifier.models import ClassifierTask

    lookup = {"pk": int(ref)} if isinstance(ref, int) or str(ref).isdigit() else {"name": str(ref)}
    try:
        task = get_visible(user, ClassifierTask.objects.select_related("team", "base_model", "adapter"), **lookup)
    except NotFound:
        raise NotFound(f"Classifier task {ref!r} not found.", code="task_not_found") from None
    except ClassifierTask.MultipleObjectsReturned:
        raise ApplicationError(f"Several tasks are named {ref!r}: use the id.", code="ambiguous_name") from None
    if for_update:
        require_write(user, task)
    return task


def classifier_latest_checkpoint(task) -> str | None:
    from classifier.runner import latest_checkpoint

    return latest_checkpoint(task)


def classifier_task_cancel(*, user, task):
    return job_services.job_cancel(user=user, job=task)


def classifier_task_pause(*, user, task):
    return job_services.job_pause(user=user, job=task)


def classifier_task_resume(*, user, task):
    return job_services.job_resume(user=user, job=task, checkpoint=classifier_latest_checkpoint(task))


def classifier_task_retry(*, user, task):
    """Run a failed or cancelled task again, from its last good checkpoint if it has one."""
    return job_services.job_retry(user=user, job=task, checkpoint=classifier_latest_checkpoint(task))


def classifier_events_page(*, task, after: int | None = None, limit: int = 100):
    limit = max(1, min(int(limit), 1000))
    qs = task.events.order_by("id")
    if after is not None:
        qs = qs.filter(id__gt=after)
    rows = list(qs[: limit + 1])
    return rows[:limit], len(rows) > limit


# ================================================================================================ predictions

def max_batch() -> int:
    return int(getattr(settings, "CLASSIFIER_MAX_BATCH", 64))


def classifier_adapter_get(*, user, ref: str | int) -> Adapter:
    """A classifier adapter the user can see (another team's reads as missing: 404)."""
    from training.services import adapter_get

    adapter = adapter_get(user=user, ref=ref)
    if adapter.kind != Adapter.Kind.CLASSIFIER:
        raise ApplicationError(f"Adapter {adapter.name!r} is a {adapter.kind} adapter, not a classifier.",
                               code="wrong_adapter_kind", param="adapter")
    if adapter.status != Adapter.Status.READY:
        raise Conflict(f"Adapter {adapter.name!r} is {adapter.status}.", code="adapter_archived", param="adapter")
    return adapter


def clean_texts(texts) -> list[str]:
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, list | tuple) or not texts:
        raise ApplicationError("Send one text or a non-empty list of texts.", code="invalid_parameter", param="texts")
    limit = max_batch()
    if len(texts) > limit:
        raise ApplicationError(f"{len(texts)} texts in one request; at most {limit} (CLASSIFIER_MAX_BATCH).",
                               code="batch_too_large", param="texts")
    for i, text in enumerate(texts):
        if not isinstance(text, str) or not text.strip():
            raise ApplicationError(f"Text {i} is empty.", code="empty_text", param=f"texts.{i}")
    return list(texts)


def classifier_predict(*, user, adapter: Adapter | str | int, texts) -> list[dict]:
    """label, confidence and per-class probabilities for each text, in order."""
    from classifier import predict

    if not isinstance(adapter, Adapter):
        adapter = classifier_adapter_get(user=user, ref=adapter)
    else:
        adapter = classifier_adapter_get(user=user, ref=adapter.pk)
    texts = clean_texts(texts)
    if not Path(adapter.path).is_dir():
        raise NotFound("The adapter's files are missing on disk.", code="adapter_files_missing", param="adapter")
    return predict.classify(adapter, texts)
