"""Queue task bodies (django-q2 calls them by dotted path with the delivery's primary key only)."""

from __future__ import annotations

from notifications.services import webhook_delivery_attempt, webhook_delivery_sweep


def deliver(delivery_id: int) -> str:
    return webhook_delivery_attempt(delivery_id=delivery_id)


def sweep() -> int:
    return webhook_delivery_sweep()
