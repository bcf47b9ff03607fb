"""The events fire from what really happens: job endings of any kind (the test kind ``tests.jobkind``), a
training task's ending as OpenAI's ``fine_tuning.job.*``, an evaluation run's, and adapter stage changes."""

from __future__ import annotations

import json

import pytest

from jobs import runtime
from jobs import services as job_services
from jobs.models import JobStatus
from notifications import services, signing
from notifications.models import WebhookDelivery
from tests.jobkind.models import CountJob
from tests.notifications.conftest import run_queued

pytestmark = pytest.mark.django_db


@pytest.fixture
def hooked(admin_of, receiver, queued):
    """(team, ada, subscribe): subscribe(events) -> the endpoint's secret."""
    team, ada = admin_of

    def subscribe(events):
        return services.webhook_endpoint_create(user=ada, team=team, url=receiver.url, events=events)[1]

    return team, ada, subscribe


def payloads(receiver) -> list[dict]:
    return [json.loads(r.body) for r in receiver.requests]


def count_job(team, user, **fields) -> CountJob:
    return CountJob.objects.create(name="count", team=team, created_by=user, status=JobStatus.QUEUED, **fields)


def test_a_job_of_any_kind_that_succeeds_is_announced(hooked, receiver, queued, django_capture_on_commit_callbacks):
    team, ada, subscribe = hooked
    secret = subscribe(["job.succeeded", "job.failed"])
    job = count_job(team, ada, target=2)
    with django_capture_on_commit_callbacks(execute=True):
        assert runtime.run_foreground(job) == JobStatus.SUCCEEDED
    assert run_queued(queued) == ["succeeded"]
    (payload,) = payloads(receiver)
    assert payload["type"] == "job.succeeded"
    assert payload["data"] == {"id": job.pk, "kind": "count", "name": "count", "status": "succeeded",
                               "error_code": None}
    signing.verify(secret, receiver.requests[0].headers, receiver.requests[0].body)


def test_a_failed_job_is_announced_with_its_error_code(hooked, receiver, queued, django_capture_on_commit_callbacks):
    team, ada, subscribe = hooked
    subscribe(["job.failed"])
    job = count_job(team, ada, behaviour="refuse")
    with django_capture_on_commit_callbacks(execute=True):
        assert runtime.run_foreground(job) == JobStatus.FAILED
    run_queued(queued)
    (payload,) = payloads(receiver)
    assert payload["type"] == "job.failed" and payload["data"]["error_code"] == "bad_target"


def test_another_teams_endpoint_hears_nothing(hooked, make_team, make_user, receiver, queued,
                                              django_capture_on_commit_callbacks):
    _team, _ada, subscribe = hooked
    subscribe(["job.succeeded"])
    other = make_team("beta")
    bob = make_user("bob", other, "member")
    with django_capture_on_commit_callbacks(execute=True):
        runtime.run_foreground(count_job(other, bob))
    assert queued == [] and not WebhookDelivery.objects.exists()


@pytest.fixture
def training_setup(hooked, tiny_base_model, make_version):
    team, ada, subscribe = hooked
    return team, ada, subscribe, make_version(team)


def _task(ada, version, model, **params):
    from training.services import training_task_create

    return training_task_create(user=ada, name="faq-bot", base_model=model, train_version=version,
                                params=params or None)


def test_a_cancelled_training_task_is_announced_in_openai_shape(training_setup, tiny_base_model, receiver, queued,
                                                                django_capture_on_commit_callbacks):
    team, ada, subscribe, version = training_setup
    subscribe(["fine_tuning.job.succeeded", "fine_tuning.job.failed", "fine_tuning.job.cancelled"])
    with django_capture_on_commit_callbacks(execute=True):
        task = _task(ada, version, tiny_base_model)
        job_services.job_cancel(user=ada, job=task)
    run_queued(queued)
    (payload,) = payloads(receiver)
    assert set(payload) == {"object", "id", "type", "created_at", "data"}
    assert (payload["object"], payload["type"], payload["data"]) == ("event", "fine_tuning.job.cancelled",
                                                                     {"id": f"ftjob-{task.pk}"})


def test_a_training_task_that_trains_to_the_end_is_announced_as_succeeded(training_setup, tiny_base_model, receiver,
                                                                         queued, django_capture_on_commit_callbacks):
    team, ada, subscribe, version = training_setup
    subscribe(["fine_tuning.job.succeeded", "job.succeeded"])
    task = _task(ada, version, tiny_base_model, n_epochs=1, batch_size=4, lora_r=4, max_steps=2, save_steps=100)
    with django_capture_on_commit_callbacks(execute=True):
        assert runtime.run_foreground(task) == JobStatus.SUCCEEDED
    run_queued(queued)
    got = {p["type"]: p["data"] for p in payloads(receiver)}
    assert got["fine_tuning.job.succeeded"] == {"id": f"ftjob-{task.pk}"}
    assert got["job.succeeded"]["kind"] == "training"


def test_an_evaluation_runs_ending_and_an_adapters_stage_change_are_announced(training_setup, tiny_base_model,
                                                                             receiver, queued, make_user,
                                                                             django_capture_on_commit_callbacks):
    from evaluation.models import EvaluationRun
    from training import lifecycle
    from training.models import Adapter

    team, ada, subscribe, version = training_setup
    subscribe(["evaluation.run.cancelled", "adapter.stage_changed", "adapter.production_requested"])
    adapter = Adapter.objects.create(name="faq", team=team, base_model=tiny_base_model, path="/nowhere",
                                     created_by=ada)
    run = EvaluationRun.objects.create(name="eval-faq", team=team, created_by=ada, adapter=adapter,
                                       dataset_version=version, status=JobStatus.QUEUED)
    bob = make_user("bob", team, "member")
    with django_capture_on_commit_callbacks(execute=True):
        job_services.job_cancel(user=ada, job=run)
        lifecycle.adapter_promote(user=ada, adapter=adapter, stage="candidate")
        lifecycle.adapter_promote(user=bob, adapter=adapter, stage="production")  # a member's: a request
    run_queued(queued)
    got = [(p["type"], p["data"]) for p in payloads(receiver)]
    assert got[0] == ("evaluation.run.cancelled", {"id": run.pk, "name": "eval-faq", "status": "cancelled",
                                                   "adapter_id": adapter.pk, "error_code": None})
    assert got[1][0] == "adapter.stage_changed"
    assert {k: got[1][1][k] for k in ("id", "from_stage", "to_stage", "actor")} == {
        "id": adapter.pk, "from_stage": "draft", "to_stage": "candidate", "actor": "ada"}
    assert got[2][0] == "adapter.production_requested" and got[2][1]["actor"] == "bob"
