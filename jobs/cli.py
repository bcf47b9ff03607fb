"""Terminal helpers shared by the job commands (start_training, train_classifier, evaluate ...)."""

from __future__ import annotations

import time

from tqdm import tqdm

from jobs.models import TERMINAL, Job


def wait_with_progress(job: Job, stream, *, poll: float = 1.0, timeout: float | None = None) -> Job:
    """Show a progress bar until the job ends (or pauses); returns the refreshed row."""
    model = type(job)
    bar = tqdm(total=job.total_steps or 1, unit="step", file=stream, dynamic_ncols=True)
    started = time.monotonic()
    last_event = 0
    try:
        while True:
            job = model.objects.get(pk=job.pk)
            bar.total = max(job.total_steps, 1)
            bar.n = min(job.step, bar.total)
            loss = job.metrics.get("train_loss") if isinstance(job.metrics, dict) else None
            postfix = {"status": job.status}
            if loss is not None:
                postfix["loss"] = f"{loss:.4f}"
            if job.tokens_per_second:
                postfix["tok/s"] = f"{job.tokens_per_second:.0f}"
            bar.set_postfix(postfix, refresh=False)
            bar.refresh()
            events = getattr(job, "events", None)
            if events is not None:
                for event in events.filter(id__gt=last_event, type="message").order_by("id"):
                    last_event = event.id
                    bar.write(f"[{event.level}] {event.message}", file=stream)
            if job.status in TERMINAL or job.status == "paused":
                return job
            if timeout is not None and time.monotonic() - started > timeout:
                return job
            time.sleep(poll)
    finally:
        bar.close()
