"""The team's queue quota (TEAM_MAX_ACTIVE_JOBS) holds at every door and counts every job kind: with a limit
of one and one job already queued, /api/, the admin start form, the start_training command and the classifier
and evaluation create services all refuse a second job, and nothing is created."""

from __future__ import annotations

import io

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from classifier.models import ClassifierTask
from classifier.services import classifier_task_create
from core.errors import RateLimited
from evaluation.models import EvaluationRun
from evaluation.services import evaluation_run_create
from jobs.models import JobStatus
from tests.training.conftest import make_version, tiny_base_model, tiny_model_dir  # noqa: F401 - fixtures
from training.models import Adapter, TrainingTask

pytestmark = pytest.mark.django_db


@pytest.fixture
def full_team(settings, make_team, make_user, tiny_base_model, make_version, data_dir):  # noqa: F811 - fixtures
    """Team alpha with one queued training task and a limit of one active job."""
    settings.TEAM_MAX_ACTIVE_JOBS = 1
    team = make_team("alpha")
    member = make_user("mia", team, "member")
    version = make_version(team)
    TrainingTask.objects.create(name="running", team=team, created_by=member, base_model=tiny_base_model,
                                train_version=version, status=JobStatus.QUEUED, queued_at=timezone.now())
    return {"team": team, "member": member, "version": version, "base": tiny_base_model}


def _tasks() -> int:
    return TrainingTask.objects.count()


def test_the_api_answers_429(full_team, token_for, bearer):
    client = bearer(token_for(full_team["member"], full_team["team"]))
    response = client.post("/api/training/tasks", {"name": "second", "base_model": "tiny-llama",
                                                   "train_version": full_team["version"].pk,
                                                   "params": {"n_epochs": 1}}, content_type="application/json")
    assert response.status_code == 429, response.content
    assert response.json()["code"] == "quota_exceeded" and response.has_header("Retry-After")
    assert _tasks() == 1


def test_the_admin_start_form_shows_the_refusal_and_creates_nothing(full_team, client):
    client.force_login(full_team["member"])
    response = client.post("/admin/training/trainingtask/start/", {
        "name": "second", "team": full_team["team"].pk, "base_model": full_team["base"].pk,
        "train_version": full_team["version"].pk, "params": "{}", "priority": 0}, follow=True)
    assert response.status_code == 200
    messages = [str(m) for m in response.context["messages"]]
    assert any("active jobs (limit 1)" in m for m in messages), messages
    assert _tasks() == 1


def test_the_start_training_command_fails(full_team):
    with pytest.raises(CommandError, match=r"active jobs \(limit 1\)"):
        call_command("start_training", "--name", "second", "--team", "alpha", "--base-model", "tiny-llama",
                     "--dataset", str(full_team["version"].pk), "--user", "mia", stdout=io.StringIO())
    assert _tasks() == 1


def test_the_classifier_service_counts_the_training_task(full_team, make_version):  # noqa: F811 - fixture
    from catalog.models import BaseModel

    team = full_team["team"]
    encoder = BaseModel.objects.create(name="encoder", kind="encoder", path="/nowhere/enc", team=team)
    records = [{"text": f"question {i}", "label": "a" if i % 2 else "b"} for i in range(20)]
    version = make_version(team, records, name="questions", fmt="classification")
    with pytest.raises(RateLimited) as exc:
        classifier_task_create(user=full_team["member"], team=team, name="clf", base_model=encoder,
                               train_version=version)
    assert exc.value.status == 429
    assert not ClassifierTask.objects.exists()


def test_the_evaluation_service_counts_the_training_task(full_team, data_dir):
    team = full_team["team"]
    adapter = Adapter.objects.create(name="faq-bot", team=team, base_model=full_team["base"],
                                     path=str(data_dir / "adapters" / "faq"))
    with pytest.raises(RateLimited):
        evaluation_run_create(user=full_team["member"], adapter=adapter, dataset=str(full_team["version"].pk),
                              metrics="perplexity")
    assert not EvaluationRun.objects.exists()


def test_a_finished_job_frees_the_slot(full_team, token_for, bearer):
    TrainingTask.objects.update(status=JobStatus.SUCCEEDED, finished_at=timezone.now())
    client = bearer(token_for(full_team["member"], full_team["team"]))
    response = client.post("/api/training/tasks", {"name": "second", "base_model": "tiny-llama",
                                                   "train_version": full_team["version"].pk,
                                                   "params": {"n_epochs": 1}}, content_type="application/json")
    assert response.status_code == 201, response.content
