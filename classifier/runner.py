"""The classifier job's child-process body: runs ``classifier.recipe`` and writes what it reports to our rows.

Registered as the ``classifier`` job kind on the shared machinery (``training.jobs``): the same queue, claim,
supervised child process, heartbeat, cancel/pause flags and crash recovery as training tasks.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from classifier.models import ClassifierEvent, ClassifierTask
from training import jobs
from training.model_scan import folder_size
from training.models import Adapter, EventLevel, JobStatus
from training.runner import SAFE, DbHooks, data_path

log = logging.getLogger(__name__)


class ClassifierHooks(DbHooks):
    """Training's DB hooks; checkpoints live on disk only (the newest good one is found by scanning)."""

    def on_checkpoint(self, step: int, path: Path, metrics: dict) -> None:
        self.ctx.event(f"Checkpoint saved at step {step}.", data={"step": step, "path": str(path)})


def adapter_dir_for(task: ClassifierTask) -> Path:
    stamp = timezone.now().strftime("%Y%m%d-%H%M%S")
    return Path(settings.DATA_DIR) / "adapters" / f"{SAFE.sub('_', task.name)}_{stamp}"


def register_adapter(task: ClassifierTask, folder: Path, *, metrics: dict, label_map: dict,
                     trainable: int) -> Adapter:
    from training.services import adapter_unique_name

    config = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
    keep = ("r", "lora_alpha", "lora_dropout", "target_modules", "modules_to_save", "task_type", "bias",
            "peft_type", "base_model_name_or_path")
    return Adapter.objects.create(
        name=adapter_unique_name(task.team, task.name), team=task.team, created_by=task.created_by,
        kind=Adapter.Kind.CLASSIFIER, base_model=task.base_model, task=None, path=str(folder),
        lora_config={k: config.get(k) for k in keep if k in config}, trainable_parameters=trainable,
        size_bytes=folder_size(folder), metrics={**metrics, "classifier_task_id": task.pk}, label_map=label_map)


def run_classifier_job(task: ClassifierTask, ctx: jobs.JobContext) -> None:
    from classifier.recipe import ClassifierSpec, label_map_to_json, train_classifier
    from training.errors import TrainingError, classify

    spec = ClassifierSpec(
        base_model_path=task.base_model.path,
        train=data_path(task.train_version),
        validation=data_path(task.validation_version) if task.validation_version_id else None,
        params=task.params or {},
        run_dir=jobs.run_dir(task),
        adapter_dir=adapter_dir_for(task),
        resume_from=task.resume_from or None,
        device=getattr(settings, "TRAINING_DEVICE", "auto"),
        summary_extra={"task": {"id": task.pk, "name": task.name, "team": task.team.name, "kind": "classifier"},
                       "dataset": {"train_version": task.train_version_id, "train_sha256": task.train_version.sha256,
                                   "validation_version": task.validation_version_id}},
    )
    try:
        result = train_classifier(spec, ClassifierHooks(ctx))
    except jobs.LostClaim:
        raise
    except TrainingError as exc:
        _fail(ctx, exc.code, exc.message)
        return
    except Exception as exc:  # anything unforeseen still ends as a classified failure, never a stuck row
        err = classify(exc)
        log.exception("classifier task %s failed", task.pk)
        _fail(ctx, err.code, err.message)
        return

    common = {"step": result.global_step, "total_steps": result.total_steps, "epoch": round(result.epoch, 4),
              "metrics": {**(task.metrics or {}), **result.metrics}, "resolved_params": result.params.to_dict(),
              "label_map": label_map_to_json(result.label_map), "library_versions": result.versions,
              "device": result.device, "seed": result.params.seed,
              "trainable_parameters": result.trainable_parameters, "total_parameters": result.total_parameters}
    if result.status == "succeeded":
        with transaction.atomic():
            adapter = register_adapter(task, result.adapter_dir,
                                       metrics={**result.metrics, "max_seq_length": result.params.max_seq_length},
                                       label_map=common["label_map"], trainable=result.trainable_parameters)
            ctx.finish(JobStatus.SUCCEEDED, eta_seconds=None, report=result.report, adapter=adapter, **common)
        ctx.event(f"Succeeded: adapter {adapter.name}; best epoch {result.best_epoch}, accuracy "
                  f"{result.metrics['accuracy']:.3f}, macro-F1 {result.metrics['macro_f1']:.3f}.")
    elif result.status == "paused":
        ctx.finish(JobStatus.PAUSED, resume_from=str(result.checkpoint or ""), **common)
        ctx.event(f"Paused at step {result.global_step}" +
                  (f"; will resume from {Path(result.checkpoint).name}." if result.checkpoint else "."))
    else:
        ctx.finish(JobStatus.CANCELLED, **common)
        ctx.event(f"Cancelled at step {result.global_step}.", level=EventLevel.INFO)


def _fail(ctx: jobs.JobContext, code: str, message: str) -> None:
    ctx.finish(JobStatus.FAILED, error_code=code, error_message=message, eta_seconds=None)
    ctx.event(f"Failed: {message}", level=EventLevel.ERROR, data={"code": code})


def latest_checkpoint(task: ClassifierTask) -> str | None:
    from training.checkpoints import latest_good_checkpoint

    path = latest_good_checkpoint(jobs.run_dir(task))
    return str(path) if path else None


jobs.register(jobs.JobKind(name="classifier", model=ClassifierTask, event_model=ClassifierEvent, event_fk="task",
                           run=run_classifier_job, latest_checkpoint=latest_checkpoint))
