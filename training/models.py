"""Training tasks, their events and checkpoints, adapters and their audit trail, merge jobs."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone

from accounts.models import Team
from catalog.models import BaseModel
from jobs.models import Job, JobEvent


class TrainingTask(Job):
    """Fine-tuning a causal LM with LoRA/QLoRA on a dataset version: supervised (``sft``) or on preferences
    (``dpo``, ``orpo`` on preference pairs; ``kto`` on labelled answers), optionally from an existing adapter."""

    class Method(models.TextChoices):
        SFT = "sft", "Supervised (SFT)"
        DPO = "dpo", "DPO (preference pairs)"
        ORPO = "orpo", "ORPO (preference pairs, no reference)"
        KTO = "kto", "KTO (labelled answers)"

    method = models.CharField(max_length=8, choices=Method.choices, default=Method.SFT)
    start_adapter = models.ForeignKey(
        "Adapter", null=True, blank=True, on_delete=models.PROTECT, related_name="continued_by",
        help_text="Train this adapter further (of the same base model) instead of a fresh one; the preference "
                  "methods then use it as their reference policy.")
    base_model = models.ForeignKey(BaseModel, on_delete=models.PROTECT, related_name="training_tasks")
    train_version = models.ForeignKey("datasets_app.DatasetVersion", on_delete=models.PROTECT,
                                      related_name="training_tasks")
    validation_version = models.ForeignKey("datasets_app.DatasetVersion", null=True, blank=True,
                                           on_delete=models.PROTECT, related_name="validation_tasks")
    params = models.JSONField(default=dict, blank=True, help_text="Hyperparameters as submitted.")
    resolved_params = models.JSONField(default=dict, blank=True, help_text="Concrete values after 'auto'.")
    auto_explanation = models.JSONField(default=dict, blank=True)
    estimated_memory_bytes = models.BigIntegerField(null=True, blank=True)
    memory_estimate = models.JSONField(
        default=dict, blank=True, help_text="The estimate the task was admitted with and the batch it describes "
                                            "(sequences x tokens per micro-batch, batch x accumulation); the run "
                                            "checks it again on its tokenised data before loading the model.")
    trained_tokens = models.BigIntegerField(default=0)
    suffix = models.CharField(max_length=64, blank=True)
    metadata = models.JSONField(default=dict, blank=True)
    cloned_from = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    evaluate_on_success = models.BooleanField(
        default=False, help_text="Queue an evaluation run of the adapter (against the base model, on the validation "
                                 "set, else the training set) when the task succeeds.")
    evaluation_metrics = models.JSONField(default=list, blank=True,
                                          help_text="Metrics of that evaluation; empty means the defaults.")

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["status", "-priority", "queued_at"], name="training_queue_idx"),
            models.Index(fields=["team", "-created_at"], name="training_team_idx"),
        ]
        constraints = [models.UniqueConstraint(fields=["team", "name"], name="training_task_unique_name")]


class TrainingEvent(JobEvent):
    """The training task's log."""

    task = models.ForeignKey(TrainingTask, on_delete=models.CASCADE, related_name="events")

    class Meta(JobEvent.Meta):
        indexes = [models.Index(fields=["task", "id"], name="training_event_page_idx")]


class Checkpoint(models.Model):
    """A saved training state (adapter + optimizer + scheduler + RNG) a run can resume from."""

    task = models.ForeignKey(TrainingTask, on_delete=models.CASCADE, related_name="checkpoints")
    step = models.PositiveIntegerField()
    path = models.CharField(max_length=1000)
    metrics = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ["task", "step"]
        constraints = [models.UniqueConstraint(fields=["task", "step"], name="unique_checkpoint_step")]

    def __str__(self) -> str:
        return f"{self.task.name} step {self.step}"


