"""The dashboard's workers: each with its hardware and what it runs, on any host; jobs named only to their team."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from console import dashboard
from jobs.models import JobStatus, Worker
from tests.jobkind.models import CountJob

pytestmark = pytest.mark.django_db
GiB = 1024**3


def test_workers_show_their_hardware_and_what_each_runs(make_team, make_user, client):
    alpha, beta = make_team("alpha"), make_team("beta")
    alice = make_user("alice", alpha, "member")
    mine = CountJob.objects.create(name="alpha-count", team=alpha, status=JobStatus.RUNNING)
    theirs = CountJob.objects.create(name="beta-secret", team=beta, status=JobStatus.RUNNING)
    Worker.objects.create(name="gpu-a", host="gpu-host", pid=7, device="cuda", cpu_count=32, labels=["a100"],
                          gpus=[{"index": "0", "name": "NVIDIA A100", "memory_bytes": 80 * GiB}],
                          memory_total_bytes=256 * GiB, memory_free_bytes=200 * GiB,
                          running=[{"kind": "jobkind.countjob", "id": mine.pk, "name": mine.name, "team": alpha.pk}])
    Worker.objects.create(name="cpu-b", host="cpu-host", pid=8, cpu_count=2, memory_total_bytes=8 * GiB,
                          memory_free_bytes=4 * GiB,
                          running=[{"kind": "jobkind.countjob", "id": theirs.pk, "name": theirs.name,
                                    "team": beta.pk}])
    Worker.objects.create(name="gone", host="old-host", pid=9, heartbeat_at=timezone.now() - timedelta(minutes=10))

    workers = dashboard.dashboard_data(alice)["workers"]
    assert workers["alive"] == 2 and workers["source"] == "worker heartbeats"
    cpu, gpu, gone = workers["hosts"]  # live ones first, by name
    assert (gpu["name"], gpu["device"], gpu["cpu_count"], gpu["labels"]) == ("gpu-a", "cuda", 32, ["a100"])
    assert [(g["index"], g["name"]) for g in gpu["gpus"]] == [("0", "NVIDIA A100")]
    assert "80" in gpu["gpus"][0]["memory_human"] and "free of" in cpu["memory_human"]
    assert gpu["running"][0]["label"] == "count job alpha-count"
    assert cpu["running"] == [{"label": "a job of another team", "url": ""}]
    assert (gone["name"], gone["live"], gone["running"]) == ("gone", False, [])

    client.force_login(alice)
    panel = client.get("/admin/dashboard/").content.decode()
    assert 'data-worker="gpu-a"' in panel and "NVIDIA A100" in panel and "a100" in panel
    assert "alpha-count" in panel and "beta-secret" not in panel
