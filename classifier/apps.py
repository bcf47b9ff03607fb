from __future__ import annotations

from django.apps import AppConfig


class ClassifierConfig(AppConfig):
    name = "classifier"
    verbose_name = "Classifiers"

    def ready(self) -> None:
        # Imported once the app registry is ready (they import models).
        from classifier.models import ClassifierEvent, ClassifierTask
        from classifier.services import classifier_task_latest_checkpoint, classifier_task_reproduce
        from jobs.registry import JobKind, register

        register(JobKind(name="classifier", model=ClassifierTask, event_model=ClassifierEvent, event_fk="task",
                         runner="classifier.runner.ClassifierRunner",
                         latest_checkpoint=classifier_task_latest_checkpoint, reproduce=classifier_task_reproduce,
                         outputs=lambda task: [task.adapter] if task.adapter_id else []))
