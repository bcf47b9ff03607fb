"""Training admin pages through the Django test client: lists, the start form, live progress, charts, actions."""

from __future__ import annotations

import pytest

from jobs import runtime
from jobs.models import JobStatus
from training import services
from training.models import TrainingTask

pytestmark = pytest.mark.django_db


@pytest.fixture
def world(make_team, make_user, tiny_base_model, make_version, client):
    team = make_team("alpha")
    alice = make_user("alice", team, "member")
    version = make_version(team)
    client.force_login(alice)
    return team, alice, version, client


def test_start_form_queues_a_task_and_shows_auto_values(world, tiny_base_model):
    team, _alice, version, client = world
    page = client.get("/admin/training/trainingtask/start/")
    assert page.status_code == 200 and "Queue training" in page.content.decode()
    response = client.post("/admin/training/trainingtask/start/", {
        "name": "from-admin", "team": team.pk, "base_model": tiny_base_model.pk, "train_version": version.pk,
        "params": '{"n_epochs": 2}', "priority": 0}, follow=True)
    task = TrainingTask.objects.get(name="from-admin")
    assert task.status == JobStatus.QUEUED and task.params == {"n_epochs": 2}
    assert "Auto values" in response.content.decode()


def test_start_form_shows_a_parameter_error_instead_of_failing(world, tiny_base_model):
    team, _alice, version, client = world
    response = client.post("/admin/training/trainingtask/start/", {
        "team": team.pk, "base_model": tiny_base_model.pk, "train_version": version.pk,
        "params": '{"lora_r": 0}', "priority": 0})
    assert response.status_code == 200
    assert "lora_r" in response.content.decode()
    assert not TrainingTask.objects.exists()


def test_list_detail_progress_chart_and_actions(world, tiny_base_model):
    _team, alice, version, client = world
    task = services.training_task_create(user=alice, name="visible", base_model=tiny_base_model,
                                         train_version=version)
    runtime.add_event(task, "Step 1/4: training loss=2.0000", type="metrics",
                   data={"step": 1, "total_steps": 4, "train_loss": 2.0, "learning_rate": 1e-3})
    listing = client.get("/admin/training/trainingtask/").content.decode()
    assert "visible" in listing and "job-status" in listing and "job-progress" in listing
    detail = client.get(f"/admin/training/trainingtask/{task.pk}/change/").content.decode()
    assert "Live progress" in detail and "btn-cancel" in detail
    progress = client.get(f"/admin/training/trainingtask/{task.pk}/progress.json").json()
    assert progress["status"] == "queued" and progress["events"]
    chart = client.get(f"/admin/training/trainingtask/{task.pk}/chart.png")
    assert chart["Content-Type"] == "image/png" and chart.content[:4] == b"\x89PNG"
    response = client.post(f"/admin/training/trainingtask/{task.pk}/control/cancel/")
    assert response.status_code == 302
    assert TrainingTask.objects.get(pk=task.pk).status == JobStatus.CANCELLED
    response = client.post("/admin/training/trainingtask/", {"action": "clone_tasks",
                                                             "_selected_action": [task.pk]})
    assert TrainingTask.objects.filter(cloned_from=task).exists()


def test_other_team_cannot_open_the_task_pages(world, tiny_base_model, make_team, make_user):
    _team, alice, version, client = world
    task = services.training_task_create(user=alice, name="secret", base_model=tiny_base_model,
                                         train_version=version)
    beta = make_team("beta")
    client.force_login(make_user("bob", beta, "member"))
    assert "secret" not in client.get("/admin/training/trainingtask/").content.decode()
    assert client.get(f"/admin/training/trainingtask/{task.pk}/progress.json").status_code == 404
    assert client.get(f"/admin/training/trainingtask/{task.pk}/chart.png").status_code == 404
    assert client.post(f"/admin/training/trainingtask/{task.pk}/control/cancel/").status_code == 404
    assert TrainingTask.objects.get(pk=task.pk).status == JobStatus.QUEUED


def test_viewer_sees_but_cannot_control(world, tiny_base_model, make_user):
    team, alice, version, client = world
    task = services.training_task_create(user=alice, name="look", base_model=tiny_base_model,
                                         train_version=version)
    client.force_login(make_user("victor", team, "viewer"))
    assert client.get(f"/admin/training/trainingtask/{task.pk}/change/").status_code == 200
    client.post(f"/admin/training/trainingtask/{task.pk}/control/cancel/")
    assert TrainingTask.objects.get(pk=task.pk).status == JobStatus.QUEUED
    assert client.get("/admin/training/trainingtask/start/").status_code == 403
