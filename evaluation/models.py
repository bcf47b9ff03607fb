"""Evaluation runs (a queued job on the shared machinery), their samples, and blind A/B reviews."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone

from jobs.models import Job, JobEvent
from training.models import Adapter

METRIC_CHOICES = ("perplexity", "samples", "style", "overlap", "classifier", "preference")
# "preference" scores preference pairs (a preference dataset); the others need chat data.
PAIR_METRICS = ("preference",)


class EvaluationRun(Job):
    """One evaluation of an adapter against its base model (or against a second adapter of the same base).

    ``metrics`` is the list of metric groups chosen (see ``METRIC_CHOICES``); ``results`` holds what the
    child computed, one key per group, e.g. ``{"perplexity": {"base": ..., "adapter": ...}}``.
    """

    adapter = models.ForeignKey(Adapter, on_delete=models.PROTECT, related_name="evaluation_runs")
    other_adapter = models.ForeignKey(Adapter, null=True, blank=True, on_delete=models.PROTECT, related_name="+",
                                      help_text="Compare with this adapter instead of the base model.")
    dataset_version = models.ForeignKey("datasets_app.DatasetVersion", on_delete=models.PROTECT,
                                        related_name="evaluation_runs")
    metric_names = models.JSONField(default=list, blank=True, help_text="Metric groups to compute.")
    generation = models.JSONField(default=dict, blank=True,
                                  help_text="max_new_tokens, temperature, top_p, seed, n_samples, max_seq_length.")
    results = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["status", "-priority", "queued_at"], name="evaluation_queue_idx"),
            models.Index(fields=["team", "-created_at"], name="evaluation_team_idx"),
        ]

    @property
    def baseline_label(self) -> str:
        return self.other_adapter.name if self.other_adapter_id else "base"

    @property
    def ppl_summary(self) -> str:
        ppl = (self.results or {}).get("perplexity") or {}
        if "base" in ppl and "adapter" in ppl:
            return f"{ppl['base']:.3g} → {ppl['adapter']:.3g}"
        return ""


class EvaluationEvent(JobEvent):
    """The evaluation run's log."""

    run = models.ForeignKey(EvaluationRun, on_delete=models.CASCADE, related_name="events")

    class Meta(JobEvent.Meta):
        indexes = [models.Index(fields=["run", "id"], name="evaluation_event_page_idx")]


class EvaluationSample(models.Model):
    """One prompt of the evaluation set with the reference, the baseline's and the adapter's answers."""

    run = models.ForeignKey(EvaluationRun, on_delete=models.CASCADE, related_name="samples")
    index = models.PositiveIntegerField()
    prompt = models.TextField()
    reference = models.TextField(blank=True)
    base_answer = models.TextField(blank=True, help_text="Base model (or the second adapter).")
    adapter_answer = models.TextField(blank=True)
    metrics = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["run", "index"]
        constraints = [models.UniqueConstraint(fields=["run", "index"], name="evaluation_sample_unique_index")]

    def __str__(self) -> str:
        return f"{self.run_id}#{self.index}"


class Review(models.Model):
    """A blind A/B review built from a run's samples; ``closed_at`` ends voting and reveals the sides."""

    class Status(models.TextChoices):
        OPEN = "open", "Open"
        CLOSED = "closed", "Closed"

    run = models.ForeignKey(EvaluationRun, on_delete=models.CASCADE, related_name="reviews")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="+")
    status = models.CharField(max_length=8, choices=Status.choices, default=Status.OPEN)
    seed = models.IntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    closed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"Review {self.pk} of {self.run.name}"

    @property
    def team_id(self) -> int:
        return self.run.team_id


class ReviewPair(models.Model):
    """Two answers to one prompt; ``adapter_side`` (which of A/B is the adapter) is never shown to reviewers."""

    class Side(models.TextChoices):
        A = "a", "A"
        B = "b", "B"

    review = models.ForeignKey(Review, on_delete=models.CASCADE, related_name="pairs")
    sample = models.ForeignKey(EvaluationSample, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    order = models.PositiveIntegerField()
    prompt = models.TextField()
    answer_a = models.TextField()
    answer_b = models.TextField()
    adapter_side = models.CharField(max_length=1, choices=Side.choices)

    class Meta:
        ordering = ["review", "order"]
        constraints = [models.UniqueConstraint(fields=["review", "order"], name="review_pair_unique_order")]

    def __str__(self) -> str:
        return f"Pair {self.order} of review {self.review_id}"


class Vote(models.Model):
    """One reviewer's choice on one pair (at most one per reviewer and pair)."""

    class Choice(models.TextChoices):
        A = "a", "A better"
        B = "b", "B better"
        TIE = "tie", "Tie"

    pair = models.ForeignKey(ReviewPair, on_delete=models.CASCADE, related_name="votes")
    reviewer = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    choice = models.CharField(max_length=3, choices=Choice.choices)
    comment = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ["pair", "created_at"]
        constraints = [models.UniqueConstraint(fields=["pair", "reviewer"], name="vote_unique_per_reviewer")]

    def __str__(self) -> str:
        return f"{self.reviewer_id} on {self.pair_id}: {self.choice}"
