"""The team's queue quota (TEAM_MAX_ACTIVE_JOBS) on /v1/fine_tuning/jobs: it is the training service's rule
(``jobs.services.job_check_quota``), counts every job kind, and answers 429 with Retry-After."""

from __future__ import annotations

import pytest

from classifier.models import ClassifierTask
from jobs.models import JobStatus
from tests.openai_compat.test_openai_errors import assert_error, upload
from tests.training.tiny import chat_records
from training.models import TrainingTask

pytestmark = pytest.mark.django_db


@pytest.fixture
def alpha(make_team, make_user, token_for, bearer, tiny_base_model):
    team = make_team("alpha")
    alice = make_user("alice", team, "member")
    return team, bearer(token_for(alice, team))


def test_quota_counts_every_job_kind_and_answers_429_with_retry_after(alpha, settings, tiny_base_model,
                                                                      make_version):
    team, c = alpha
    settings.TEAM_MAX_ACTIVE_JOBS = 2
    file_id = upload(c, chat_records(12)).json()["id"]
    body = {"model": "tiny-llama", "training_file": file_id}
    assert c.post("/v1/fine_tuning/jobs", body, content_type="application/json").status_code == 200
    # A classifier task of the team is active too: the quota is full.
    ClassifierTask.objects.create(name="clf", team=team, base_model=tiny_base_model,
                                  train_version=make_version(team, name="labels"), status=JobStatus.QUEUED)
    refused = c.post("/v1/fine_tuning/jobs", body, content_type="application/json")
    err = assert_error(refused, 429, code="quota_exceeded")
    assert err["type"] == "rate_limit_error" and "limit 2" in err["message"]
    assert refused["Retry-After"] == "60"
    assert TrainingTask.objects.filter(team=team).count() == 1
    # Finished jobs free the quota.
    ClassifierTask.objects.filter(team=team).update(status=JobStatus.CANCELLED)
    assert c.post("/v1/fine_tuning/jobs", body, content_type="application/json").status_code == 200


def test_quota_is_per_team(alpha, settings, make_team, make_user, token_for, bearer):
    _team, c = alpha
    settings.TEAM_MAX_ACTIVE_JOBS = 1
    file_id = upload(c, chat_records(12)).json()["id"]
    assert c.post("/v1/fine_tuning/jobs", {"model": "tiny-llama", "training_file": file_id},
                  content_type="application/json").status_code == 200
    beta = make_team("beta")
    other = bearer(token_for(make_user("bob", beta, "member"), beta))
    other_file = upload(other, chat_records(12)).json()["id"]
    assert other.post("/v1/fine_tuning/jobs", {"model": "tiny-llama", "training_file": other_file},
                      content_type="application/json").status_code == 200


def test_the_api_door_sends_retry_after_too(alpha, settings, tiny_base_model, make_version):
    team, c = alpha
    settings.TEAM_MAX_ACTIVE_JOBS = 1
    version = make_version(team)
    body = {"base_model": "tiny-llama", "train_version": version.pk}
    assert c.post("/api/training/tasks", body, content_type="application/json").status_code == 201
    refused = c.post("/api/training/tasks", body, content_type="application/json")
    assert refused.status_code == 429 and refused.json()["code"] == "quota_exceeded"
    assert refused["Retry-After"] == "60"
