"""The child process's body for one job: a kind's runner builds its spec, runs, and registers its result;
every ending (lost claim, classified failure, unexpected error, paused, cancelled, succeeded) is handled
here, once, for every kind."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from django.db import transaction

from jobs.models import EventLevel, Job, JobStatus
from jobs.runtime import GroupLost, JobContext, LostClaim, with_db_retry

log = logging.getLogger(__name__)
# How long a failing rank other than 0 waits for rank 0 to record the failure before it exits (and torchrun
# stops the group): a failure of the data or the parameters meets every rank at the same step.
FOLLOWER_FAILURE_WAIT_SECONDS = 10.0


class Cancelled(Exception):  # noqa: N818 - a stop signal, not an error
    """Raised by a runner that stopped because a cancel was requested."""


class JobFailed(Exception):
    """A failure the runner has already classified: ``code`` and ``message`` are shown to the user as they are."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class Outcome:
    """What a run ended with. ``fields`` are written with the final state (conditional on the run's claim)."""

    status: str
    fields: dict = field(default_factory=dict)
    message: str = ""
    data: dict | None = None
    checkpoint: str | None = None  # paused: where the resumed run continues


class JobRunner:
    """Subclasses implement ``run()`` (and ``on_success`` when the result is registered as rows)."""

    def __init__(self, job: Job, ctx: JobContext) -> None:
        self.job = job
        self.ctx = ctx

    # ---- what a kind implements ------------------------------------------------------------------------

    def run(self) -> Outcome:
        raise NotImplementedError

    def on_success(self, outcome: Outcome) -> None:
        """Register the result, in the transaction that records the success (may add to ``outcome.fields``)."""

    def after_success(self, outcome: Outcome) -> None:
        """Follow-ups once the success is committed (their failures are the runner's to log)."""

    def classify(self, exc: Exception) -> JobFailed:
        """Turn an unforeseen exception into a code and message a user can act on."""
        return JobFailed("internal_error", f"{type(exc).__name__}: {exc}")

    # ---- every ending, in one place ----------------------------------------------------------------------

    def handle(self) -> str:
        if not self.ctx.reports:
            return self.follow()
        try:
            outcome = self.run()
            return self._end(outcome)
        except (LostClaim, GroupLost):
            raise
        except Cancelled as exc:
            return self._end(Outcome(JobStatus.CANCELLED, message=str(exc) or "Cancelled."))
        except JobFailed as exc:
            return self.fail(exc.code, exc.message)
        except Exception as exc:  # anything unforeseen still ends as a classified failure, never a stuck row
            log.exception("%s %s failed", type(self.job).__name__, self.job.pk)
            failure = exc if isinstance(exc, JobFailed) else self.classify(exc)
            return self.fail(failure.code, failure.message)

    def follow(self) -> str:
        """A rank other than 0 of a group: run the same work, record nothing (rank 0 records every ending). A
        failure ends this rank with an error, once rank 0 has had a moment to record it: torchrun then stops the
        group, and the worker recovers the job if rank 0 recorded nothing."""
        try:
            return self.run().status
        except (LostClaim, GroupLost):
            raise
        except Exception:
            log.exception("%s %s failed on this rank", type(self.job).__name__, self.job.pk)
            self.ctx.wait_for_ending(FOLLOWER_FAILURE_WAIT_SECONDS)
            raise

    def fail(self, code: str, message: str) -> str:
        self.ctx.finish(JobStatus.FAILED, error_code=code, error_message=message, eta_seconds=None)
        self.ctx.event(f"Failed: {message}", level=EventLevel.ERROR, data={"code": code})
        return JobStatus.FAILED

    def _end(self, outcome: Outcome) -> str:
        if outcome.status == JobStatus.SUCCEEDED:
            def record() -> None:
                with transaction.atomic():
                    self.on_success(outcome)
                    self.ctx.finish(JobStatus.SUCCEEDED, eta_seconds=None, **outcome.fields)

            with_db_retry(record, what="recording the result")
            self.ctx.event(outcome.message or "Succeeded.", data=outcome.data)
            self.after_success(outcome)
        elif outcome.status == JobStatus.PAUSED:
            self.ctx.finish(JobStatus.PAUSED, resume_from=str(outcome.checkpoint or ""), **outcome.fields)
            step = outcome.fields.get("step", self.job.step)
            where = f"; will resume from {Path(outcome.checkpoint).name}." if outcome.checkpoint else "."
            self.ctx.event(outcome.message or f"Paused at step {step}{where}")
        elif outcome.status == JobStatus.CANCELLED:
            self.ctx.finish(JobStatus.CANCELLED, **outcome.fields)
            step = outcome.fields.get("step")
            self.ctx.event(outcome.message or (f"Cancelled at step {step}." if step is not None else "Cancelled."))
        else:
            raise ValueError(f"a run cannot end as {outcome.status!r}")
        return outcome.status
