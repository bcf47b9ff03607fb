from __future__ import annotations

from django.apps import AppConfig


class TrainingConfig(AppConfig):
    name = "training"
    verbose_name = "Training"

    def ready(self) -> None:
        # Models and the runner's checkpoint rule are imported once the app registry is ready.
        from jobs.registry import JobKind, register
        from training.models import MergeEvent, MergeJob, TrainingEvent, TrainingTask
        from training.services import training_task_latest_checkpoint, training_task_processes, training_task_reproduce

        register(JobKind(name="training", model=TrainingTask, event_model=TrainingEvent, event_fk="task",
                         runner="training.runner.TrainingRunner", latest_checkpoint=training_task_latest_checkpoint,
                         reproduce=training_task_reproduce, outputs=lambda task: list(task.adapters.all()),
                         processes=training_task_processes))
        # Merging an adapter into its base model runs on the same queue, claim and supervised child as training.
        register(JobKind(name="merge", model=MergeJob, event_model=MergeEvent, event_fk="job",
                         runner="training.runner.MergeRunner"))
