"""The test kind's runner: only what a kind writes (build, run, register); every ending is JobRunner's."""

from __future__ import annotations

import time

from jobs.models import JobStatus
from jobs.runner import JobFailed, JobRunner, Outcome


class CountRunner(JobRunner):
    def run(self) -> Outcome:
        job = self.job
        if job.behaviour == "crash":
            raise ZeroDivisionError("the kind's own bug")
        if job.behaviour == "refuse":
            raise JobFailed("bad_target", f"cannot count to {job.target}")
        start = int(job.checkpoint.removeprefix("step-")) if job.checkpoint else 0
        self.ctx.update(total_steps=job.target)
        for step in range(start + 1, job.target + 1):
            control = self.ctx.control(max_age=0)
            if control == "pause":
                return Outcome(JobStatus.PAUSED, fields={"step": step - 1}, checkpoint=f"step-{step - 1}")
            if control == "cancel":
                return Outcome(JobStatus.CANCELLED, fields={"step": step - 1})
            self.ctx.update(step=step)
            if job.behaviour == "wait":
                time.sleep(0.2)
        return Outcome(JobStatus.SUCCEEDED, fields={"step": job.target, "metrics": {"counted": job.target}})

    def on_success(self, outcome: Outcome) -> None:
        outcome.fields["total"] = self.job.target * (self.job.target + 1) // 2
        outcome.message = f"Counted to {self.job.target}."
