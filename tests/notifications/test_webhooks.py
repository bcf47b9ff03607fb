"""Webhook endpoints: creation and the URLs refused, signed delivery to a live local receiver, retries after a
failure with back-off, the attempt log, and the API."""

from __future__ import annotations

import json

import pytest

from core.errors import ApplicationError, PermissionDenied
from notifications import services, signing
from notifications.models import WebhookDelivery
from tests.notifications.conftest import run_queued

pytestmark = pytest.mark.django_db


def endpoint_for(user, team, url, events=("job.succeeded",)):
    return services.webhook_endpoint_create(user=user, team=team, url=url, events=list(events))


def test_a_new_endpoint_gets_a_standard_webhooks_secret_shown_once(admin_of, receiver):
    team, ada = admin_of
    endpoint, secret = endpoint_for(ada, team, receiver.url)
    assert secret.startswith("whsec_") and len(signing._key(secret)) == 24
    assert endpoint.secret_hint != secret and secret.startswith(endpoint.secret_hint.rstrip("…"))


@pytest.mark.parametrize("url, code", [
    ("ftp://example.com/hook", "invalid_url"),
    ("file:///etc/passwd", "invalid_url"),
    ("javascript:alert(1)", "invalid_url"),
    ("http://testserver/hook", "forbidden_url"),  # one of ALLOWED_HOSTS: this server itself
    ("http://0.0.0.0:8000/hook", "forbidden_url"),
    ("http://169.254.169.254/latest/meta-data", "forbidden_url"),
    ("http://user:pw@example.com/hook", "invalid_url"),
])
def test_a_url_that_is_not_http_or_points_at_the_server_is_refused_naming_the_field(admin_of, url, code):
    team, ada = admin_of
    with pytest.raises(ApplicationError) as err:
        endpoint_for(ada, team, url)
    assert (err.value.param, err.value.code) == ("url", code)


def test_loopback_is_refused_unless_the_setting_allows_it(admin_of, receiver, settings):
    team, ada = admin_of
    settings.WEBHOOK_ALLOW_LOOPBACK = False
    for url in (receiver.url, "http://localhost:9/hook", "http://[::1]:9/hook"):
        with pytest.raises(ApplicationError) as err:
            endpoint_for(ada, team, url)
        assert err.value.param == "url" and "this server itself" in err.value.message


def test_this_machines_own_addresses_are_refused(admin_of, monkeypatch):
    import ipaddress

    from notifications import targets

    team, ada = admin_of
    # The interfaces as psutil reports them, plus one private address standing for this host's LAN address
    # (a sandbox may have none): nothing is sent to it, the URL is only checked.
    found = targets._own_addresses()
    monkeypatch.setattr(targets, "_own_addresses", lambda: found | {ipaddress.ip_address("10.77.0.5")})
    with pytest.raises(ApplicationError) as err:
        endpoint_for(ada, team, "http://10.77.0.5:8000/hook")
    assert err.value.param == "url"


def test_unknown_event_types_are_refused_by_name(admin_of, receiver):
    team, ada = admin_of
    with pytest.raises(ApplicationError) as err:
        endpoint_for(ada, team, receiver.url, events=["fine_tuning.job.exploded"])
    assert err.value.param == "events" and "fine_tuning.job.exploded" in err.value.message


def test_only_team_admins_manage_endpoints(admin_of, make_user, receiver):
    team, _ada = admin_of
    bob = make_user("bob", team, "member")
    with pytest.raises(PermissionDenied):
        endpoint_for(bob, team, receiver.url)


