"""Webhook endpoints (managed by a team's admins), the events published to them, and their delivery: one row per
event and endpoint, attempted from the queue, retried with exponential back-off up to WEBHOOK_MAX_ATTEMPTS."""

from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.request
import uuid
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import F, QuerySet
from django.utils import timezone
from django_q.models import Schedule
from django_q.tasks import async_task, schedule

from accounts import visibility
from accounts.models import Team
from accounts.visibility import Actor, acting_user, get_visible, resolve_team
from core.errors import ApplicationError, NotFound, PermissionDenied
from notifications import signing
from notifications.events import EVENT_TYPES, event_payload
from notifications.models import DeliveryStatus, WebhookAttempt, WebhookDelivery, WebhookEndpoint
from notifications.targets import webhook_url_check

log = logging.getLogger(__name__)
DELIVER_TASK = "notifications.tasks.deliver"
EXCERPT_CHARS = 500


# ------------------------------------------------------------------------------------------------ endpoints

def _check_events(events: list[str] | None) -> list[str]:
    if not isinstance(events, list) or not events:
        raise ApplicationError(f"events: choose at least one of {', '.join(EVENT_TYPES)}.", code="invalid_parameter",
                               param="events")
    cleaned: list[str] = []
    for name in events:
        if name not in EVENT_TYPES:
            raise ApplicationError(f"events: unknown event type {name!r}; choose from {', '.join(EVENT_TYPES)}.",
                                   code="invalid_parameter", param="events")
        if name not in cleaned:
            cleaned.append(name)
    return cleaned


def _require_manage(user: Actor, team: Team) -> None:
    if not visibility.can_manage(user, team):
        raise PermissionDenied("Only the team's admins manage its webhooks.")


def webhook_endpoint_create(*, user: Actor, team: Team | str | int | None, url: str, events: list[str],
                            description: str = "") -> tuple[WebhookEndpoint, str]:
    """A new endpoint and its secret (``whsec_...``): the only time the secret is returned."""
    team = resolve_team(user, team)
    _require_manage(user, team)
    endpoint = WebhookEndpoint.objects.create(team=team, url=webhook_url_check(url), events=_check_events(events),
                                              description=(description or "")[:200], secret=signing.generate_secret(),
                                              created_by=acting_user(user))
    return endpoint, endpoint.secret


def webhook_endpoint_list(*, user: Actor, team: str | None = None) -> QuerySet[WebhookEndpoint]:
    qs = visibility.visible_to(user, WebhookEndpoint.objects.select_related("team"))
    return qs.filter(team__name=team) if team else qs


def webhook_endpoint_get(*, user: Actor, ref: int | str) -> WebhookEndpoint:
    try:
        return get_visible(user, WebhookEndpoint.objects.select_related("team"), pk=int(ref))
    except (NotFound, ValueError):
        raise NotFound(f"Webhook endpoint {ref!r} not found.", code="webhook_not_found", param="endpoint") from None


def webhook_endpoint_update(*, user: Actor, endpoint: WebhookEndpoint, url: str | None = None,
                            events: list[str] | None = None, description: str | None = None,
                            is_active: bool | None = None) -> WebhookEndpoint:
    _require_manage(user, endpoint.team)
    changed = []
    if url is not None:
        endpoint.url = webhook_url_check(url)
        changed.append("url")
    if events is not None:
        endpoint.events = _check_events(events)
        changed.append("events")
    if description is not None:
        endpoint.description = description[:200]
        changed.append("description")
    if is_active is not None:
        endpoint.is_active = bool(is_active)
        changed.append("is_active")
    if changed:
        endpoint.save(update_fields=changed)
    return endpoint


def webhook_endpoint_rotate_secret(*, user: Actor, endpoint: WebhookEndpoint) -> tuple[WebhookEndpoint, str]:
    """A new secret, returned once; deliveries not yet attempted are signed with it."""
    _require_manage(user, endpoint.team)
    endpoint.secret = signing.generate_secret()
    endpoint.secret_rotated_at = timezone.now()
    endpoint.save(update_fields=["secret", "secret_rotated_at"])
    return endpoint, endpoint.secret


def webhook_endpoint_delete(*, user: Actor, endpoint: WebhookEndpoint) -> None:
    _require_manage(user, endpoint.team)
    endpoint.delete()


def webhook_delivery_list(*, user: Actor, endpoint: WebhookEndpoint | None = None) -> QuerySet[WebhookDelivery]:
    qs = visibility.visible_to(user, WebhookDelivery.objects.select_related("endpoint", "endpoint__team"),
                               team_field="endpoint__team")
    return qs.filter(endpoint=endpoint) if endpoint is not None else qs


# ------------------------------------------------------------------------------------------------ publishing

def webhook_event_publish(*, team: Team | int, event_type: str, data: dict) -> list[WebhookDelivery]:
    """One delivery per active endpoint of the team that wants ``event_type``, each queued once committed."""
    team_id = team.pk if isinstance(team, Team) else int(team)
    payload = event_payload(event_type, data)
    body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
    deliveries = []
    # JSON "contains" lookups are not supported on every database (SQLite): filter the team's few endpoints here.
    for endpoint in WebhookEndpoint.objects.filter(team_id=team_id, is_active=True):
        if event_type not in (endpoint.events or []):
            continue
        delivery = WebhookDelivery.objects.create(endpoint=endpoint, message_id=f"msg_{uuid.uuid4().hex}",
                                                  event_id=payload["id"], event_type=event_type, body=body,
                                                  next_attempt_at=timezone.now())
        transaction.on_commit(lambda pk=delivery.pk: async_task(DELIVER_TASK, pk,
                                                                q_options={"task_name": f"webhook-{pk}-1"}))
        deliveries.append(delivery)
    return deliveries


