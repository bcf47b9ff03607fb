"""A training task's requirements: defaulted from the device the recipe plans for, given through the API, and
honoured by a real worker: a task requiring CUDA is claimed by no CPU worker, and its page and API say why."""

from __future__ import annotations

import pytest
from django.utils import timezone

from jobs import runtime
from jobs.models import JobStatus
from jobs.models import Worker as WorkerRow
from tests.jobkind.models import CountJob
from tests.training.conftest import wait_for
from training import services
from training.devices import detect_device
from training.models import TrainingTask


@pytest.fixture
def team_user(make_team, make_user):
    team = make_team("alpha")
    return team, make_user("alice", team, "admin")


@pytest.fixture
def planned_for(settings):
    """planned_for("cuda"): the web process plans tasks for that device (without touching CUDA)."""
    def plan(device: str) -> None:
        settings.TRAINING_DEVICE = device
        settings.TRAINING_MEMORY_LIMIT_BYTES = 16 * 1024**3
        detect_device.cache_clear()

    yield plan
    detect_device.cache_clear()


@pytest.mark.django_db
def test_a_task_planned_for_cuda_requires_a_cuda_worker_and_one_planned_for_cpu_runs_anywhere(
        team_user, tiny_base_model, make_version, planned_for):
    team, alice = team_user
    version = make_version(team)
    planned_for("cuda")
    gpu = services.training_task_create(user=alice, name="gpu", base_model=tiny_base_model, train_version=version)
    labelled = services.training_task_create(user=alice, name="labelled", base_model=tiny_base_model,
                                             train_version=version, requirements={"labels": ["a100"]})
    planned_for("cpu")
    cpu = services.training_task_create(user=alice, name="cpu", base_model=tiny_base_model, train_version=version)
    assert gpu.requirements == {"device": "cuda"}
    assert labelled.requirements == {"device": "cuda", "labels": ["a100"]}
    assert cpu.requirements == {}
    clone = services.training_task_clone(user=alice, task=labelled)
    assert clone.requirements == labelled.requirements


@pytest.mark.django_db
def test_the_api_refuses_bad_requirements_naming_the_field(team_user, tiny_base_model, make_version, token_for,
                                                           bearer):
    team, alice = team_user
    client = bearer(token_for(alice, team))
    response = client.post("/api/training/tasks", {"base_model": "tiny-llama", "train_version": make_version(team).pk,
                                                   "requirements": {"gpus": 0}}, content_type="application/json")
    assert response.status_code == 400, response.content
    assert response.json()["param"] == "requirements.gpus"
    assert not TrainingTask.objects.exists()


@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
def test_a_task_requiring_cuda_is_claimed_by_no_cpu_worker_and_its_page_and_api_say_why(
        team_user, tiny_base_model, make_version, token_for, bearer, client, worker):
    team, alice = team_user
    worker.env = {**worker.env, "WORKER_NAME": "cpu-1"}
    worker.start()
    wait_for(lambda: WorkerRow.objects.filter(name="cpu-1").exists(), timeout=60, message="the worker to register")
    api = bearer(token_for(alice, team))
    created = api.post("/api/training/tasks", {"name": "needs-gpu", "base_model": "tiny-llama", "priority": 10,
                                               "train_version": make_version(team).pk,
                                               "requirements": {"device": "cuda"}}, content_type="application/json")
    assert created.status_code == 201, created.content
    task_id = created.json()["id"]
    why = "No live worker can run it: it needs 1 CUDA GPU (cpu-1: it has no CUDA GPU)."
    assert created.json()["requirements"] == {"device": "cuda"} and created.json()["waiting_reason"] == why

    # A job of lower priority that the worker can run goes first: the worker is there, and skips the task.
    other = CountJob.objects.create(name="plain", team=team, status=JobStatus.QUEUED, queued_at=timezone.now())
    runtime.enqueue(other)
    wait_for(lambda: CountJob.objects.get(pk=other.pk).status == "succeeded", timeout=60,
             message=f"the CPU job to run\n{worker.log()[-3000:]}")
    task = TrainingTask.objects.get(pk=task_id)
    assert task.status == JobStatus.QUEUED and task.attempts == 0 and not task.worker

    body = api.get(f"/api/training/tasks/{task_id}").json()
    assert body["status"] == "queued" and body["waiting_reason"] == why
    assert task.events.filter(level="warn", message__startswith=why).exists()
    client.force_login(alice)
    page = client.get(f"/admin/training/trainingtask/{task_id}/change/").content.decode()
    assert 'id="lp-waiting"' in page and "cpu-1: it has no CUDA GPU" in page
    progress = client.get(f"/admin/training/trainingtask/{task_id}/progress.json").json()
    assert progress["waiting_reason"] == why
