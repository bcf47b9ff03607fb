"""The training job's child-process body: runs the recipe and writes what it reports to our rows.

Registered as the ``training`` job kind; ``training.jobs`` spawns ``manage.py run_job training <id>``,
which lands in ``run_training_job``.
"""

from __future__ import annotations

import json
import logging
import re
import time
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from training import jobs
from training.hooks import NullHooks
from training.model_scan import folder_size
from training.models import (
    Adapter,
    Checkpoint,
    EventLevel,
    EventType,
    JobStatus,
    MergeEvent,
    MergeJob,
    TrainingEvent,
    TrainingTask,
)

log = logging.getLogger(__name__)
SAFE = re.compile(r"[^A-Za-z0-9._-]+")
LEVELS = {"warning": EventLevel.WARN, "warn": EventLevel.WARN, "error": EventLevel.ERROR}
# Progress rows are written at most this often (every step on a fast GPU would be a write storm).
PROGRESS_INTERVAL = 1.0


def metrics_message(step: int, total: int, metrics: dict) -> str:
    parts = []
    if metrics.get("train_loss") is not None:
        parts.append(f"training loss={metrics['train_loss']:.4f}")
    if metrics.get("valid_loss") is not None:
        parts.append(f"validation loss={metrics['valid_loss']:.4f}")
    if metrics.get("learning_rate") is not None:
        parts.append(f"lr={metrics['learning_rate']:.2e}")
    return f"Step {step}/{total}: " + ", ".join(parts)


class DbHooks(NullHooks):
    """The recipe's hooks, written to the job's rows (conditional on the run's claim)."""

    def __init__(self, ctx: jobs.JobContext) -> None:
        self.ctx = ctx
        self.task: TrainingTask = ctx.job
        self.total_steps = 0
        self._last_progress = 0.0

    def on_start(self, total_steps: int) -> None:
        self.total_steps = total_steps
        self.ctx.update(total_steps=total_steps)

    def on_progress(self, step, total_steps, epoch, tokens_seen, tokens_per_s, eta_s) -> None:
        now = time.monotonic()
        if now - self._last_progress < PROGRESS_INTERVAL and step < total_steps:
            return
        self._last_progress = now
        self.total_steps = total_steps
        self.ctx.update(step=step, total_steps=total_steps, epoch=round(epoch, 4), tokens_seen=tokens_seen,
                        tokens_per_second=round(tokens_per_s, 2), eta_seconds=eta_s)

    def on_metrics(self, step: int, metrics: dict) -> None:
        clean = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
        data = {"step": step, "total_steps": self.total_steps or self.task.total_steps, **clean}
        self.ctx.event(metrics_message(step, data["total_steps"], clean), type=EventType.METRICS, data=data)
        self.ctx.update(metrics={**(self.task.metrics or {}), **clean})

    def on_checkpoint(self, step: int, path: Path, metrics: dict) -> None:
        clean = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}

        def record() -> None:
            Checkpoint.objects.update_or_create(task=self.task, step=step,
                                                defaults={"path": str(path), "metrics": {"step": step, **clean}})
            # Rotation may have removed older folders: drop their rows so the list shows what can be resumed.
            Checkpoint.objects.filter(task=self.task).exclude(step=step).exclude(
                path__in=[str(p) for p in Path(path).parent.glob("step-*")]).delete()

        jobs.with_db_retry(record, what="recording a checkpoint")  # rides out a database restart
        self.ctx.event(f"Checkpoint saved at step {step}.", data={"step": step})

    def on_message(self, level: str, message: str, data: dict | None = None) -> None:
        self.ctx.event(message, level=LEVELS.get(level, EventLevel.INFO), data=data)

    def should_stop(self):
        return self.ctx.control()


def data_path(version) -> Path:
    path = Path(version.path)
    return path if path.is_absolute() else Path(settings.DATA_DIR) / path


def adapter_dir_for(task: TrainingTask) -> Path:
    stamp = timezone.now().strftime("%Y%m%d-%H%M%S")
    return Path(settings.DATA_DIR) / "adapters" / f"{SAFE.sub('_', task.name)}_{stamp}"


def register_adapter(task: TrainingTask, folder: Path, *, metrics: dict, trainable: int) -> Adapter:
    from training.services import adapter_unique_name

    config = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
    keep = ("r", "lora_alpha", "lora_dropout", "target_modules", "task_type", "bias", "peft_type",
            "base_model_name_or_path")
    from training.lifecycle import default_model_name

    return Adapter.objects.create(
        name=adapter_unique_name(task.team, task.name), model_name=default_model_name(task), team=task.team,
        created_by=task.created_by,
        kind=Adapter.Kind.CAUSAL_LM, base_model=task.base_model, task=task, path=str(folder),
        lora_config={k: config.get(k) for k in keep if k in config}, trainable_parameters=trainable,
        size_bytes=folder_size(folder), metrics=metrics)


