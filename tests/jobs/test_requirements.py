"""Requirements: validated with field names, matched against a worker's recorded hardware at the claim, and a
queued job that no live worker can run says why, while team limits and priorities hold across workers."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from core.errors import ApplicationError
from jobs import runtime
from jobs.models import JobStatus, Worker
from jobs.requirements import requirements_parse, requirements_unmet
from jobs.scheduling import job_waiting_reason, live_workers
from tests.jobkind.models import CountJob

GiB = 1024**3


def hardware(name: str, *, gpus: tuple[int, ...] = (), labels: tuple[str, ...] = (), **fields) -> Worker:
    """A worker row as a worker process records it (no process behind it: a far-away host)."""
    return Worker.objects.create(
        name=name, host="far-away", pid=1, device="cuda" if gpus else "cpu", cpu_count=8,
        gpus=[{"index": str(i), "name": "GPU", "memory_bytes": m * GiB} for i, m in enumerate(gpus)],
        labels=list(labels), memory_total_bytes=64 * GiB, memory_free_bytes=32 * GiB, **fields)


def queued(team, name: str, **fields) -> CountJob:
    return CountJob.objects.create(name=name, team=team, status=JobStatus.QUEUED, queued_at=timezone.now(), **fields)


# --------------------------------------------------------------------------------------------- validation

@pytest.mark.parametrize(("data", "param"), [
    ({"gpus": 0}, "requirements.gpus"),
    ({"device": "tpu"}, "requirements.device"),
    ({"gpu_memory_gb": -1}, "requirements.gpu_memory_gb"),
    ({"labels": [""]}, "requirements.labels.0"),
    ({"colour": "blue"}, "requirements.colour"),
    ({"device": "cpu", "gpus": 2}, "requirements"),
    (["cuda"], "requirements"),
])
def test_invalid_requirements_name_the_field(data, param):
    with pytest.raises(ApplicationError) as exc:
        requirements_parse(data)
    assert exc.value.code == "invalid_parameter" and exc.value.param == param
    assert exc.value.message.startswith(param)


def test_gpus_or_gpu_memory_imply_cuda_and_only_what_was_asked_is_stored():
    assert requirements_parse({"gpus": 2}).to_dict() == {"device": "cuda", "gpus": 2}
    assert requirements_parse({"gpu_memory_gb": 40}).to_dict() == {"device": "cuda", "gpu_memory_gb": 40.0}
    assert requirements_parse(None).to_dict() == {}
    assert requirements_parse({"labels": [" a100 "]}).to_dict() == {"labels": ["a100"]}


# --------------------------------------------------------------------------------------------- matching

@pytest.mark.django_db
def test_a_worker_meets_a_requirement_only_with_the_hardware_it_names():
    cpu = hardware("cpu-box")
    gpu = hardware("gpu-box", gpus=(24, 80), labels=("a100", "eu"))
    assert requirements_unmet({}, cpu) is None and requirements_unmet({}, gpu) is None
    assert requirements_unmet({"device": "cuda"}, cpu) == "it has no CUDA GPU"
    assert requirements_unmet({"device": "cuda"}, gpu) is None
    assert requirements_unmet({"device": "cpu"}, gpu) == "it trains on cuda, not cpu"
    assert requirements_unmet({"gpu_memory_gb": 40}, gpu) is None  # one of its GPUs has 80 GiB
    assert requirements_unmet({"gpus": 2, "gpu_memory_gb": 40}, gpu) == "it has 2 GPUs (24 GiB, 80 GiB)"
    assert requirements_unmet({"gpus": 2}, gpu) is None
    assert requirements_unmet({"labels": ["a100"]}, gpu) is None
    assert requirements_unmet({"labels": ["a100", "us"]}, gpu) == "it lacks the label us"


@pytest.mark.django_db
def test_the_claim_skips_what_its_worker_cannot_run_and_takes_the_best_it_can(make_team):
    team_a, team_b = make_team("alpha"), make_team("beta")
    cpu = hardware("cpu-box")
    gpu_job = queued(team_a, "needs-gpu", priority=50, requirements={"device": "cuda"})
    cpu_low = queued(team_b, "cpu-low", priority=0)
    cpu_high = queued(team_b, "cpu-high", priority=10)
    job, _token = runtime.claim_next(hardware=cpu)
    assert job.pk == cpu_high.pk  # the GPU job outranks it, but this worker cannot run it
    gpu = hardware("gpu-box", gpus=(80,))
    job, _token = runtime.claim_next(hardware=gpu)
    assert job.pk == gpu_job.pk
    # team beta is at TEAM_MAX_RUNNING=1 whichever worker asks: nothing more to claim.
    assert runtime.claim_next(hardware=hardware("another-cpu")) is None
    assert CountJob.objects.get(pk=cpu_low.pk).status == JobStatus.QUEUED


@pytest.mark.django_db
def test_the_team_limit_holds_across_workers(make_team, settings):
    settings.TEAM_MAX_RUNNING = 1
    alpha, beta = make_team("alpha"), make_team("beta")
    first, second = queued(alpha, "a1", priority=5), queued(alpha, "a2", priority=5)
    other = queued(beta, "b1")
    w1, w2 = hardware("w1"), hardware("w2")
    assert runtime.claim_next(hardware=w1)[0].pk == first.pk
    assert runtime.claim_next(hardware=w2)[0].pk == other.pk  # a2 ranks higher, but its team is at its limit
    assert job_waiting_reason(CountJob.objects.get(pk=second.pk)) == (
        "Waiting for the team's 1 running job to finish (TEAM_MAX_RUNNING=1).")


# --------------------------------------------------------------------------------------------- waiting

@pytest.mark.django_db
def test_a_job_no_live_worker_can_run_says_why_in_its_log_and_its_reason(make_team):
    team = make_team("alpha")
    hardware("cpu-box")
    hardware("dead-gpu-box", gpus=(80,), heartbeat_at=timezone.now() - timedelta(minutes=5))
    assert [w.name for w in live_workers()] == ["cpu-box"]
    job = queued(team, "needs-gpu", requirements={"device": "cuda", "gpu_memory_gb": 40})
    runtime.enqueue(job)
    reason = job_waiting_reason(job)
    assert reason == "No live worker can run it: it needs 1 CUDA GPU with 40 GiB (cpu-box: it has no CUDA GPU)."
    event = job.events.get(level="warn")
    assert event.message.startswith(reason) and "stays queued" in event.message


@pytest.mark.django_db
def test_a_job_without_requirements_gets_no_warning_and_waits_for_a_busy_worker(make_team):
    team = make_team("alpha")
    job = queued(team, "plain")
    runtime.enqueue(job)
    assert not job.events.exists()
    assert job_waiting_reason(job) == "No worker is running: start one with `manage.py qcluster`."
    hardware("w1", running=[{"kind": "jobkind.countjob", "id": 999, "name": "x", "team": 0}])
    assert job_waiting_reason(job) == "Waiting for a free worker: w1 is busy."
    hardware("w2")
    assert job_waiting_reason(job) == ""


@pytest.mark.django_db
def test_an_idle_worker_asks_for_a_dispatch_when_it_could_run_a_waiting_job(make_team, monkeypatch):
    """The broker hands a wake-up to whichever cluster polls first, and a busy one keeps it until its job ends:
    the idle worker's own heartbeat finds the work."""
    woken = []
    monkeypatch.setattr(runtime, "wake_worker", lambda: woken.append(1))
    monkeypatch.setitem(runtime._me, "worker", None)
    monkeypatch.setitem(runtime._me, "running", None)
    assert runtime.heartbeat_once() is False and not woken  # nothing queued
    me = Worker.objects.get()  # the heartbeat recorded this process
    assert me.device in ("cpu", "cuda") and me.cpu_count >= 1 and me.memory_total_bytes > 0
    team = make_team("alpha")
    queued(team, "needs-gpu", requirements={"labels": ["nowhere"]})
    assert runtime.heartbeat_once() is False
    queued(team, "plain")
    assert runtime.heartbeat_once() is True and woken == [1]


@pytest.mark.django_db
def test_a_dispatch_wakes_one_other_free_worker_per_job_it_could_run(make_team, monkeypatch):
    woken = []
    monkeypatch.setattr(runtime, "wake_worker", lambda: woken.append(1))
    alpha, beta, gamma = make_team("alpha"), make_team("beta"), make_team("gamma")
    me = hardware("me")
    hardware("idle-1")
    hardware("busy", running=[{"kind": "jobkind.countjob", "id": 1, "name": "x", "team": 0}])
    for team in (alpha, beta, gamma):
        queued(team, f"job-{team.name}")
    assert runtime.wake_others(me) == 1 and woken == [1]  # three jobs, one free other worker
    hardware("idle-2")
    woken.clear()
    assert runtime.wake_others(me) == 2 and len(woken) == 2
