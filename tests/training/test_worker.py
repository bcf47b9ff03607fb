"""Training through the real django-q2 worker: supervised child processes, cancel, pause/resume, kill -9."""

from __future__ import annotations

import os
import signal

import pytest

from jobs import services as job_services
from jobs.models import JobStatus
from tests.training.conftest import wait_for
from training import services
from training.models import TrainingTask

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

LONG = {"n_epochs": 1, "max_steps": 4000, "batch_size": 1, "save_steps": 5, "lora_r": 2}
# Long enough that the pause lands mid-run: a tiny model's steps take milliseconds, and the task's step reaches
# the database at most once a second.
PAUSED_RUN_STEPS = 300


@pytest.fixture
def team_user(make_team, make_user):
    team = make_team("alpha")
    return team, make_user("alice", team, "admin")


def status_of(task) -> str:
    return TrainingTask.objects.values_list("status", flat=True).get(pk=task.pk)


def test_worker_trains_to_success_in_a_child_process(team_user, tiny_base_model, make_version, worker):
    team, alice = team_user
    task = services.training_task_create(user=alice, name="via-worker", base_model=tiny_base_model,
                                         train_version=make_version(team), params={"n_epochs": 1, "batch_size": 4})
    worker.start()
    wait_for(lambda: status_of(task) in {"succeeded", "failed"}, timeout=240, message="task to finish")
    task.refresh_from_db()
    assert task.status == JobStatus.SUCCEEDED, (task.error_message, worker.log())
    assert task.attempts == 1 and task.worker and task.log_path
    assert os.path.getsize(task.log_path) > 0  # the child's output was captured
    assert task.adapters.count() == 1


def test_cancel_stops_a_running_task_within_seconds(team_user, tiny_base_model, make_version, worker):
    import time

    team, alice = team_user
    task = services.training_task_create(user=alice, name="to-cancel", base_model=tiny_base_model,
                                         train_version=make_version(team), params=LONG)
    worker.start()
    wait_for(lambda: TrainingTask.objects.get(pk=task.pk).step >= 3, timeout=240, message="training to start")
    asked = time.monotonic()
    job_services.job_cancel(user=alice, job=task)
    wait_for(lambda: status_of(task) == "cancelled", timeout=30, message="cancel")
    assert time.monotonic() - asked < 15
    task.refresh_from_db()
    assert task.step < 4000 and task.finished_at is not None
    assert not task.adapters.exists()


def test_pause_then_resume_continues_the_step_count(team_user, tiny_base_model, make_version, worker):
    team, alice = team_user
    params = {**LONG, "max_steps": PAUSED_RUN_STEPS}
    task = services.training_task_create(user=alice, name="pause-me", base_model=tiny_base_model,
                                         train_version=make_version(team), params=params)
    worker.start()
    wait_for(lambda: TrainingTask.objects.get(pk=task.pk).step >= 7, timeout=240, message="a few steps")
    job_services.job_pause(user=alice, job=TrainingTask.objects.get(pk=task.pk))
    wait_for(lambda: status_of(task) == "paused", timeout=60, message="pause")
    task.refresh_from_db()
    paused_step = task.step
    assert task.resume_from.endswith(f"step-{paused_step}")  # a checkpoint of the exact step it stopped at
    job_services.job_resume(user=alice, job=task)
    wait_for(lambda: status_of(task) in {"succeeded", "failed"}, timeout=240, message="resumed run to finish")
    task.refresh_from_db()
    assert task.status == JobStatus.SUCCEEDED, task.error_message
    assert task.step == PAUSED_RUN_STEPS and task.attempts == 2
    steps = [d["step"] for d in task.events.filter(type="metrics").values_list("data", flat=True)]
    after = [s for s in steps if s > paused_step]
    assert after and min(after) == paused_step + 1  # the resumed run carries on, it does not restart
    assert steps == sorted(steps) and len(steps) == len(set(steps))


@pytest.mark.mysql
def test_kill_9_of_the_child_is_recovered_from_the_last_checkpoint(team_user, tiny_base_model, make_version, worker):
    team, alice = team_user
    params = {**LONG, "max_steps": 60}
    task = services.training_task_create(user=alice, name="crashy", base_model=tiny_base_model,
                                         train_version=make_version(team), params=params)
    worker.start()
    wait_for(lambda: TrainingTask.objects.get(pk=task.pk).checkpoints.filter(step__gte=10).exists(), timeout=240,
             message="a checkpoint")
    pid = TrainingTask.objects.get(pk=task.pk).child_pid
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: status_of(task) in {"succeeded", "failed"}, timeout=300, message="recovery and finish")
    task.refresh_from_db()
    assert task.status == JobStatus.SUCCEEDED, (task.error_message, worker.log())
    assert task.recoveries == 1 and task.attempts == 2
    recovery = task.events.get(message__startswith="Recovering")
    assert "from checkpoint step-" in recovery.message and "signal 9" in recovery.message
    assert task.adapters.count() == 1  # one adapter: no duplicate run

    # The recovered run's adapter is interchangeable with one trained without interruption (same files,
    # LoRA configuration, tensor names, dtypes and shapes).
    from jobs.runtime import run_foreground
    from tests.reliability.helpers import adapter_format

    reference = services.training_task_create(user=alice, name="uninterrupted", base_model=tiny_base_model,
                                              train_version=task.train_version, params={**params, "max_steps": 2})
    assert run_foreground(reference) == JobStatus.SUCCEEDED
    assert adapter_format(task.adapters.get().path) == adapter_format(reference.adapters.get().path)
