"""What serving keeps: preference pairs from the console's chat playground (the raw material of preference
tuning: one prompt, two answers, which one a member judged better)."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone

from accounts.models import Team


class PreferencePair(models.Model):
    """Two answers to one conversation, one marked better by a member (DPO-style ``chosen`` / ``rejected``), or
    marked a tie (neither better: ``chosen`` and ``rejected`` are then only the first and second answer)."""

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="preference_pairs")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="+")
    messages = models.JSONField(help_text="The conversation both answers reply to (system prompt and turns).")
    chosen_model = models.CharField(max_length=300)
    chosen = models.TextField(help_text="The answer judged better.")
    rejected_model = models.CharField(max_length=300)
    rejected = models.TextField()
    tie = models.BooleanField(default=False, help_text="Neither answer was judged better.")
    chosen_finish_reason = models.CharField(max_length=20, blank=True, default="",
                                            help_text="Why the chosen answer ended: stop, or length (cut off).")
    rejected_finish_reason = models.CharField(max_length=20, blank=True, default="")
    params = models.JSONField(default=dict, blank=True, help_text="Sampling parameters of both answers.")
    created_at = models.DateTimeField(default=timezone.now, editable=False, db_index=True)

    class Meta:
        ordering = ["-created_at", "-pk"]

    def __str__(self) -> str:
        return f"{self.chosen_model} {'=' if self.tie else '>'} {self.rejected_model}"

    @property
    def is_complete(self) -> bool:
        """Both answers are there and ended on their own (an answer cut off at max_tokens is incomplete)."""
        return bool(self.chosen.strip() and self.rejected.strip()) and "length" not in (
            self.chosen_finish_reason, self.rejected_finish_reason)

    @property
    def prompt(self) -> str:
        """The last user turn (what the pair list shows)."""
        users = [m.get("content", "") for m in self.messages if m.get("role") == "user"]
        return users[-1] if users else ""
