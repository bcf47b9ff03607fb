"""The OpenAI-style identifiers of our rows, and timestamps as the protocol writes them."""

from __future__ import annotations

import re
from datetime import datetime

from training.models import TrainingTask

FILE_ID = re.compile(r"^file-(\d+)$")
RESULT_ID = re.compile(r"^file-results-(\d+)$")


def job_id(task: TrainingTask) -> str:
    return f"ftjob-{task.pk}"


def ts(value: datetime | None) -> int | None:
    return int(value.timestamp()) if value else None
