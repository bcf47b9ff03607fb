"""The classifier job's child-process body: runs ``ml.train.classifier`` and writes what it reports to our rows.

Registered as the ``classifier`` job kind (``jobs.registry``): the same queue, claim,
supervised child process, heartbeat, cancel/pause flags and crash recovery as training tasks.
"""

from __future__ import annotations

from pathlib import Path

from classifier.models import ClassifierTask
from jobs.runner import Outcome
from ml.classifier_data import label_map_to_json
from training.lifecycle import adapter_register
from training.models import Adapter
from training.runner import DbHooks, RecipeRunner, recipe_inputs, recipe_outcome


class ClassifierHooks(DbHooks):
    """Training's DB hooks; checkpoints live on disk only (the newest good one is found by scanning)."""

    def on_checkpoint(self, step: int, path: Path, metrics: dict) -> None:
        self.ctx.event(f"Checkpoint saved at step {step}.", data={"step": step, "path": str(path)})


class ClassifierRunner(RecipeRunner):
    """Trains the task's encoder with a LoRA classification head; registers the adapter on success."""

    job: ClassifierTask

    def run(self) -> Outcome:
        # The recipe imports torch: only this child process loads it.
        from ml.train.classifier import ClassifierSpec, train_classifier

        task = self.job
        spec = ClassifierSpec(**recipe_inputs(task))
        result = train_classifier(spec, ClassifierHooks(self.ctx))
        self.result = result
        fields = {"step": result.global_step, "total_steps": result.total_steps, "epoch": round(result.epoch, 4),
                  "metrics": {**(task.metrics or {}), **result.metrics}, "resolved_params": result.params.to_dict(),
                  "label_map": label_map_to_json(result.label_map), "library_versions": result.versions,
                  "device": result.device, "seed": result.params.seed,
                  "trainable_parameters": result.trainable_parameters, "total_parameters": result.total_parameters}
        return recipe_outcome(result, fields)

    def on_success(self, outcome: Outcome) -> None:
        result, task = self.result, self.job
        adapter = adapter_register(
            team=task.team, created_by=task.created_by, kind=Adapter.Kind.CLASSIFIER, base_model=task.base_model,
            folder=result.adapter_dir, name=task.name,
            metrics={**result.metrics, "max_seq_length": result.params.max_seq_length, "classifier_task_id": task.pk},
            trainable=result.trainable_parameters, label_map=outcome.fields["label_map"])
        outcome.fields.update(report=result.report, adapter=adapter)
        outcome.message = (f"Succeeded: adapter {adapter.name}; best epoch {result.best_epoch}, accuracy "
                           f"{result.metrics['accuracy']:.3f}, macro-F1 {result.metrics['macro_f1']:.3f}.")
