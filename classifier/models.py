"""Classifier tasks: LoRA fine-tuning of an encoder (BERT family) with a new classification head."""

from __future__ import annotations

from django.db import models

from catalog.models import BaseModel
from jobs.models import Job, JobEvent
from training.models import Adapter


class ClassifierTask(Job):
    """Training a text classifier on a classification dataset version; runs on the shared job queue."""

    base_model = models.ForeignKey(BaseModel, on_delete=models.PROTECT, related_name="classifier_tasks")
    train_version = models.ForeignKey("datasets_app.DatasetVersion", on_delete=models.PROTECT,
                                      related_name="classifier_tasks")
    validation_version = models.ForeignKey("datasets_app.DatasetVersion", null=True, blank=True,
                                           on_delete=models.PROTECT, related_name="classifier_validation_tasks")
    params = models.JSONField(default=dict, blank=True, help_text="Hyperparameters as submitted.")
    resolved_params = models.JSONField(default=dict, blank=True, help_text="Every hyperparameter, defaults filled.")
    label_map = models.JSONField(default=dict, blank=True, help_text="id -> label, from the training data.")
    report = models.JSONField(default=dict, blank=True,
                              help_text="Best epoch's classification report: per-class scores, confusion matrix.")
    trainable_parameters = models.BigIntegerField(default=0)
    total_parameters = models.BigIntegerField(default=0)
    # The task points at its adapter (not the reverse): training.Adapter.task is for training tasks only.
    adapter = models.OneToOneField(Adapter, null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="classifier_task")

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["status", "-priority", "queued_at"], name="classifier_queue_idx"),
            models.Index(fields=["team", "-created_at"], name="classifier_team_idx"),
        ]
        constraints = [models.UniqueConstraint(fields=["team", "name"], name="classifier_task_unique_name")]

    @property
    def accuracy(self) -> float | None:
        return (self.metrics or {}).get("accuracy")

    @property
    def macro_f1(self) -> float | None:
        return (self.metrics or {}).get("macro_f1")


class ClassifierEvent(JobEvent):
    """The classifier task's log."""

    task = models.ForeignKey(ClassifierTask, on_delete=models.CASCADE, related_name="events")

    class Meta(JobEvent.Meta):
        indexes = [models.Index(fields=["task", "id"], name="classifier_event_page_idx")]
