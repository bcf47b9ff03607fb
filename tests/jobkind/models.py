from __future__ import annotations

from django.db import models

from jobs.models import Job, JobEvent


class CountJob(Job):
    """Counts to ``target``, one step at a time; ``behaviour`` makes it fail in the ways a real kind can."""

    target = models.PositiveIntegerField(default=3)
    behaviour = models.CharField(max_length=16, default="ok")  # ok, crash, refuse, wait
    checkpoint = models.CharField(max_length=100, blank=True)
    total = models.IntegerField(null=True, blank=True)


class CountEvent(JobEvent):
    job = models.ForeignKey(CountJob, on_delete=models.CASCADE, related_name="events")
