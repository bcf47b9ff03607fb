"""Datasets and their immutable, content-hashed versions."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone

from accounts.models import Team
from datasets_app import formats


class Format(models.TextChoices):
    ALPACA = formats.ALPACA, "Alpaca"
    SHAREGPT = formats.SHAREGPT, "ShareGPT"
    OPENAI = formats.OPENAI, "OpenAI chat"
    COMPLETION = formats.COMPLETION, "Prompt / completion"
    CLASSIFICATION = formats.CLASSIFICATION, "Classification"
    TEXT = formats.TEXT, "Plain text"
    PREFERENCE = formats.PREFERENCE, "Preference pairs"
    KTO = formats.KTO, "KTO (labelled rows)"


class Dataset(models.Model):
    """A named collection of training data owned by a team; its content lives in its versions.

    ``format`` is the format of its first valid upload; later versions must normalise to the same
    kind (chat, classification or text) so that a training task can take any of them.
    """

    name = models.CharField(max_length=100)
    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="datasets")
    format = models.CharField(max_length=16, choices=Format.choices, blank=True)
    description = models.TextField(blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="+")
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ["team__name", "name"]
        constraints = [models.UniqueConstraint(fields=["team", "name"], name="unique_dataset_name_per_team")]

    def __str__(self) -> str:
        return f"{self.team.name}/{self.name}" if self.team_id else self.name

    @property
    def kind(self) -> str | None:
        return formats.kind_of(self.format)


class DatasetVersion(models.Model):
    """One immutable upload (or split) of a dataset, stored normalised under DATA_DIR.

    A failed upload is kept with ``status=failed`` and its validation ``report`` but no file; an upload
    with ``skip_invalid`` keeps its valid rows and the report of the others (``skipped_examples``). Split
    versions point at the version they were cut from (``parent``) with their ``split_role``.
    """

    class Status(models.TextChoices):
        READY = "ready", "Ready"
        FAILED = "failed", "Failed validation"

    class SplitRole(models.TextChoices):
        NONE = "", "Full upload"
        TRAIN = "train", "Train split"
        VALIDATION = "validation", "Validation split"

    dataset = models.ForeignKey(Dataset, on_delete=models.CASCADE, related_name="versions")
    number = models.PositiveIntegerField(help_text="1, 2, 3, … within the dataset.")
    sha256 = models.CharField(max_length=64, blank=True, db_index=True,
                              help_text="SHA-256 of the normalised content (empty for failed uploads).")
    row_count = models.PositiveIntegerField(default=0)
    path = models.CharField(max_length=500, blank=True, help_text="Normalised JSONL, relative to DATA_DIR.")
    source_filename = models.CharField(max_length=255, blank=True)
    format = models.CharField(max_length=16, choices=Format.choices, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.READY)
    report = models.JSONField(default=dict, blank=True)
    stats = models.JSONField(default=dict, blank=True)
    mapping = models.JSONField(default=dict, blank=True,
                               help_text="The column mapping the file was read with ({columns, tags, source}).")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="+")
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    # Splits: PROTECT so that a version cannot vanish from under the train/validation pair cut from it.
    parent = models.ForeignKey("self", null=True, blank=True, on_delete=models.PROTECT, related_name="splits")
    split_role = models.CharField(max_length=16, choices=SplitRole.choices, blank=True, default="")
    split_seed = models.BigIntegerField(null=True, blank=True)
    split_ratio = models.FloatField(null=True, blank=True)

    class Meta:
        ordering = ["dataset_id", "-number"]
        constraints = [
            models.UniqueConstraint(fields=["dataset", "number"], name="unique_dataset_version_number"),
        ]
        indexes = [models.Index(fields=["dataset", "sha256"]), models.Index(fields=["status"])]

    def __str__(self) -> str:
        return self.ref

    @property
    def ref(self) -> str:
        """How users name it: ``dataset@N``."""
        return f"{self.dataset.name}@{self.number}"

    @property
    def is_ready(self) -> bool:
        return self.status == self.Status.READY

    @property
    def kind(self) -> str | None:
        return formats.kind_of(self.format)

    @property
    def error_count(self) -> int:
        return int(self.report.get("error_count", 0)) if isinstance(self.report, dict) else 0

    @property
    def skipped_count(self) -> int:
        return int(self.report.get("skipped_examples", 0)) if isinstance(self.report, dict) else 0

    @property
    def warning_count(self) -> int:
        return int(self.report.get("warning_count", 0)) if isinstance(self.report, dict) else 0
