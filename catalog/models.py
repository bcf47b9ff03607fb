"""Base models: the causal LMs and encoders on disk that tasks fine-tune, found by a scan or registered by a merge."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone

from accounts.models import Team


class BaseModel(models.Model):
    """A model on disk that tasks fine-tune: a causal LM or an encoder, global or owned by one team."""

    class Kind(models.TextChoices):
        CAUSAL_LM = "causal-lm", "Causal LM"
        ENCODER = "encoder", "Encoder"

    class Format(models.TextChoices):
        HF = "hf", "Hugging Face folder"
        GGUF = "gguf", "Converted from GGUF"

    name = models.CharField(max_length=200, unique=True)
    kind = models.CharField(max_length=16, choices=Kind.choices)
    path = models.CharField(max_length=1000, help_text="Folder the model is loaded from.")
    source_path = models.CharField(max_length=1000, blank=True, help_text="Where it was found (e.g. the .gguf).")
    format = models.CharField(max_length=8, choices=Format.choices, default=Format.HF)
    architecture = models.CharField(max_length=200, blank=True)
    model_type = models.CharField(max_length=100, blank=True)
    parameter_count = models.BigIntegerField(default=0)
    size_bytes = models.BigIntegerField(default=0)
    tokenizer_present = models.BooleanField(default=False)
    has_chat_template = models.BooleanField(default=False)
    config = models.JSONField(default=dict, blank=True, help_text="Selected fields of config.json.")
    bundled = models.BooleanField(default=False, help_text="Shipped with the installation.")
    team = models.ForeignKey(Team, null=True, blank=True, on_delete=models.CASCADE, related_name="base_models",
                             help_text="Empty: available to every team.")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="+")
    available = models.BooleanField(default=True, help_text="False when its folder vanished at the last scan.")
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    last_scanned_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        # The table keeps the name it had when base models lived in the training app (moved without copying).
        db_table = "training_basemodel"
        ordering = ["name"]
        indexes = [models.Index(fields=["kind", "available"], name="training_ba_kind_2030f2_idx")]

    def __str__(self) -> str:
        return self.name

    @property
    def max_position_embeddings(self) -> int | None:
        return self.config.get("max_position_embeddings")
