"""/api/webhooks: a team's webhook endpoints and their deliveries."""

# No `from __future__ import annotations` here: ninja resolves response types at import.
from ninja import Router, Status
from ninja.pagination import paginate

from accounts.auth import principal
from core.pagination import Mapped, Pagination
from core.schemas import ERRORS
from notifications import services
from notifications.events import EVENT_TYPES
from notifications.schemas import (
    DeliveryOut,
    EndpointCreatedOut,
    EndpointIn,
    EndpointOut,
    EndpointPatch,
    EventTypeOut,
)

router = Router(tags=["webhooks"])


@router.get("/webhooks/event-types", response=list[EventTypeOut])
def event_types(request):
    return [{"type": name, "description": text} for name, text in EVENT_TYPES.items()]


@router.post("/webhooks/endpoints", response={201: EndpointCreatedOut, **ERRORS})
def endpoint_create(request, payload: EndpointIn):
    """A new endpoint; the answer carries its secret, which is never shown again."""
    endpoint, secret = services.webhook_endpoint_create(user=principal(request), team=payload.team, url=payload.url,
                                                        events=payload.events, description=payload.description)
    return Status(201, {**EndpointOut.from_endpoint(endpoint), "secret": secret})


@router.get("/webhooks/endpoints", response=list[EndpointOut])
@paginate(Pagination)
def endpoint_list(request, team: str | None = None):
    return Mapped(services.webhook_endpoint_list(user=principal(request), team=team), EndpointOut.from_endpoint)


@router.get("/webhooks/endpoints/{endpoint_id}", response={200: EndpointOut, **ERRORS})
def endpoint_detail(request, endpoint_id: int):
    return EndpointOut.from_endpoint(services.webhook_endpoint_get(user=principal(request), ref=endpoint_id))


@router.patch("/webhooks/endpoints/{endpoint_id}", response={200: EndpointOut, **ERRORS})
def endpoint_update(request, endpoint_id: int, payload: EndpointPatch):
    who = principal(request)
    endpoint = services.webhook_endpoint_get(user=who, ref=endpoint_id)
    endpoint = services.webhook_endpoint_update(user=who, endpoint=endpoint, **payload.dict(exclude_unset=True))
    return EndpointOut.from_endpoint(endpoint)


@router.delete("/webhooks/endpoints/{endpoint_id}", response={204: None, **ERRORS})
def endpoint_delete(request, endpoint_id: int):
    who = principal(request)
    services.webhook_endpoint_delete(user=who, endpoint=services.webhook_endpoint_get(user=who, ref=endpoint_id))
    return Status(204, None)


@router.post("/webhooks/endpoints/{endpoint_id}/rotate-secret", response={200: EndpointCreatedOut, **ERRORS})
def endpoint_rotate_secret(request, endpoint_id: int):
    who = principal(request)
    endpoint, secret = services.webhook_endpoint_rotate_secret(
        user=who, endpoint=services.webhook_endpoint_get(user=who, ref=endpoint_id))
    return {**EndpointOut.from_endpoint(endpoint), "secret": secret}


@router.get("/webhooks/endpoints/{endpoint_id}/deliveries", response={200: list[DeliveryOut], **ERRORS})
@paginate(Pagination)
def endpoint_deliveries(request, endpoint_id: int):
    who = principal(request)
    endpoint = services.webhook_endpoint_get(user=who, ref=endpoint_id)
    return services.webhook_delivery_list(user=who, endpoint=endpoint).prefetch_related("attempt_log")
