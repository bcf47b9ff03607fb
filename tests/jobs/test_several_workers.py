"""Several real queue workers (``manage.py qcluster`` with their own WORKER_NAME) against one database: they run
two teams' jobs at the same time, never one job twice, and a killed worker's job recovers on the other.

These start processes that share the test database, so they run in both CI passes (SQLite, then MariaDB)."""

from __future__ import annotations

import signal

import pytest
from django.utils import timezone

from jobs import runtime
from jobs.models import JobStatus
from jobs.models import Worker as WorkerRow
from tests.jobkind.models import CountJob
from tests.jobs.conftest import Worker, wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow, pytest.mark.mysql]
ENDED = {"succeeded", "failed", "cancelled"}


@pytest.fixture
def workers(worker_env, tmp_path):
    started: list[Worker] = []

    def start(name: str, **env) -> Worker:
        w = Worker({**worker_env, "WORKER_NAME": name, **env}, tmp_path / f"qcluster-{name}.log").start()
        started.append(w)
        return w

    yield start
    for w in started:
        w.kill(signal.SIGKILL)


def queue(team, user, name: str, **fields) -> CountJob:
    job = CountJob.objects.create(name=name, team=team, created_by=user, status=JobStatus.QUEUED,
                                  queued_at=timezone.now(), behaviour="wait", **fields)
    runtime.add_event(job, "Created.")
    runtime.enqueue(job)  # autocommit: the wake-up is sent at once
    return job


def row(job) -> CountJob:
    return CountJob.objects.get(pk=job.pk)


def logs(*ws: Worker) -> str:
    return "\n".join(w.log()[-3000:] for w in ws)


def test_two_workers_run_two_teams_jobs_at_once_and_a_killed_workers_job_recovers_on_the_other(
        make_team, make_user, workers):
    alpha, beta = make_team("alpha"), make_team("beta")
    alice, bob = make_user("alice", alpha), make_user("bob", beta)
    w1, w2 = workers("w1"), workers("w2")
    wait_for(lambda: WorkerRow.objects.filter(name__in=["w1", "w2"]).count() == 2, timeout=60,
             message="both workers to register")

    a = queue(alpha, alice, "a", target=80)
    b = queue(beta, bob, "b", target=30)

    # Both run at the same time, each on its own worker.
    both = wait_for(lambda: (lambda ra, rb: (ra, rb) if ra.status == rb.status == "running" else None)(row(a), row(b)),
                    timeout=40, message=f"both jobs running at once\n{logs(w1, w2)}")
    holders = {job.name: job.worker for job in both}
    assert holders["a"].endswith(("(w1)", "(w2)")) and holders["b"].endswith(("(w1)", "(w2)"))
    assert holders["a"][-4:] != holders["b"][-4:], holders
    def reported() -> dict[str, list[int]]:
        return {w.name: [e["id"] for e in w.running] for w in WorkerRow.objects.filter(name__in=["w1", "w2"])}

    # Each worker's row says which job it runs (the dashboard shows it).
    wait_for(lambda: sorted(reported().values()) == sorted([[a.pk], [b.pk]]), timeout=15,
             message="each worker to report the job it runs")

    # Kill the worker that holds "a" (its whole process group: cluster, queue worker; the child dies with them).
    wait_for(lambda: row(a).step >= 3, timeout=30, message="a few steps of a")
    first_holder = row(a).worker
    victim, survivor = (w1, "w2") if first_holder.endswith("(w1)") else (w2, "w1")
    victim.kill(signal.SIGKILL)

    wait_for(lambda: row(a).status in ENDED and row(b).status in ENDED, timeout=50,
             message=f"both jobs to end\n{logs(w1, w2)}")
    a, b = row(a), row(b)
    assert (a.status, b.status) == ("succeeded", "succeeded"), (a.error_message, b.error_message, logs(w1, w2))
    # b ran once; a ran once more after its worker died, on the survivor, and nothing ran twice at once.
    assert b.attempts == 1 and b.recoveries == 0
    assert a.attempts == 2 and a.recoveries == 1 and a.worker.endswith(f"({survivor})")
    assert a.events.filter(message__startswith="Recovering").count() == 1
    started = list(a.events.filter(message__startswith="Started on").values_list("message", flat=True))
    assert len(started) == 2 and started[1].startswith(f"Started on {survivor}")
    assert b.events.filter(message__startswith="Started on").count() == 1
    assert (a.total, b.total) == (80 * 81 // 2, 30 * 31 // 2)
    # The intervals overlapped: b started before a's first run ended, and a before b ended.
    assert a.started_at < b.finished_at and b.started_at < a.finished_at


