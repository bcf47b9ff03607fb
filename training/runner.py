"""The training and merge job kinds' child-process bodies: they run the recipe (or the merge) and write what
it reports to our rows; every ending is ``jobs.runner.JobRunner``'s."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from django.conf import settings
from django.utils import timezone

from jobs import runtime
from jobs.models import EventLevel, EventType, JobStatus
from jobs.registry import kind_of
from jobs.runner import JobFailed, JobRunner, Outcome
from ml.errors import TrainingError, classify
from ml.hparams import MemoryCheck, MemoryEstimate, ResolvedParams
from ml.train.hooks import NullHooks
from training.devices import available_memory_bytes, detect_device
from training.lifecycle import SAFE_NAME_RE, adapter_register, default_model_name, register_merged_model
from training.models import Adapter, Checkpoint, MergeJob, TrainingTask
from training.signals import adapter_trained

log = logging.getLogger(__name__)
LEVELS = {"warning": EventLevel.WARN, "warn": EventLevel.WARN, "error": EventLevel.ERROR}
# Progress rows are written at most this often (every step on a fast GPU would be a write storm).
PROGRESS_INTERVAL = 1.0


def metrics_message(step: int, total: int, metrics: dict) -> str:
    parts = []
    for prefix, label in (("train", "training"), ("valid", "validation")):
        if metrics.get(f"{prefix}_loss") is not None:
            parts.append(f"{label} loss={metrics[f'{prefix}_loss']:.4f}")
        # preference runs: DPO's implicit rewards (TRL's rewards/accuracies and rewards/margins)
        if metrics.get(f"{prefix}_reward_accuracy") is not None:
            parts.append(f"{label} reward accuracy={metrics[f'{prefix}_reward_accuracy']:.3f}")
        if metrics.get(f"{prefix}_reward_margin") is not None:
            parts.append(f"{label} margin={metrics[f'{prefix}_reward_margin']:.4f}")
    if metrics.get("learning_rate") is not None:
        parts.append(f"lr={metrics['learning_rate']:.2e}")
    return f"Step {step}/{total}: " + ", ".join(parts)


class DbHooks(NullHooks):
    """The recipe's hooks, written to the job's rows (conditional on the run's claim)."""

    def __init__(self, ctx: runtime.JobContext) -> None:
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

        runtime.with_db_retry(record, what="recording a checkpoint")  # rides out a database restart
        self.ctx.event(f"Checkpoint saved at step {step}.", data={"step": step})

    def on_message(self, level: str, message: str, data: dict | None = None) -> None:
        self.ctx.event(message, level=LEVELS.get(level, EventLevel.INFO), data=data)

    def should_stop(self):
        return self.ctx.control()


def data_path(version) -> Path:
    path = Path(version.path)
    return path if path.is_absolute() else Path(settings.DATA_DIR) / path


def adapter_dir_for(job) -> Path:
    """Where a job's adapter is written: ``DATA_DIR/adapters/<job name>_<timestamp>/``."""
    stamp = timezone.now().strftime("%Y%m%d-%H%M%S")
    return Path(settings.DATA_DIR) / "adapters" / f"{SAFE_NAME_RE.sub('_', job.name)}_{stamp}"


def register_adapter(task: TrainingTask, folder: Path, *, metrics: dict, trainable: int) -> Adapter:
    return adapter_register(team=task.team, created_by=task.created_by, kind=Adapter.Kind.CAUSAL_LM,
                            base_model=task.base_model, folder=folder, name=task.name,
                            model_name=default_model_name(task), task=task, metrics=metrics, trainable=trainable)


class RecipeRunner(JobRunner):
    """A runner whose failures come from the recipes: classified by ``ml.errors``."""

    def classify(self, exc: Exception) -> JobFailed:
        if isinstance(exc, TrainingError):
            return JobFailed(exc.code, exc.message)
        err = classify(exc)
        return JobFailed(err.code, err.message)


def recipe_inputs(task, **summary) -> dict:
    """What every recipe's spec takes from its task: the base model, the data, the parameters, where to write
    (run folder, adapter folder), where to resume from, the device, and a summary of the task."""
    return {"base_model_path": task.base_model.path, "train": data_path(task.train_version),
            "validation": data_path(task.validation_version) if task.validation_version_id else None,
            "params": task.params or {}, "run_dir": runtime.run_dir(task), "adapter_dir": adapter_dir_for(task),
            "resume_from": task.resume_from or None, "device": settings.TRAINING_DEVICE,
            "summary_extra": {"task": {"id": task.pk, "name": task.name, "team": task.team.name,
                                       "kind": kind_of(task).name, **summary},
                              "dataset": {"train_version": task.train_version_id,
                                          "train_sha256": task.train_version.sha256,
                                          "validation_version": task.validation_version_id}}}


def memory_check(task: TrainingTask) -> MemoryCheck | None:
    """What the run checks again before it loads the model: the estimate the task was admitted with, the model it
    was computed for, and the memory this process may use now (None for a task created without an estimate)."""
    if not task.memory_estimate:
        return None
    return MemoryCheck(admitted=MemoryEstimate.from_dict(task.memory_estimate), config=task.base_model.config,
                       parameter_count=task.base_model.parameter_count or None,
                       available_bytes=available_memory_bytes(detect_device()))
def device_label(info: dict) -> str:
    """What the task trained on, for its ``device`` column: "cpu Intel Xeon ...", and for several processes
    "cpu x 2 processes (ddp over gloo) Intel Xeon ..." (the summary lists each rank's device)."""
    parts = [str(info["device"])] if info.get("device") else []
    if int(info.get("world_size") or 1) > 1:
        parts.append(f"x {info['world_size']} processes ({info.get('strategy')} over {info.get('backend')})")
    if info.get("name"):
        parts.append(str(info["name"]))
    label = " ".join(parts)
    # what it computed in (the why is in its events and summary)
    if label and info.get("compute_dtype"):
        label += f", {info['compute_dtype']} compute"
    return label[:200]


def recipe_outcome(result, fields: dict) -> Outcome:
    """The ending a recipe reported (succeeded, paused at a checkpoint, or cancelled), with the fields to write."""
    status = {"succeeded": JobStatus.SUCCEEDED, "paused": JobStatus.PAUSED}.get(result.status, JobStatus.CANCELLED)
    return Outcome(status, fields=fields, checkpoint=str(result.checkpoint) if result.checkpoint else None)


class TrainingRunner(RecipeRunner):
    """Fine-tunes the task's base model on its dataset version; registers the adapter on success."""

    job: TrainingTask

    def run(self) -> Outcome:
        task = self.job
        # The parameters resolved (and memory-checked) at creation, exactly: the run never resolves them again.
        inputs = {**recipe_inputs(task), "memory_check": memory_check(task)}
        if task.resolved_params:
            inputs["params"] = ResolvedParams.from_dict(task.resolved_params)
        # The recipes import torch: only this child process loads them, never the web or queue process.
        if task.method == TrainingTask.Method.SFT:
            from ml.train.distributed import GroupFailed
            from ml.train.sft import RunSpec, run_training

            try:
                result = run_training(RunSpec(**inputs), DbHooks(self.ctx))
            except GroupFailed as exc:
                raise runtime.GroupLost(str(exc)) from exc
        else:
            from ml.train.preference import PreferenceSpec, run_preference

            start = task.start_adapter
            result = run_preference(PreferenceSpec(**inputs, method=task.method,
                                                   start_adapter=start.path if start else None), DbHooks(self.ctx))
        self.result = result
        fields = {"step": result.global_step, "total_steps": result.total_steps or task.total_steps,
                  "metrics": {**(task.metrics or {}), **{k: v for k, v in result.metrics.items()
                                                        if isinstance(v, (int, float))}},
                  "trained_tokens": result.trained_tokens, "tokens_seen": result.trained_tokens,
                  "resolved_params": result.params.to_dict(), "auto_explanation": result.params.auto,
                  "library_versions": result.versions,
                  "device": device_label(result.device_info),
                  "seed": result.params.seed}
        return recipe_outcome(result, fields)

    def on_success(self, outcome: Outcome) -> None:
        result = self.result
        trainable = int(result.metrics.get("trainable_parameters", 0)) or _trainable_from_summary(result.adapter_dir)
        self.adapter = register_adapter(self.job, result.adapter_dir, metrics=outcome.fields["metrics"],
                                        trainable=trainable)
        outcome.message = f"Succeeded: adapter {self.adapter.name} ({result.trained_tokens:,} tokens trained)."

    def after_success(self, outcome: Outcome) -> None:
        announce_adapter(self.job, self.adapter, self.ctx)


def announce_adapter(task: TrainingTask, adapter: Adapter, ctx: runtime.JobContext) -> None:
    """Tell the other apps (e.g. evaluation on success); their failures are logged, never the task's."""
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




class MergeRunner(RecipeRunner):
    """Merges an adapter into its base model (PEFT merge_and_unload) and registers the folder as a base model."""

    job: MergeJob

    def run(self) -> Outcome:
        # merge_to_folder imports torch: only in this child process.
        from training.merge import merge_to_folder

        job = self.job
        adapter = job.adapter
        target = Path(job.output_path)
        self.ctx.update(total_steps=2, step=0)
        self.ctx.event(f"Merging adapter {adapter.name} into {adapter.base_model.name} -> {target}.")
        if not target.exists():  # a recovered run finds the previous run's finished folder and registers it
            merge_to_folder(adapter.base_model.path, adapter.path, target,
                            provenance={"adapter_id": adapter.pk, "adapter": adapter.name, "merge_job_id": job.pk,
                                        "base_model": adapter.base_model.name})
        self.ctx.update(step=1)
        return Outcome(JobStatus.SUCCEEDED, fields={"step": 2})

    def on_success(self, outcome: Outcome) -> None:
        model = register_merged_model(self.job, Path(self.job.output_path))
        outcome.fields.update(result=model, metrics={"parameter_count": model.parameter_count,
                                                     "size_bytes": model.size_bytes})
        outcome.message = f"Succeeded: registered base model {model.name} ({self.job.output_path})."