def test_a_published_event_reaches_the_receiver_signed_so_that_it_verifies(admin_of, receiver, queued,
                                                                          django_capture_on_commit_callbacks):
    team, ada = admin_of
    endpoint, secret = endpoint_for(ada, team, receiver.url, events=["fine_tuning.job.succeeded"])
    with django_capture_on_commit_callbacks(execute=True):
        (delivery,) = services.webhook_event_publish(team=team, event_type="fine_tuning.job.succeeded",
                                                     data={"id": "ftjob-7"})
        # not subscribed: no delivery
        assert services.webhook_event_publish(team=team, event_type="job.failed", data={"id": 1}) == []
        assert queued == []  # queued once committed, never before
    assert run_queued(queued) == ["succeeded"]
    (got,) = receiver.requests
    signing.verify(secret, got.headers, got.body)  # raises unless the signature is ours
    assert got.headers["webhook-id"] == delivery.message_id and got.headers["content-type"] == "application/json"
    payload = json.loads(got.body)
    assert payload["object"] == "event" and payload["type"] == "fine_tuning.job.succeeded"
    assert payload["id"].startswith("evt_") and isinstance(payload["created_at"], int)
    assert payload["data"] == {"id": "ftjob-7"}
    with pytest.raises(signing.InvalidSignature):
        signing.verify(signing.generate_secret(), got.headers, got.body)
    with pytest.raises(signing.InvalidSignature):
        signing.verify(secret, got.headers, got.body + b" ")
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts, delivery.last_status_code) == ("succeeded", 1, 200)
    attempt = delivery.attempt_log.get()
    assert attempt.status_code == 200 and attempt.error == "" and attempt.duration_ms >= 0


def test_a_500_is_retried_with_back_off_and_the_same_signed_message(admin_of, receiver, queued, settings,
                                                                     django_capture_on_commit_callbacks):
    from django_q.models import Schedule

    settings.WEBHOOK_BACKOFF_SECONDS = 30
    team, ada = admin_of
    receiver.statuses = [500, 503, 200]
    _endpoint, secret = endpoint_for(ada, team, receiver.url)
    with django_capture_on_commit_callbacks(execute=True):
        (delivery,) = services.webhook_event_publish(team=team, event_type="job.succeeded", data={"id": 3})
    assert run_queued(queued[:1]) == ["pending"]
    del queued[0]
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts, delivery.last_status_code) == ("pending", 1, 500)
    # The retry is a django-q schedule, due after the back-off: 30 s, then 60 s.
    (func, args, when), = queued
    assert (func, args) == ("notifications.tasks.deliver", (delivery.pk,))
    assert 25 <= (when - delivery.attempt_log.get().started_at).total_seconds() <= 35
    assert Schedule.objects.filter(func="notifications.tasks.deliver", schedule_type=Schedule.ONCE).count() == 1
    assert run_queued(queued[:1]) == ["pending"]
    del queued[0]
    (_func, _args, when2), = queued
    second = delivery.attempt_log.get(number=2).started_at
    assert 55 <= (when2 - second).total_seconds() <= 65
    assert run_queued(queued) == ["succeeded"]
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts) == ("succeeded", 3)
    assert list(delivery.attempt_log.values_list("number", "status_code")) == [(1, 500), (2, 503), (3, 200)]
    assert "HTTP 500" in delivery.attempt_log.get(number=1).error
    ids = {r.headers["webhook-id"] for r in receiver.requests}
    assert ids == {delivery.message_id} and len({r.body for r in receiver.requests}) == 1
    for got in receiver.requests:
        signing.verify(secret, got.headers, got.body)


def test_attempts_are_bounded_and_the_delivery_then_fails(admin_of, receiver, queued, settings,
                                                          django_capture_on_commit_callbacks):
    settings.WEBHOOK_MAX_ATTEMPTS = 3
    team, ada = admin_of
    receiver.statuses = [500]
    endpoint_for(ada, team, receiver.url)
    with django_capture_on_commit_callbacks(execute=True):
        (delivery,) = services.webhook_event_publish(team=team, event_type="job.succeeded", data={"id": 3})
    assert run_queued(queued) == ["pending", "pending", "failed"]
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts, delivery.next_attempt_at) == ("failed", 3, None)
    assert len(receiver.requests) == 3


def test_a_receiver_that_is_down_is_logged_as_an_error_without_a_status(admin_of, queued,
                                                                       django_capture_on_commit_callbacks):
    from tests.training.conftest import free_port

    team, ada = admin_of
    endpoint_for(ada, team, f"http://127.0.0.1:{free_port()}/nobody")
    with django_capture_on_commit_callbacks(execute=True):
        (delivery,) = services.webhook_event_publish(team=team, event_type="job.succeeded", data={"id": 3})
    run_queued(queued[:1])
    attempt = WebhookDelivery.objects.get(pk=delivery.pk).attempt_log.get()
    assert attempt.status_code is None and "refused" in attempt.error.lower()


