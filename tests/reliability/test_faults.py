"""Faults against real processes: the queue worker killed, the database restarted, a full disk while a
checkpoint is written, a damaged latest checkpoint, an upload cut off mid-file.

The child ``kill -9`` case lives in tests/training/test_worker.py
(``test_kill_9_of_the_child_is_recovered_from_the_last_checkpoint``), which also compares the adapter's
format with an uninterrupted run's.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import time

import pytest
from django.db import connection

from jobs import services as job_services
from jobs.models import JobStatus
from ml.train import checkpoints as ckpt
from tests.reliability.conftest import mysql_env, wait_for
from tests.reliability.helpers import pid_alive
from training import services
from training.models import TrainingTask

pytestmark = [pytest.mark.django_db(transaction=True)]

LONG = {"n_epochs": 1, "max_steps": 60, "batch_size": 1, "save_steps": 5, "lora_r": 2}


@pytest.fixture
def team_user(make_team, make_user):
    team = make_team("alpha")
    return team, make_user("alice", team, "admin")


def row(task) -> TrainingTask:
    return TrainingTask.objects.get(pk=task.pk)


@pytest.mark.slow
@pytest.mark.mysql
def test_qcluster_killed_and_restarted_recovers_the_task_without_running_it_twice(
        team_user, tiny_base_model, make_version, worker, settings):
    settings.JOB_STALE_SECONDS = 10
    team, alice = team_user
    task = services.training_task_create(user=alice, name="cluster-dies", base_model=tiny_base_model,
                                         train_version=make_version(team), params=LONG)
    worker.start()
    wait_for(lambda: row(task).checkpoints.filter(step__gte=5).exists(), timeout=240, message="a checkpoint")
    before = row(task)
    child, holder = before.child_pid, before.worker
    worker.kill(signal.SIGKILL)  # the whole qcluster: sentinel, pusher, monitor and the supervising worker
    # The supervised child dies with its supervisor (PR_SET_PDEATHSIG): no orphan keeps training.
    wait_for(lambda: not pid_alive(child), timeout=30, message="the orphaned child to die")
    assert row(task).status == JobStatus.RUNNING  # nobody has noticed yet
    last_checkpoint = max(row(task).checkpoints.values_list("step", flat=True))

    worker.start()  # a restarted worker dispatches at once and finds the dead holder
    wait_for(lambda: row(task).status in {"succeeded", "failed"}, timeout=300, message="recovery and finish")
    task = row(task)
    assert task.status == JobStatus.SUCCEEDED, (task.error_message, worker.log())
    assert task.recoveries == 1 and task.attempts == 2
    recovery = task.events.get(message__startswith="Recovering")
    assert "from checkpoint step-" in recovery.message and holder.split(" ")[0] in recovery.message
    resumed = task.events.get(message__startswith="Resuming from")
    resumed_step = int(resumed.message.split("step-")[1].rstrip("."))
    assert resumed_step == last_checkpoint  # nothing saved was lost
    assert task.adapters.count() == 1  # one result: the task was not run a second time from the start
    # The second run logged from the checkpoint on: its first step follows the checkpoint's, and the last step
    # is reached once.
    second = [d["step"] for d in task.events.filter(type="metrics", id__gt=resumed.id).values_list("data", flat=True)]
    assert second and second[0] == resumed_step + 1 and second == sorted(second)
    assert task.step == 60 and second.count(60) == 1


@pytest.mark.slow
@pytest.mark.mysql
@pytest.mark.skipif(not mysql_env(), reason="restarts the MariaDB server: only in the MySQL pass of CI")
def test_database_restart_under_a_running_worker_resumes_heartbeats_and_progress(
        team_user, tiny_base_model, make_version, worker):
    team, alice = team_user
    task = services.training_task_create(user=alice, name="db-restart", base_model=tiny_base_model,
                                         train_version=make_version(team), params={**LONG, "max_steps": 80})
    worker.start()
    wait_for(lambda: row(task).step >= 5, timeout=240, message="training to run")
    connection.close()
    down_at = time.time()
    try:
        subprocess.run(["mysqladmin", "-uroot", "-h127.0.0.1", "shutdown"], check=True, timeout=120)
        time.sleep(8)  # the worker and its child keep running without a database for a while
    finally:
        start_mariadb()
    up_at = time.time()
    connection.close()
    wait_for(lambda: _safe(lambda: row(task).status in {"succeeded", "failed"}), timeout=300,
             message="the task to finish after the restart")
    task = row(task)
    assert task.status == JobStatus.SUCCEEDED, (task.error_message, worker.log())
    assert task.recoveries == 0 and task.attempts == 1  # the same run carried on: nothing was lost
    assert task.heartbeat_at.timestamp() > up_at and task.step == 80
    steps = [d["step"] for d in task.events.filter(type="metrics").values_list("data", flat=True)]
    assert steps == sorted(steps) and len(steps) == len(set(steps))
    # The outage was noticed and ridden out (logged by the child), not turned into a failure.
    with open(task.log_path, errors="replace") as fh:
        assert "database unavailable" in fh.read()
    assert down_at < up_at
    assert task.adapters.count() == 1


def start_mariadb() -> None:
    if subprocess.run(["mysqladmin", "-uroot", "-h127.0.0.1", "status"], capture_output=True).returncode == 0:
        return
    subprocess.run(["start-stop-daemon", "--start", "--oknodo", "--background", "--exec", "/usr/sbin/mariadbd"],
                   check=False, timeout=60)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if subprocess.run(["mysqladmin", "-uroot", "-h127.0.0.1", "status"], capture_output=True).returncode == 0:
            return
        time.sleep(1)
    raise AssertionError("MariaDB did not come back within 120 s")


def _safe(fn):
    try:
        return fn()
    except Exception:  # noqa: BLE001 - the test's own connection may still be reconnecting
        connection.close()
        return False


# ------------------------------------------------------------------------------------------------------------
# Disk full and damaged checkpoints: the real recipe in this process, torch.save failing like a full disk.

FAST = {"n_epochs": 1, "max_steps": 8, "batch_size": 2, "save_steps": 2, "lora_r": 2}


def _fill_disk_on_checkpoint(monkeypatch, failing_step: int, saved: list):
    """torch.save writes half of optimizer.pt of the checkpoint at ``failing_step``, then ENOSPC."""
    import torch

    real = torch.save

    def save(obj, f, *args, **kwargs):
        name = str(f)
        if name.endswith("optimizer.pt"):
            saved.append(name)
            if f"checkpoint-{failing_step}" in name:
                with open(name, "wb") as fh:
                    fh.write(b"\0" * 1000)
                raise OSError(errno.ENOSPC, "No space left on device", name)
        return real(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)


def _run_until_disk_full(team, alice, tiny_base_model, make_version, monkeypatch) -> TrainingTask:
    from jobs import runtime
    saved: list[str] = []
    _fill_disk_on_checkpoint(monkeypatch, 6, saved)
    task = services.training_task_create(user=alice, name="disk-full", base_model=tiny_base_model,
                                         train_version=make_version(team), params=FAST)
    assert runtime.run_foreground(task) == JobStatus.FAILED
    monkeypatch.undo()
    assert any("checkpoint-6" in s for s in saved)
    return row(task)


def test_disk_full_while_saving_a_checkpoint_fails_clearly_and_keeps_the_previous_one(
        team_user, tiny_base_model, make_version, monkeypatch):
    from safetensors.torch import load_file

    team, alice = team_user
    task = _run_until_disk_full(team, alice, tiny_base_model, make_version, monkeypatch)
    assert task.error_code == "disk_full"
    assert "disk is full" in task.error_message and "resume" in task.error_message
    assert task.events.filter(level="error", message__contains="disk is full").exists()
    run = ckpt.list_checkpoints(_run_dir(task))
    assert [s for s, _ in run] == [2, 4]  # the step-6 save left no folder behind
    folder = run[-1][1]
    assert ckpt.checkpoint_problem(folder) is None
    assert load_file(str(folder / "adapter_model.safetensors"))  # loadable
    leftovers = [p.name for p in folder.parent.iterdir() if p.name.startswith(".")]
    assert leftovers == []  # no half-written temporary folder either
    assert services.training_task_latest_checkpoint(task) == str(folder)

    # Space freed: a retry continues from step 4 and finishes.
    from jobs import runtime
    job_services.job_retry(user=alice, job=task)
    assert runtime.run_foreground(row(task)) == JobStatus.SUCCEEDED
    task = row(task)
    assert task.events.filter(message="Retry from step-4.").exists() and task.step == 8


def test_a_damaged_latest_checkpoint_is_skipped_and_the_run_resumes_from_the_previous_one(
        team_user, tiny_base_model, make_version, monkeypatch):
    from jobs import runtime
    team, alice = team_user
    task = _run_until_disk_full(team, alice, tiny_base_model, make_version, monkeypatch)
    run = dict(ckpt.list_checkpoints(_run_dir(task)))
    weights = run[4] / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # damaged after it was published
    assert services.training_task_latest_checkpoint(task) == str(run[2])

    # The crash-recovery path picks the same fallback: a running claim whose process died.
    TrainingTask.objects.filter(pk=task.pk).update(status=JobStatus.QUEUED, recoveries=0)
    token = runtime.claim(row(task))
    assert runtime.recover_or_fail(row(task), token, "simulated crash") == JobStatus.QUEUED
    assert row(task).resume_from == str(run[2])
    assert runtime.run_foreground(row(task)) == JobStatus.SUCCEEDED
    task = row(task)
    assert task.events.filter(message__startswith="Recovering from checkpoint step-2").exists()
    assert task.events.filter(message="Resuming from step-2.").exists() and task.step == 8


def _run_dir(task):
    from jobs import runtime
    return runtime.run_dir(task)


# ------------------------------------------------------------------------------------------------------------
# An upload cut off mid-file.


@pytest.mark.slow
@pytest.mark.mysql
def test_an_upload_cut_off_mid_file_creates_no_version_and_leaves_no_file(
        make_team, make_user, token_for, server, data_dir):
    from datasets_app.models import Dataset, DatasetVersion

    team = make_team("alpha")
    token = token_for(make_user("alice", team, "member"), team)
    srv = server()
    line = json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]})
    part = (b"--XX\r\nContent-Disposition: form-data; name=\"name\"\r\n\r\nfaq\r\n"
            b"--XX\r\nContent-Disposition: form-data; name=\"file\"; filename=\"faq.jsonl\"\r\n"
            b"Content-Type: application/octet-stream\r\n\r\n" + (line.encode() + b"\n") * 2000)
    head = (f"POST /api/datasets HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: multipart/form-data; boundary=XX\r\nContent-Length: {len(part) + 100_000}\r\n\r\n")
    with socket.create_connection(("127.0.0.1", srv.port)) as sock:
        sock.sendall(head.encode() + part)  # most of the file, then the client goes away
        time.sleep(0.5)
    # A complete upload afterwards still works (the server is fine), and the cut one left nothing behind.
    import requests

    ok = requests.post(f"{srv.url}/api/datasets", headers={"Authorization": f"Bearer {token}"},
                       data={"name": "faq"}, files={"file": ("faq.jsonl", (line + "\n") * 20)}, timeout=60)
    assert ok.status_code == 201, ok.text
    assert DatasetVersion.objects.count() == 1 and Dataset.objects.count() == 1
    stored = sorted(p.name for p in (data_dir / "datasets").rglob("*") if p.is_file())
    assert stored == [f"{ok.json()['sha256']}.jsonl"], stored  # no temporary or partial file
    assert "Traceback" not in srv.log()
    assert os.listdir(data_dir / "datasets" / "alpha") == stored
