"""The admin dashboard's data: visibility, queue order, failures, team counts, workers and disk usage."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from catalog.models import BaseModel
from console import dashboard
from jobs.models import JobStatus
from tests.training.conftest import make_version  # noqa: F401 - shared fixture
from training.models import TrainingTask

pytestmark = pytest.mark.django_db


@pytest.fixture
def world(make_team, make_user, make_version):  # noqa: F811 - the imported fixture
    alpha, beta = make_team("alpha"), make_team("beta")
    base = BaseModel.objects.create(name="base-lm", kind=BaseModel.Kind.CAUSAL_LM, path="/nowhere")
    versions = {"alpha": make_version(alpha), "beta": make_version(beta)}
    users = {"alice": make_user("alice", alpha, "member"), "bob": make_user("bob", beta, "viewer"),
             "root": make_user("root", is_superuser=True, is_staff=True)}

    def task(team, name, status=JobStatus.QUEUED, **fields):
        now = timezone.now()
        defaults = {"queued_at": now}
        if status in (JobStatus.RUNNING, JobStatus.PAUSED):
            defaults.update(started_at=now - timedelta(minutes=3), heartbeat_at=now, worker="host-1:42")
        if status in (JobStatus.FAILED, JobStatus.SUCCEEDED, JobStatus.CANCELLED):
            defaults.update(started_at=now - timedelta(minutes=5), finished_at=now)
        defaults.update(fields)
        return TrainingTask.objects.create(name=name, team=team, base_model=base, train_version=versions[team.name],
                                           status=status, **defaults)

    return {"alpha": alpha, "beta": beta, "task": task, **users}


def names(rows) -> list[str]:
    return [r["name"] for r in rows]


def test_a_member_sees_only_their_teams_jobs_and_counts(world):
    world["task"](world["alpha"], "alpha-run", JobStatus.RUNNING, step=5, total_steps=20, eta_seconds=125)
    world["task"](world["beta"], "beta-run", JobStatus.RUNNING)
    world["task"](world["beta"], "beta-waits")
    world["task"](world["beta"], "beta-broke", JobStatus.FAILED, error_message="boom")

    mine = dashboard.dashboard_data(world["alice"])
    assert names(mine["running"]) == ["alpha-run"]
    assert mine["queued"] == [] and mine["failed"] == []
    assert [t["team"] for t in mine["teams"]] == ["alpha"]
    row = mine["running"][0]
    assert row["percent"] == 25.0 and row["eta_human"] == "2m05s" and row["team"] == "alpha"
    assert row["url"].endswith(f"/admin/training/trainingtask/{TrainingTask.objects.get(name='alpha-run').pk}/change/")

    theirs = dashboard.dashboard_data(world["bob"])
    assert names(theirs["running"]) == ["beta-run"] and names(theirs["queued"]) == ["beta-waits"]
    assert names(theirs["failed"]) == ["beta-broke"]

    everything = dashboard.dashboard_data(world["root"])
    assert sorted(names(everything["running"])) == ["alpha-run", "beta-run"]
    assert [t["team"] for t in everything["teams"]] == ["alpha", "beta"]


def test_a_user_without_a_team_sees_no_jobs(world, make_user):
    world["task"](world["alpha"], "alpha-run", JobStatus.RUNNING)
    loner = make_user("loner", is_staff=True)
    data = dashboard.dashboard_data(loner)
    assert data["running"] == [] and data["queued"] == [] and data["teams"] == []


def test_the_queue_is_listed_in_the_order_workers_take_it(world):
    now = timezone.now()
    world["task"](world["alpha"], "second", queued_at=now - timedelta(minutes=5))
    world["task"](world["alpha"], "third", queued_at=now - timedelta(minutes=1))
    world["task"](world["beta"], "first-by-priority", queued_at=now, priority=5)
    world["task"](world["alpha"], "oldest-low", queued_at=now - timedelta(hours=1), priority=-1)
    queue = dashboard.dashboard_data(world["root"])["queued"]
    assert names(queue) == ["first-by-priority", "second", "third", "oldest-low"]
    assert [r["position"] for r in queue] == [1, 2, 3, 4]
    assert queue[1]["waiting_human"] == "5m00s"
    # A member's positions count only what they may see.
    assert [(r["name"], r["position"]) for r in dashboard.dashboard_data(world["alice"])["queued"]][:1] == \
        [("second", 1)]


def test_recent_failures_show_the_reason_newest_first_and_leave_old_ones_out(world):
    now = timezone.now()
    world["task"](world["alpha"], "old-failure", JobStatus.FAILED, finished_at=now - timedelta(days=8))
    world["task"](world["alpha"], "oom", JobStatus.FAILED, finished_at=now - timedelta(hours=2),
                  error_code="out_of_memory", error_message="CUDA out of memory at step 12")
    world["task"](world["alpha"], "bad-data", JobStatus.FAILED, finished_at=now - timedelta(minutes=2),
                  error_code="dataset_error", error_message="x" * 1000)
    world["task"](world["alpha"], "fine", JobStatus.SUCCEEDED)
    failed = dashboard.dashboard_data(world["alice"])["failed"]
    assert names(failed) == ["bad-data", "oom"]
    assert failed[1]["error_code"] == "out_of_memory" and "step 12" in failed[1]["error_message"]
    assert len(failed[0]["error_message"]) <= 300


def test_team_counts_cover_data_jobs_and_adapters(world):
    from training.models import Adapter

    world["task"](world["alpha"], "q1")
    world["task"](world["alpha"], "r1", JobStatus.RUNNING)
    done = world["task"](world["alpha"], "ok", JobStatus.SUCCEEDED)
    world["task"](world["alpha"], "f1", JobStatus.FAILED)
    world["task"](world["beta"], "b1")
    Adapter.objects.create(name="ad1", team=world["alpha"], base_model=done.base_model, task=done, path="/x")
    Adapter.objects.create(name="ad-old", team=world["alpha"], base_model=done.base_model, path="/y",
                           status=Adapter.Status.ARCHIVED)
    (alpha,) = dashboard.dashboard_data(world["alice"])["teams"]
    assert (alpha["datasets"], alpha["versions"], alpha["adapters"]) == (1, 1, 1)
    assert (alpha["running"], alpha["queued"], alpha["failed"]) == (1, 1, 1)
    assert dict(alpha["job_counts"])["training tasks"] == 4
    assert {"training tasks", "classifier tasks", "evaluation runs"} <= set(dict(alpha["job_counts"]))


def test_disk_usage_adds_up_each_data_folder(tmp_path):
    root = tmp_path / "data"
    (root / "datasets" / "alpha").mkdir(parents=True)
    (root / "datasets" / "alpha" / "a.jsonl").write_bytes(b"x" * 1000)
    (root / "runs" / "training-1" / "checkpoints" / "step-5").mkdir(parents=True)
    (root / "runs" / "training-1" / "checkpoints" / "step-5" / "adapter.bin").write_bytes(b"y" * 5000)
    (root / "runs" / "training-1" / "log.txt").write_bytes(b"z" * 24)
    (root / "db.sqlite3").write_bytes(b"d" * 300)
    usage = dashboard.disk_usage(root, fresh=True)
    folders = {f["name"]: f for f in usage["folders"]}
    assert folders["datasets"]["bytes"] == 1000 and folders["datasets"]["files"] == 1
    assert folders["runs"]["bytes"] == 5024 and folders["runs"]["files"] == 2
    assert folders["models"]["bytes"] == 0 and folders["adapters"]["bytes"] == 0
    assert folders["other"]["bytes"] == 300
    assert usage["total_bytes"] == 6324 and usage["total_human"] == "6.2 KB"
    assert usage["filesystem"]["total"] > 0 and usage["filesystem"]["free"] > 0
    # Cached for a few seconds: a file added now shows at the next walk, not on every refresh.
    (root / "models").mkdir()
    (root / "models" / "m.safetensors").write_bytes(b"m" * 10)
    assert dashboard.disk_usage(root)["total_bytes"] == 6324
    assert dashboard.disk_usage(root, fresh=True)["total_bytes"] == 6334


def test_workers_come_from_job_heartbeats_and_queue_stats(world, monkeypatch):
    world["task"](world["beta"], "beta-run", JobStatus.RUNNING, worker="gpu-host:7", device="cuda")
    world["task"](world["alpha"], "silent", JobStatus.RUNNING, worker="dead-host:9",
                  heartbeat_at=timezone.now() - timedelta(hours=1))
    data = dashboard.dashboard_data(world["alice"])
    # Worker names are server facts (no job is named), shown to every console user.
    assert [w["worker"] for w in data["workers"]["busy"]] == ["gpu-host:7"]
    assert data["workers"]["busy"][0]["devices"] == ["cuda"]
    assert data["workers"]["source"] == "job heartbeats"
    (silent,) = data["running"]
    assert silent["stale"] is True

    class FakeStat:
        host, cluster_id, pid, status, workers = "web-1", "abc", 1234, "Idle", [11]
        tob = timezone.now() - timedelta(minutes=10)

    from django_q import status

    monkeypatch.setattr(status.Stat, "get_all", staticmethod(lambda broker=None: [FakeStat()]))
    workers = dashboard.dashboard_data(world["alice"])["workers"]
    assert workers["alive"] == 1 and workers["clusters"][0]["host"] == "web-1"
    assert workers["clusters"][0]["uptime_human"] == "10m00s"


def test_no_gpu_means_an_empty_list(monkeypatch):
    monkeypatch.setattr(dashboard.shutil, "which", lambda name: None)
    monkeypatch.setitem(dashboard._gpu_cache, "at", 0.0)
    assert dashboard.gpus() == []


def test_gpu_memory_is_read_from_nvidia_smi(monkeypatch):
    import subprocess

    monkeypatch.setattr(dashboard.shutil, "which", lambda name: "/usr/bin/nvidia-smi")
    monkeypatch.setitem(dashboard._gpu_cache, "at", 0.0)
    monkeypatch.setattr(dashboard.subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(
        a, 0, stdout="0, NVIDIA H100 80GB HBM3, 40960, 81559, 97\n"))
    (gpu,) = dashboard.gpus()
    assert gpu["name"] == "NVIDIA H100 80GB HBM3" and gpu["memory_percent"] == pytest.approx(50.2, abs=0.1)
    assert gpu["memory_human"] == "40.0 GB of 79.6 GB" and gpu["utilization"] == 97.0
    monkeypatch.setitem(dashboard._gpu_cache, "at", 0.0)


def test_index_page_and_fragment_show_only_visible_jobs(world, client):
    world["task"](world["alpha"], "alpha-run", JobStatus.RUNNING, step=3, total_steps=10)
    world["task"](world["beta"], "beta-secret-run", JobStatus.RUNNING)
    client.force_login(world["alice"])
    page = client.get("/admin/").content.decode()
    assert 'id="studio-dashboard"' in page and "alpha-run" in page and "beta-secret-run" not in page
    assert 'data-percent="30.0"' in page
    assert "Site administration" in page or "app-training" in page  # the app list stays below
    fragment = client.get("/admin/dashboard/")
    assert fragment.status_code == 200 and "alpha-run" in fragment.content.decode()
    assert "beta-secret-run" not in fragment.content.decode()
    body = client.get("/admin/dashboard/?format=json").json()
    assert [r["name"] for r in body["running"]] == ["alpha-run"]
    assert {f["name"] for f in body["disk"]["folders"]} >= {"datasets", "models", "adapters", "runs"}


def test_the_dashboard_needs_a_console_login(client):
    response = client.get("/admin/dashboard/")
    assert response.status_code == 302 and "/admin/login/" in response["Location"]
