"""A worker's identity and record, and the periodic dispatch: it records the worker, recovers what dead workers
held, and claims nothing its worker cannot run."""

from __future__ import annotations

import os
import socket
from datetime import timedelta

import pytest
from django.utils import timezone

from jobs import runtime, scheduling
from jobs.models import JobStatus, Worker
from tests.jobkind.models import CountJob


def test_the_worker_is_named_by_worker_name_or_host_and_pid(settings):
    settings.WORKER_NAME = ""
    assert scheduling.worker_name() == f"{socket.gethostname()}:{os.getpid()}"
    assert scheduling.supervisor_id() == f"{socket.gethostname()}:{os.getpid()}"
    settings.WORKER_NAME = "gpu-a"
    settings.Q_CLUSTER = {**settings.Q_CLUSTER, "workers": 1}
    assert scheduling.worker_name() == "gpu-a"
    # The job's column keeps host:pid first: a restarted worker on the same host recovers a dead one's job at once.
    assert scheduling.supervisor_id() == f"{socket.gethostname()}:{os.getpid()} (gpu-a)"
    settings.Q_CLUSTER = {**settings.Q_CLUSTER, "workers": 3}
    assert scheduling.worker_name() == f"gpu-a:{os.getpid()}"


def test_gpus_are_those_cuda_visible_devices_leaves_to_the_worker(monkeypatch):
    gpus = [{"index": "0", "uuid": "GPU-aaa", "name": "A", "memory_bytes": 1},
            {"index": "1", "uuid": "GPU-bbb", "name": "B", "memory_bytes": 2}]
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert scheduling._visible(gpus) == gpus
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    assert [(g["index"], g["name"]) for g in scheduling._visible(gpus)] == [("0", "B")]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-bbb,GPU-aaa")
    assert [g["name"] for g in scheduling._visible(gpus)] == ["B", "A"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")
    assert scheduling._visible(gpus) == []


@pytest.mark.django_db
def test_a_dispatch_records_its_worker_recovers_a_dead_workers_job_and_skips_what_it_cannot_run(
        make_team, settings, monkeypatch):
    settings.WORKER_NAME = "cpu-box"
    settings.WORKER_LABELS = ["eu"]
    monkeypatch.setitem(runtime._me, "worker", None)
    monkeypatch.setattr(runtime, "wake_worker", lambda: None)
    team = make_team("alpha")
    stale = timezone.now() - timedelta(seconds=settings.JOB_STALE_SECONDS + 60)
    job = CountJob.objects.create(name="orphan", team=team, status=JobStatus.RUNNING, run_token="t" * 32,
                                  worker="gone-host:1 (gpu-a)", heartbeat_at=stale, attempts=1,
                                  requirements={"labels": ["us"]})
    assert runtime.dispatch() == 0
    me = Worker.objects.get(name="cpu-box")
    assert me.labels == ["eu"] and me.running == [] and me.cpu_count >= 1
    job.refresh_from_db()
    assert (job.status, job.recoveries, job.run_token) == (JobStatus.QUEUED, 1, "")
    assert job.events.filter(message__startswith="Recovering from the start: no heartbeat").exists()
    assert scheduling.job_waiting_reason(job) == ("No live worker can run it: it needs labels us "
                                                  "(cpu-box: it lacks the label us).")
