"""The job tables every kind shares, as abstract models: each kind (training, classifier, evaluation, merge,
...) keeps its concrete table in its own app and registers it with ``jobs.registry``."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone

from accounts.models import Team


class JobStatus(models.TextChoices):
    VALIDATING = "validating", "Validating"
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    PAUSED = "paused", "Paused"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"


TERMINAL = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})
ACTIVE = frozenset({JobStatus.VALIDATING, JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.PAUSED})


class Job(models.Model):
    """What every queued job shares (training, classifier, evaluation): the row is the job's truth.

    The worker claims a row by an atomic status update that also sets a fresh ``run_token``; every
    later write from that run is conditional on the token, so a run that lost its claim (recovered
    after a stale heartbeat, say) can never overwrite the new run's state.
    """

    Status = JobStatus

    name = models.CharField(max_length=200)
    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="+")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="+")
    status = models.CharField(max_length=16, choices=JobStatus.choices, default=JobStatus.QUEUED, db_index=True)
    priority = models.IntegerField(default=0, help_text="Higher runs first; FIFO within one priority.")
    requirements = models.JSONField(default=dict, blank=True,
                                    help_text="The hardware a worker needs to claim this job (jobs.requirements).")

    created_at = models.DateTimeField(default=timezone.now, editable=False)
    queued_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    paused_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    cancel_requested = models.BooleanField(default=False)
    pause_requested = models.BooleanField(default=False)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    run_token = models.CharField(max_length=32, blank=True, editable=False)
    worker = models.CharField(max_length=200, blank=True, help_text="host:pid of the supervising worker.")
    child_pid = models.IntegerField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0, help_text="Runs started (first run, resumes, recoveries).")
    recoveries = models.PositiveIntegerField(default=0, help_text="Automatic recoveries after a crash.")
    resume_from = models.CharField(max_length=1000, blank=True, help_text="Checkpoint the next run starts from.")

    step = models.PositiveIntegerField(default=0)
    total_steps = models.PositiveIntegerField(default=0)
    epoch = models.FloatField(default=0)
    tokens_seen = models.BigIntegerField(default=0)
    tokens_per_second = models.FloatField(default=0)
    eta_seconds = models.FloatField(null=True, blank=True)
    metrics = models.JSONField(default=dict, blank=True, help_text="Latest metrics.")

    error_code = models.CharField(max_length=64, blank=True)
    error_message = models.TextField(blank=True)
    error_param = models.CharField(max_length=64, blank=True)

    device = models.CharField(max_length=200, blank=True)
    library_versions = models.JSONField(default=dict, blank=True)
    seed = models.IntegerField(null=True, blank=True)
    log_path = models.CharField(max_length=1000, blank=True)

    class Meta:
        abstract = True

    def __str__(self) -> str:
        return f"{self.name} ({self.status})"

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL

    @property
    def progress_percent(self) -> float:
        if self.status == JobStatus.SUCCEEDED:
            return 100.0
        if not self.total_steps:
            return 0.0
        return round(min(100.0, 100.0 * self.step / self.total_steps), 1)

    @property
    def duration_seconds(self) -> float | None:
        if not self.started_at:
            return None
        end = self.finished_at or (self.paused_at if self.status == JobStatus.PAUSED else None) or timezone.now()
        return (end - self.started_at).total_seconds()


class EventLevel(models.TextChoices):
    INFO = "info", "info"
    WARN = "warn", "warn"
    ERROR = "error", "error"


class EventType(models.TextChoices):
    MESSAGE = "message", "message"
    METRICS = "metrics", "metrics"


class JobEvent(models.Model):
    """A line of a job's log: a message, or one metrics record (loss, learning rate, ...)."""

    level = models.CharField(max_length=8, choices=EventLevel.choices, default=EventLevel.INFO)
    type = models.CharField(max_length=8, choices=EventType.choices, default=EventType.MESSAGE)
    message = models.TextField()
    data = models.JSONField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        abstract = True
        ordering = ["id"]

    def __str__(self) -> str:
        return f"[{self.level}] {self.message[:80]}"


class Worker(models.Model):
    """A queue worker process and its hardware, as it last reported them: written when the process starts and
    with every heartbeat (idle or supervising), so the scheduler and the dashboard know what each worker can
    run and what it runs now. A worker is live while its heartbeat is younger than JOB_STALE_SECONDS."""

    name = models.CharField(max_length=200, unique=True, help_text="WORKER_NAME, or host:pid.")
    host = models.CharField(max_length=200)
    pid = models.IntegerField(null=True, blank=True)
    device = models.CharField(max_length=8, default="cpu", help_text="What its jobs train on: cpu or cuda.")
    gpus = models.JSONField(default=list, blank=True, help_text="CUDA GPUs: index, name, memory_bytes.")
    cpu_count = models.PositiveIntegerField(default=1)
    memory_total_bytes = models.BigIntegerField(default=0)
    memory_free_bytes = models.BigIntegerField(default=0)
    labels = models.JSONField(default=list, blank=True)
    started_at = models.DateTimeField(default=timezone.now)
    heartbeat_at = models.DateTimeField(default=timezone.now, db_index=True)
    running = models.JSONField(default=list, blank=True, help_text="The jobs it supervises: kind, id, name, team.")

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def gpu_memory_bytes(self) -> list[int]:
        return [int(g.get("memory_bytes") or 0) for g in self.gpus or []]
