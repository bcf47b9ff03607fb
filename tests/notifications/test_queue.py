"""Through a real queue worker (``manage.py qcluster``): an ending's webhook is queued on commit, delivered by the
worker, and its retry after a 500 comes from the django-q schedule the first attempt left."""

from __future__ import annotations

import pytest
from django_q.models import Schedule

from jobs import runtime
from jobs.models import JobStatus
from notifications import services, signing
from notifications.models import WebhookDelivery
from tests.jobkind.models import CountJob
from tests.training.conftest import wait_for, worker, worker_env  # noqa: F401 - the fixtures

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def test_the_worker_delivers_and_retries_after_a_500(admin_of, receiver, worker, monkeypatch):  # noqa: F811
    team, ada = admin_of
    worker.env.update({"WEBHOOK_ALLOW_LOOPBACK": "1", "WEBHOOK_BACKOFF_SECONDS": "1"})
    receiver.statuses = [500, 200]
    _endpoint, secret = services.webhook_endpoint_create(user=ada, team=team, url=receiver.url,
                                                        events=["job.succeeded"])
    job = CountJob.objects.create(name="count", team=team, created_by=ada, status=JobStatus.QUEUED, target=2)
    assert runtime.run_foreground(job) == JobStatus.SUCCEEDED  # commits: the delivery is in the queue now
    delivery = WebhookDelivery.objects.get()
    worker.start()
    # The first attempt comes at once; the retry when the scheduler next runs (django-q checks about every 15 s).
    wait_for(lambda: WebhookDelivery.objects.get(pk=delivery.pk).status == "succeeded", timeout=120,
             message=f"the retried delivery; worker log:\n{worker.log()[-3000:]}")
    delivery.refresh_from_db()
    assert delivery.attempts == 2
    assert list(delivery.attempt_log.values_list("status_code", flat=True)) == [500, 200]
    assert len(receiver.requests) == 2
    for got in receiver.requests:
        signing.verify(secret, got.headers, got.body)
    # The retry's one-off schedule is gone once it ran (only the periodic sweep stays).
    assert not Schedule.objects.filter(func="notifications.tasks.deliver").exists()
