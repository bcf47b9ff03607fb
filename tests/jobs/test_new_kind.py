"""A job kind registered by an app the job system has never heard of (``tests.jobkind``) runs through the same
claim, JobRunner endings, control services and supervised child as the project's own kinds."""

from __future__ import annotations

import pytest

from jobs import runtime, services
from jobs.models import JobStatus
from jobs.registry import get_kind, kind_of, kinds
from tests.jobkind.models import CountJob
from tests.training.conftest import worker_env  # noqa: F401 - the fixture

pytestmark = pytest.mark.django_db


@pytest.fixture
def alice(make_team, make_user):
    team = make_team("alpha")
    return team, make_user("alice", team, "member")


def queued(team, user, **fields) -> CountJob:
    job = CountJob.objects.create(name=fields.pop("name", "count"), team=team, created_by=user,
                                  status=JobStatus.QUEUED, **fields)
    runtime.add_event(job, "Created.")
    return job


def test_the_kind_is_registered_from_its_app_and_found_by_its_rows(alice):
    team, user = alice
    job = queued(team, user)
    assert get_kind("count").model is CountJob
    assert kind_of(job).name == "count"
    assert "count" in [k.name for k in kinds()]


def test_success_is_recorded_with_what_the_runner_registered(alice):
    team, user = alice
    job = queued(team, user, target=4)
    assert runtime.run_foreground(job) == JobStatus.SUCCEEDED
    job.refresh_from_db()
    assert (job.step, job.total_steps, job.total, job.metrics) == (4, 4, 10, {"counted": 4})
    assert job.finished_at is not None and job.eta_seconds is None
    assert job.events.filter(message="Counted to 4.").exists()


def test_an_unexpected_error_ends_as_a_classified_failure(alice):
    team, user = alice
    job = queued(team, user, behaviour="crash")
    assert runtime.run_foreground(job) == JobStatus.FAILED
    job.refresh_from_db()
    assert job.error_code == "internal_error"
    assert "ZeroDivisionError: the kind's own bug" in job.error_message
    assert job.events.filter(level="error", message__startswith="Failed:").exists()


def test_a_failure_the_runner_classified_keeps_its_code(alice):
    team, user = alice
    job = queued(team, user, behaviour="refuse", target=7)
    runtime.run_foreground(job)
    job.refresh_from_db()
    assert (job.status, job.error_code, job.error_message) == ("failed", "bad_target", "cannot count to 7")


def test_pause_then_resume_continues_from_the_kinds_checkpoint(alice):
    team, user = alice
    job = queued(team, user, target=5)
    CountJob.objects.filter(pk=job.pk).update(pause_requested=True)
    # A pause requested before the claim is cleared by the claim; ask again once it runs.
    job.refresh_from_db()
    token = runtime.claim(job)
    CountJob.objects.filter(pk=job.pk).update(pause_requested=True)
    job.refresh_from_db()
    kind = get_kind("count")
    assert kind.runner_class()(job, runtime.JobContext(job, token)).handle() == JobStatus.PAUSED
    job.refresh_from_db()
    assert job.status == JobStatus.PAUSED and job.resume_from == "step-0"
    CountJob.objects.filter(pk=job.pk).update(checkpoint="step-2")
    job.refresh_from_db()
    services.job_resume(user=user, job=job)
    job.refresh_from_db()
    assert job.status == JobStatus.QUEUED and job.resume_from == "step-2"
    assert job.events.filter(message="Resumed from step-2.").exists()
    assert runtime.run_foreground(job) == JobStatus.SUCCEEDED


def test_cancel_and_retry_go_through_the_shared_services(alice):
    team, user = alice
    job = queued(team, user)
    services.job_cancel(user=user, job=job)
    job.refresh_from_db()
    assert job.status == JobStatus.CANCELLED
    services.job_retry(user=user, job=job)
    job.refresh_from_db()
    assert job.status == JobStatus.QUEUED


def test_the_team_quota_counts_the_new_kind_too(alice, settings):
    team, user = alice
    settings.TEAM_MAX_ACTIVE_JOBS = 1
    queued(team, user)
    with pytest.raises(Exception) as exc:
        services.job_check_quota(team)
    assert getattr(exc.value, "status", None) == 429 and exc.value.code == "quota_exceeded"


@pytest.mark.django_db(transaction=True)
def test_the_supervisor_runs_the_kind_in_a_child_process(alice, worker_env, monkeypatch):  # noqa: F811 - the fixture
    team, user = alice
    # The child (manage.py run_job count <pk>) must open this test's database and DATA_DIR.
    monkeypatch.setenv("DATABASE_URL", worker_env["DATABASE_URL"])
    monkeypatch.setenv("DATA_DIR", worker_env["DATA_DIR"])
    job = queued(team, user, target=3)
    claimed = runtime.claim_next()
    assert claimed is not None and claimed[0].pk == job.pk
    assert runtime.supervise(*claimed) == JobStatus.SUCCEEDED
    job.refresh_from_db()
    assert job.total == 6 and job.child_pid is None and job.log_path
