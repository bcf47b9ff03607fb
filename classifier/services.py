"""Business rules for classifier tasks and predictions.

The queue, the claim, the supervised child, cancel/pause/resume/retry and crash recovery are the shared
machinery of ``jobs``; these services only add the classifier's own checks.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from accounts.models import Team
from accounts.visibility import Actor, acting_user, resolve_team, visible_to
from catalog.models import BaseModel
from catalog.services import base_model_get
from classifier import predict
from classifier.models import ClassifierTask
from core.errors import ApplicationError, Conflict, NotFound
from datasets_app.models import DatasetVersion
from datasets_app.services import dataset_version_get, iter_records
from jobs import runtime
from jobs.models import JobStatus
from jobs.services import job_check_name, job_check_priority, job_check_quota, job_get, unique_name
from ml.classifier_data import label_map_from, label_map_to_json, stratified_split
from ml.classifier_params import ClassifierParams, InvalidParams, validate_params
from ml.train.checkpoints import latest_good_checkpoint
from training.models import Adapter
from training.services import adapter_get


def _version(user: Actor, ref: object, *, param: str) -> DatasetVersion:
    try:
        return dataset_version_get(user=user, ref=ref)
    except NotFound:
        raise NotFound(f"Dataset {ref!r} not found.", code="dataset_not_found", param=param) from None


def _labels_of(version, *, team: Team, param: str) -> Counter:
    """Check a version can train/validate a classifier; returns its label counts."""
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


def validated_params(params: dict | None) -> ClassifierParams:
    try:
        return validate_params(params)
    except InvalidParams as exc:
        raise ApplicationError(exc.message, code="invalid_parameter", param=exc.field or "params",
                               details=[{"param": ".".join(str(p) for p in e.get("loc", ())),
                                         "message": e.get("msg")} for e in exc.errors] or None) from None


def classifier_task_create(*, user: Actor, name: str | None, base_model: BaseModel | str | int, train_version,
                           validation_version=None, params: dict | None = None, team: Team | str | None = None,
                           priority: int = 0) -> ClassifierTask:
    """Validate synchronously (model kind, data, labels, hyperparameters), create a queued task, wake a worker."""
    team = resolve_team(user, team)
    model = base_model_get(user=user, ref=base_model.pk if isinstance(base_model, BaseModel) else base_model,
                           kind=BaseModel.Kind.ENCODER)
    resolved = validated_params(params)
    train = _version(user, train_version, param="train_version")
    validation = None
    if validation_version not in (None, ""):
        validation = _version(user, validation_version, param="validation_version")
    priority = job_check_priority(priority)
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
    name = job_check_name((name or "").strip() or f"{model.name}-{train.dataset.name}")

    label_map = label_map_to_json(label_map_from([{"label": label} for label in counts]))
    now = timezone.now()
    with transaction.atomic():
        job_check_quota(team)
        task = ClassifierTask.objects.create(
            name=unique_name(ClassifierTask, team, name), team=team, created_by=acting_user(user),
            base_model=model, train_version=train, validation_version=validation, params=params or {},
            resolved_params=resolved.to_dict(), label_map=label_map, priority=priority, seed=resolved.seed,
            total_steps=math.ceil(n_train / resolved.batch_size) * resolved.n_epochs,
            status=JobStatus.QUEUED, queued_at=now)
        runtime.add_event(task, f"Created: {sum(counts.values())} examples, labels "
                             f"{', '.join(f'{k} ({v})' for k, v in sorted(counts.items()))}; {resolved.n_epochs} "
                             f"epochs, lr {resolved.learning_rate:g}, LoRA r={resolved.lora_r}.")
        runtime.enqueue(task)
    return task


def classifier_task_list(*, user: Actor, team: str | None = None, status: str | None = None
                         ) -> QuerySet[ClassifierTask]:
    qs = visible_to(user, ClassifierTask.objects.all()).select_related("team", "base_model", "created_by", "adapter")
    if team:
        qs = qs.filter(team__name=team)
    if status:
        qs = qs.filter(status=status)
    return qs


def classifier_task_get(*, user: Actor, ref: str | int, for_update: bool = False) -> ClassifierTask:
    return job_get(user=user, queryset=ClassifierTask.objects.select_related("team", "base_model", "adapter"),
                   ref=ref, code="task_not_found", label="Classifier task", for_update=for_update)


def classifier_task_latest_checkpoint(task: ClassifierTask) -> str | None:
    """Classifier checkpoints live on disk only: the newest complete one in the run folder."""
    path = latest_good_checkpoint(runtime.run_dir(task))
    return str(path) if path else None


def classifier_task_reproduce(*, user: Actor, job: ClassifierTask, name: str | None = None) -> ClassifierTask:
    """The ``reproduce`` of the classifier kind: the same inputs, parameters and seed, a new run."""
    params = dict(job.params or {})
    if "seed" not in params and job.seed is not None:
        params["seed"] = job.seed
    return classifier_task_create(user=user, team=job.team, name=name or f"{job.name}-repro",
                                  base_model=job.base_model, train_version=job.train_version,
                                  validation_version=job.validation_version, params=params, priority=job.priority)


# ================================================================================================ predictions

def classifier_adapter_get(*, user: Actor, ref: str | int) -> Adapter:
    """A classifier adapter the user can see (another team's reads as missing: 404)."""
    adapter = adapter_get(user=user, ref=ref)
    if adapter.kind != Adapter.Kind.CLASSIFIER:
        raise ApplicationError(f"Adapter {adapter.name!r} is a {adapter.kind} adapter, not a classifier.",
                               code="wrong_adapter_kind", param="adapter")
    if adapter.status != Adapter.Status.READY:
        raise Conflict(f"Adapter {adapter.name!r} is {adapter.status}.", code="adapter_archived", param="adapter")
    return adapter


def _clean_texts(texts: object) -> list[str]:
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, list | tuple) or not texts:
        raise ApplicationError("Send one text or a non-empty list of texts.", code="invalid_parameter", param="texts")
    limit = settings.CLASSIFIER_MAX_BATCH
    if len(texts) > limit:
        raise ApplicationError(f"{len(texts)} texts in one request; at most {limit} (CLASSIFIER_MAX_BATCH).",
                               code="batch_too_large", param="texts")
    for i, text in enumerate(texts):
        if not isinstance(text, str) or not text.strip():
            raise ApplicationError(f"Text {i} is empty.", code="empty_text", param=f"texts.{i}")
    return list(texts)


def classifier_predict(*, user: Actor, adapter: Adapter | str | int, texts) -> list[dict]:
    """label, confidence and per-class probabilities for each text, in order."""
    if not isinstance(adapter, Adapter):
        adapter = classifier_adapter_get(user=user, ref=adapter)
    else:
        adapter = classifier_adapter_get(user=user, ref=adapter.pk)
    texts = _clean_texts(texts)
    if not Path(adapter.path).is_dir():
        raise NotFound("The adapter's files are missing on disk.", code="adapter_files_missing", param="adapter")
    return predict.classify(adapter, texts)