class Adapter(models.Model):
    """A trained LoRA adapter: loads with plain PEFT on top of its base model's local folder."""

    class Kind(models.TextChoices):
        CAUSAL_LM = "causal-lm", "Causal LM adapter"
        CLASSIFIER = "classifier", "Classifier adapter"

    class Status(models.TextChoices):
        READY = "ready", "Ready"
        ARCHIVED = "archived", "Archived"

    class Stage(models.TextChoices):
        DRAFT = "draft", "Draft"
        CANDIDATE = "candidate", "Candidate"
        PRODUCTION = "production", "Production"

    class Source(models.TextChoices):
        TRAINED = "trained", "Trained here"
        SCANNED = "scanned", "Found by a scan"

    name = models.CharField(max_length=200)
    model_name = models.CharField(
        max_length=200, blank=True, db_index=True,
        help_text="The name it is served under (<team>/<model name>:production); several versions share one. "
                  "Default: the adapter's name.")
    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="adapters")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="+")
    kind = models.CharField(max_length=16, choices=Kind.choices, default=Kind.CAUSAL_LM)
    base_model = models.ForeignKey(BaseModel, on_delete=models.PROTECT, related_name="adapters")
    task = models.ForeignKey(TrainingTask, null=True, blank=True, on_delete=models.SET_NULL, related_name="adapters")
    path = models.CharField(max_length=1000)
    lora_config = models.JSONField(default=dict, blank=True)
    trainable_parameters = models.BigIntegerField(default=0)
    size_bytes = models.BigIntegerField(default=0)
    metrics = models.JSONField(default=dict, blank=True)
    label_map = models.JSONField(default=dict, blank=True, help_text="Classifier adapters: id -> label.")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.READY)
    stage = models.CharField(max_length=16, choices=Stage.choices, default=Stage.DRAFT, db_index=True)
    # True while in production, NULL otherwise: the unique constraint below then allows one production
    # adapter per (team, model name) on every database (MySQL has no conditional unique index; NULLs never clash).
    production_slot = models.BooleanField(null=True, blank=True, editable=False)
    stage_changed_at = models.DateTimeField(null=True, blank=True)
    approval_requested_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True,
                                              on_delete=models.SET_NULL, related_name="+")
    approval_requested_at = models.DateTimeField(null=True, blank=True)
    source = models.CharField(max_length=16, choices=Source.choices, default=Source.TRAINED)
    files_deleted_at = models.DateTimeField(null=True, blank=True, help_text="When its files were removed from disk.")
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(fields=["team", "name"], name="adapter_unique_name"),
            models.UniqueConstraint(fields=["team", "model_name", "production_slot"],
                                    name="adapter_one_production_per_name"),
        ]

    def __str__(self) -> str:
        return self.name

    def save(self, *args, **kwargs):
        if not self.model_name:
            self.model_name = self.name
            if kwargs.get("update_fields") is not None:
                kwargs["update_fields"] = {*kwargs["update_fields"], "model_name"}
        super().save(*args, **kwargs)

    @property
    def files_present(self) -> bool:
        return self.files_deleted_at is None

    @property
    def serving_name(self) -> str:
        return f"{self.team.name}/{self.model_name or self.name}:production"


class AdapterEvent(models.Model):
    """The adapter's audit trail: who promoted, approved, archived, exported or merged it, and when."""

    class Action(models.TextChoices):
        REGISTERED = "registered", "Registered"
        PROMOTED = "promoted", "Stage changed"
        REQUESTED = "requested", "Production requested"
        APPROVED = "approved", "Approved for production"
        DEMOTED = "demoted", "Replaced in production"
        ARCHIVED = "archived", "Archived"
        RESTORED = "restored", "Restored"
        DELETED = "deleted", "Files deleted"
        EXPORTED = "exported", "Exported"
        MERGED = "merged", "Merge queued"
        RENAMED = "renamed", "Renamed"

    adapter = models.ForeignKey(Adapter, on_delete=models.CASCADE, related_name="events")
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                              related_name="+")
    action = models.CharField(max_length=16, choices=Action.choices)
    from_stage = models.CharField(max_length=16, blank=True)
    to_stage = models.CharField(max_length=16, blank=True)
    note = models.TextField(blank=True)
    data = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["adapter", "-created_at"], name="adapter_event_idx")]

    def __str__(self) -> str:
        return f"{self.adapter_id} {self.action} {self.from_stage}->{self.to_stage}"


class MergeJob(Job):
    """Merging an adapter into its base model (PEFT merge_and_unload) as a new standalone base model."""

    adapter = models.ForeignKey(Adapter, on_delete=models.PROTECT, related_name="merge_jobs")
    output_name = models.CharField(max_length=200, help_text="Name of the base model it registers.")
    output_path = models.CharField(max_length=1000, blank=True)
    result = models.ForeignKey(BaseModel, null=True, blank=True, on_delete=models.SET_NULL, related_name="merged_from")

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["status", "-priority", "queued_at"], name="merge_queue_idx"),
            models.Index(fields=["team", "-created_at"], name="merge_team_idx"),
        ]


class MergeEvent(JobEvent):
    """The merge job's log."""

    job = models.ForeignKey(MergeJob, on_delete=models.CASCADE, related_name="events")

    class Meta(JobEvent.Meta):
        indexes = [models.Index(fields=["job", "id"], name="merge_event_page_idx")]
