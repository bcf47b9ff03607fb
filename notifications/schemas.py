"""API schemas of the notifications app: the secret appears only in the creation and rotation answers."""

from datetime import datetime

from ninja import Field, Schema


class EndpointIn(Schema):
    url: str
    events: list[str] = Field(..., description="Event types to receive (GET /api/webhooks/event-types).")
    description: str = ""
    team: str | None = None


class EndpointPatch(Schema):
    url: str | None = None
    events: list[str] | None = None
    description: str | None = None
    is_active: bool | None = None


class EndpointOut(Schema):
    id: int
    team: str
    url: str
    description: str
    events: list[str]
    is_active: bool
    secret_hint: str
    created_at: datetime

    @staticmethod
    def from_endpoint(endpoint) -> dict:
        return {"id": endpoint.pk, "team": endpoint.team.name, "url": endpoint.url,
                "description": endpoint.description, "events": endpoint.events, "is_active": endpoint.is_active,
                "secret_hint": endpoint.secret_hint, "created_at": endpoint.created_at}


class EndpointCreatedOut(EndpointOut):
    secret: str = Field(..., description="whsec_...: verify signatures with it. Shown once.")


class EventTypeOut(Schema):
    type: str
    description: str


class AttemptOut(Schema):
    number: int
    started_at: datetime
    duration_ms: int
    status_code: int | None
    error: str


class DeliveryOut(Schema):
    id: int
    endpoint_id: int
    message_id: str
    event_id: str
    event_type: str
    status: str
    attempts: int
    next_attempt_at: datetime | None
    last_status_code: int | None
    last_error: str
    created_at: datetime
    delivered_at: datetime | None
    attempt_log: list[AttemptOut]

    @staticmethod
    def resolve_attempt_log(obj) -> list:
        return list(obj.attempt_log.all())