def run_training_job(task: TrainingTask, ctx: jobs.JobContext) -> None:
    from training.errors import TrainingError, classify
    from training.recipe import RunSpec, run_training

    hooks = DbHooks(ctx)
    spec = RunSpec(
        base_model_path=task.base_model.path,
        train=data_path(task.train_version),
        validation=data_path(task.validation_version) if task.validation_version_id else None,
        params=task.params or {},
        run_dir=jobs.run_dir(task),
        adapter_dir=adapter_dir_for(task),
        resume_from=task.resume_from or None,
        device=getattr(settings, "TRAINING_DEVICE", "auto"),
        summary_extra={"task": {"id": task.pk, "name": task.name, "team": task.team.name},
                       "dataset": {"train_version": task.train_version_id,
                                   "train_sha256": task.train_version.sha256,
                                   "validation_version": task.validation_version_id}},
    )
    try:
        result = run_training(spec, hooks)
    except jobs.LostClaim:
        raise
    except TrainingError as exc:
        _fail(ctx, exc.code, exc.message)
        return
    except Exception as exc:  # anything unforeseen still ends as a classified failure, never a stuck row
        err = classify(exc)
        log.exception("training task %s failed", task.pk)
        _fail(ctx, err.code, err.message)
        return

    common = {"step": result.global_step, "total_steps": result.total_steps or task.total_steps,
              "metrics": {**(task.metrics or {}), **{k: v for k, v in result.metrics.items()
                                                    if isinstance(v, (int, float))}},
              "trained_tokens": result.trained_tokens, "tokens_seen": result.trained_tokens,
              "resolved_params": result.params.to_dict(), "auto_explanation": result.params.auto,
              "library_versions": result.versions,
              "device": " ".join(str(v) for v in (result.device_info.get("device"),
                                                  result.device_info.get("name")) if v) or "",
              "seed": result.params.seed}
    if result.status == "succeeded":
        trainable = int(result.metrics.get("trainable_parameters", 0)) or _trainable_from_summary(result.adapter_dir)
        def register_and_finish() -> Adapter:
            with transaction.atomic():
                registered = register_adapter(task, result.adapter_dir, metrics=common["metrics"],
                                              trainable=trainable)
                ctx.finish(JobStatus.SUCCEEDED, eta_seconds=None, **common)
            return registered

        adapter = jobs.with_db_retry(register_and_finish, what="registering the adapter")
        ctx.event(f"Succeeded: adapter {adapter.name} ({result.trained_tokens:,} tokens trained).")
        announce_adapter(task, adapter, ctx)
    elif result.status == "paused":
        ctx.finish(JobStatus.PAUSED, resume_from=str(result.checkpoint or ""), **common)
        ctx.event(f"Paused at step {result.global_step}" +
                  (f"; will resume from {Path(result.checkpoint).name}." if result.checkpoint else "."))
    else:
        ctx.finish(JobStatus.CANCELLED, **common)
        ctx.event(f"Cancelled at step {result.global_step}.")


def announce_adapter(task: TrainingTask, adapter: Adapter, ctx: jobs.JobContext) -> None:
    """Tell the other apps (e.g. evaluation on success); their failures are logged, never the task's."""
    from training.signals import adapter_trained

    task.refresh_from_db()
    for receiver, response in adapter_trained.send_robust(sender=TrainingTask, task=task, adapter=adapter):
        if isinstance(response, Exception):
            log.error("adapter_trained receiver %r failed for task %s: %s", receiver, task.pk, response)
            ctx.event(f"Follow-up after success failed: {response}", level="warning")
        elif isinstance(response, str) and response:
            ctx.event(response)


def _trainable_from_summary(folder: Path | None) -> int:
    if folder is None:
        return 0
    try:
        return int(json.loads((folder / "training_summary.json").read_text()).get("trainable_parameters", 0))
    except (OSError, ValueError):
        return 0


def _fail(ctx: jobs.JobContext, code: str, message: str) -> None:
    ctx.finish(JobStatus.FAILED, error_code=code, error_message=message, eta_seconds=None)
    ctx.event(f"Failed: {message}", level=EventLevel.ERROR, data={"code": code})


def _latest_checkpoint(task: TrainingTask) -> str | None:
    from training.services import latest_checkpoint_path

    return latest_checkpoint_path(task)


jobs.register(jobs.JobKind(name="training", model=TrainingTask, event_model=TrainingEvent, event_fk="task",
                           run=run_training_job, latest_checkpoint=_latest_checkpoint))


def _run_merge_job(job, ctx: jobs.JobContext) -> None:
    from training.merge import run_merge_job

    run_merge_job(job, ctx)


# Merging an adapter into its base model runs on the same queue, claim and supervised child as training.
jobs.register(jobs.JobKind(name="merge", model=MergeJob, event_model=MergeEvent, event_fk="job", run=_run_merge_job))
