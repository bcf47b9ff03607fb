"""The webhook admin pages: a team admin adds an endpoint (secret shown once, forbidden URLs refused on the field),
and a delivery's page lists its attempts with status code, error and duration."""

from __future__ import annotations

import pytest

from notifications import services
from notifications.models import WebhookEndpoint
from tests.notifications.conftest import run_queued

pytestmark = pytest.mark.django_db


@pytest.fixture
def ada_client(admin_of, client):
    team, ada = admin_of
    client.force_login(ada)
    return team, ada, client


def test_adding_an_endpoint_shows_its_secret_once(ada_client, receiver):
    team, _ada, client = ada_client
    response = client.post("/admin/notifications/webhookendpoint/add/", {
        "team": team.pk, "url": receiver.url, "description": "ops", "events": ["fine_tuning.job.failed"],
        "is_active": "on"}, follow=True)
    endpoint = WebhookEndpoint.objects.get()
    page = response.content.decode()
    assert endpoint.secret in page and "not shown again" in page
    assert endpoint.secret not in client.get(f"/admin/notifications/webhookendpoint/{endpoint.pk}/change/") \
        .content.decode()


def test_a_forbidden_url_is_an_error_on_the_url_field(ada_client):
    team, _ada, client = ada_client
    response = client.post("/admin/notifications/webhookendpoint/add/", {
        "team": team.pk, "url": "http://testserver/x", "events": ["job.failed"], "is_active": "on"})
    assert response.status_code == 200 and not WebhookEndpoint.objects.exists()
    errors = response.context["adminform"].form.errors
    assert "url" in errors and "this server itself" in errors["url"][0]


def test_a_delivery_page_lists_its_attempts(ada_client, receiver, queued, django_capture_on_commit_callbacks):
    team, ada, client = ada_client
    receiver.statuses = [500, 200]
    services.webhook_endpoint_create(user=ada, team=team, url=receiver.url, events=["job.succeeded"])
    with django_capture_on_commit_callbacks(execute=True):
        (delivery,) = services.webhook_event_publish(team=team, event_type="job.succeeded", data={"id": 1})
    run_queued(queued)
    listing = client.get("/admin/notifications/webhookdelivery/").content.decode()
    assert "job.succeeded" in listing
    page = client.get(f"/admin/notifications/webhookdelivery/{delivery.pk}/change/").content.decode()
    assert "HTTP 500" in page and "Duration ms" in page