def backoff_seconds(attempt: int) -> int:
    """Seconds before attempt ``attempt + 1``: WEBHOOK_BACKOFF_SECONDS, doubled each time, capped."""
    return int(min(settings.WEBHOOK_BACKOFF_MAX_SECONDS, settings.WEBHOOK_BACKOFF_SECONDS * 2 ** (attempt - 1)))


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    # A redirect could lead anywhere, this server included: it counts as the receiver's answer, not followed.
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())


def _post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int | None, str, str]:
    """(status code, answer excerpt, error) of one POST."""
    request = urllib.request.Request(url, data=body, method="POST", headers={
        "Content-Type": "application/json", "User-Agent": "LoRA-Studio-Webhooks/1", **headers})
    try:
        with _OPENER.open(request, timeout=settings.WEBHOOK_TIMEOUT_SECONDS) as response:
            return response.status, response.read(EXCERPT_CHARS).decode("utf-8", "replace"), ""
    except urllib.error.HTTPError as exc:
        excerpt = exc.read(EXCERPT_CHARS).decode("utf-8", "replace") if exc.fp else ""
        return exc.code, excerpt, f"HTTP {exc.code} {exc.reason}"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return None, "", f"{type(reason).__name__}: {reason}"


def webhook_delivery_attempt(*, delivery_id: int) -> str:
    """The queue task's body: one attempt of a pending delivery, logged; on failure the next is scheduled
    (exponential back-off) until WEBHOOK_MAX_ATTEMPTS, then the delivery is failed. Returns its status."""
    delivery = WebhookDelivery.objects.select_related("endpoint").filter(pk=delivery_id).first()
    if delivery is None or delivery.status != DeliveryStatus.PENDING:
        return delivery.status if delivery else "gone"
    if delivery.next_attempt_at and delivery.next_attempt_at > timezone.now() + timedelta(seconds=1):
        return delivery.status  # a late message for an attempt the sweep already made: the next one is not due
    number = delivery.attempts + 1
    # Claim this attempt: a re-delivered queue message for an attempt already made changes nothing.
    if not WebhookDelivery.objects.filter(pk=delivery.pk, status=DeliveryStatus.PENDING,
                                          attempts=delivery.attempts).update(attempts=F("attempts") + 1):
        return WebhookDelivery.objects.get(pk=delivery.pk).status
    endpoint = delivery.endpoint
    started = timezone.now()
    clock = time.monotonic()
    code: int | None = None
    excerpt = ""
    if not endpoint.is_active:
        error = "The endpoint was deactivated."
    else:
        try:
            url = webhook_url_check(endpoint.url)
        except ApplicationError as exc:
            error = f"Refused: {exc.message}"
        else:
            body = delivery.body.encode("utf-8")
            code, excerpt, error = _post(url, body, signing.headers(endpoint.secret, delivery.message_id, body))
    duration_ms = int((time.monotonic() - clock) * 1000)
    WebhookAttempt.objects.create(delivery=delivery, number=number, started_at=started, duration_ms=duration_ms,
                                  status_code=code, error=error, response_excerpt=excerpt)
    ok = code is not None and 200 <= code < 300
    fields: dict = {"last_status_code": code, "last_error": "" if ok else error}
    if ok:
        fields.update(status=DeliveryStatus.SUCCEEDED, delivered_at=timezone.now(), next_attempt_at=None)
    elif number >= settings.WEBHOOK_MAX_ATTEMPTS or not endpoint.is_active:
        fields.update(status=DeliveryStatus.FAILED, next_attempt_at=None)
    else:
        next_at = timezone.now() + timedelta(seconds=backoff_seconds(number))
        fields["next_attempt_at"] = next_at
        schedule(DELIVER_TASK, delivery.pk, name=f"webhook-{delivery.pk}-{number + 1}",
                 schedule_type=Schedule.ONCE, next_run=next_at)  # deleted once it has run
    WebhookDelivery.objects.filter(pk=delivery.pk).update(**fields)
    if not ok:
        log.info("webhook %s to %s: attempt %s failed (%s)", delivery.message_id, endpoint.url, number, error)
    return fields.get("status", DeliveryStatus.PENDING)


def webhook_delivery_sweep(*, now=None) -> int:
    """Queue the pending deliveries whose attempt is overdue by WEBHOOK_SWEEP_SECONDS (their queue message or
    schedule was lost, e.g. the queue was flushed); a periodic schedule runs it. Returns how many were queued."""
    now = now or timezone.now()
    cutoff = now - timedelta(seconds=settings.WEBHOOK_SWEEP_SECONDS)
    overdue = WebhookDelivery.objects.filter(status=DeliveryStatus.PENDING, next_attempt_at__lt=cutoff)
    ids = list(overdue.values_list("pk", flat=True)[:500])
    for pk in ids:
        async_task(DELIVER_TASK, pk, q_options={"task_name": f"webhook-{pk}-sweep"})
    return len(ids)


def webhook_delivery_redeliver(*, user: Actor, delivery: WebhookDelivery) -> WebhookDelivery:
    """Send an event again (after a receiver's outage outlasted the retries): a new delivery with its own attempts,
    the same body and the same ``webhook-id``, so a receiver that already processed it can drop it."""
    _require_manage(user, delivery.endpoint.team)
    again = WebhookDelivery.objects.create(endpoint=delivery.endpoint, message_id=delivery.message_id,
                                           event_id=delivery.event_id, event_type=delivery.event_type,
                                           body=delivery.body, next_attempt_at=timezone.now())
    transaction.on_commit(lambda: async_task(DELIVER_TASK, again.pk,
                                             q_options={"task_name": f"webhook-{again.pk}-1"}))
    return again