def test_a_url_that_became_forbidden_is_not_requested(admin_of, receiver, queued, settings,
                                                      django_capture_on_commit_callbacks):
    team, ada = admin_of
    endpoint_for(ada, team, receiver.url)
    with django_capture_on_commit_callbacks(execute=True):
        (delivery,) = services.webhook_event_publish(team=team, event_type="job.succeeded", data={"id": 3})
    settings.WEBHOOK_ALLOW_LOOPBACK = False
    run_queued(queued[:1])
    assert receiver.requests == []
    assert "Refused" in WebhookDelivery.objects.get(pk=delivery.pk).attempt_log.get().error


def test_a_redirect_is_not_followed(admin_of, receiver, queued, django_capture_on_commit_callbacks):
    team, ada = admin_of
    receiver.statuses = [302]
    endpoint_for(ada, team, receiver.url)
    with django_capture_on_commit_callbacks(execute=True):
        (delivery,) = services.webhook_event_publish(team=team, event_type="job.succeeded", data={"id": 3})
    run_queued(queued[:1])
    delivery.refresh_from_db()
    assert delivery.last_status_code == 302 and delivery.status == "pending" and len(receiver.requests) == 1


# ------------------------------------------------------------------------------------------------------ API

def test_api_creates_an_endpoint_showing_the_secret_once_and_lists_deliveries(admin_of, receiver, token_for, bearer):
    team, ada = admin_of
    c = bearer(token_for(ada, team))
    r = c.post("/api/webhooks/endpoints", {"url": receiver.url, "events": ["fine_tuning.job.failed"]},
               content_type="application/json")
    assert r.status_code == 201, r.json()
    body = r.json()
    assert body["secret"].startswith("whsec_") and body["team"] == "alpha"
    detail = c.get(f"/api/webhooks/endpoints/{body['id']}").json()
    assert "secret" not in detail and detail["secret_hint"]
    assert c.get(f"/api/webhooks/endpoints/{body['id']}/deliveries").json() == {"items": [], "count": 0}
    types = [t["type"] for t in c.get("/api/webhooks/event-types").json()]
    assert {"fine_tuning.job.succeeded", "fine_tuning.job.failed", "fine_tuning.job.cancelled"} <= set(types)
    r = c.patch(f"/api/webhooks/endpoints/{body['id']}", {"is_active": False}, content_type="application/json")
    assert r.status_code == 200 and r.json()["is_active"] is False
    assert c.delete(f"/api/webhooks/endpoints/{body['id']}").status_code == 204


def test_api_refuses_a_forbidden_url_with_the_field_named(admin_of, token_for, bearer):
    team, ada = admin_of
    c = bearer(token_for(ada, team))
    r = c.post("/api/webhooks/endpoints", {"url": "gopher://example.com/", "events": ["job.failed"]},
               content_type="application/json")
    assert r.status_code == 400 and r.json()["param"] == "url" and r.json()["code"] == "invalid_url"


def test_a_retry_that_is_not_due_yet_is_not_made_early(admin_of, receiver, queued,
                                                       django_capture_on_commit_callbacks):
    team, ada = admin_of
    receiver.statuses = [500, 200]
    endpoint_for(ada, team, receiver.url)
    with django_capture_on_commit_callbacks(execute=True):
        (delivery,) = services.webhook_event_publish(team=team, event_type="job.succeeded", data={"id": 3})
    run_queued(queued[:1])
    assert services.webhook_delivery_attempt(delivery_id=delivery.pk) == "pending"  # a stray early message
    assert len(receiver.requests) == 1 and WebhookDelivery.objects.get(pk=delivery.pk).attempts == 1


def test_the_sweep_requeues_deliveries_whose_message_was_lost(admin_of, receiver, queued, settings):
    from datetime import timedelta

    from django.utils import timezone

    team, ada = admin_of
    endpoint_for(ada, team, receiver.url)
    (delivery,) = services.webhook_event_publish(team=team, event_type="job.succeeded", data={"id": 3})
    assert services.webhook_delivery_sweep() == 0  # not overdue yet
    later = timezone.now() + timedelta(seconds=settings.WEBHOOK_SWEEP_SECONDS + 1)
    assert services.webhook_delivery_sweep(now=later) == 1
    assert run_queued(queued) == ["succeeded"]


def test_the_periodic_sweep_is_scheduled():
    from django_q.models import Schedule

    from notifications.apps import ensure_schedule

    ensure_schedule(sender=None)
    assert Schedule.objects.get(name="webhook-sweep").func == "notifications.tasks.sweep"
