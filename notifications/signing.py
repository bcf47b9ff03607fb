"""Standard Webhooks signatures (plain module, no Django): what we send, and how a receiver checks it.

A secret is ``whsec_`` + base64 of random bytes; the key is those bytes. Every request carries
``webhook-id``, ``webhook-timestamp`` (Unix seconds) and ``webhook-signature: v1,<base64 HMAC-SHA256 of
"{id}.{timestamp}.{body}">`` (several space-separated signatures are allowed, e.g. during a secret rotation).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Mapping

SECRET_PREFIX = "whsec_"
TOLERANCE_SECONDS = 5 * 60


class InvalidSignature(ValueError):
    """The request was not signed with this secret, or its timestamp is too far from now."""


def generate_secret(n_bytes: int = 24) -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(n_bytes)).decode("ascii")


def _key(secret: str) -> bytes:
    return base64.b64decode(secret.removeprefix(SECRET_PREFIX))


def sign(secret: str, msg_id: str, timestamp: int, body: str | bytes) -> str:
    """The ``webhook-signature`` value for one request."""
    payload = body.encode("utf-8") if isinstance(body, str) else body
    content = f"{msg_id}.{timestamp}.".encode() + payload
    digest = hmac.new(_key(secret), content, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def headers(secret: str, msg_id: str, body: str | bytes, *, timestamp: int | None = None) -> dict[str, str]:
    timestamp = int(time.time()) if timestamp is None else int(timestamp)
    return {"webhook-id": msg_id, "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(secret, msg_id, timestamp, body)}


def verify(secret: str, request_headers: Mapping[str, str], body: str | bytes, *, now: float | None = None,
           tolerance: int = TOLERANCE_SECONDS) -> None:
    """Raise ``InvalidSignature`` unless one of the request's signatures is ours and its timestamp is recent."""
    lower = {k.lower(): v for k, v in request_headers.items()}
    msg_id, stamp, signatures = (lower.get("webhook-id"), lower.get("webhook-timestamp"),
                                 lower.get("webhook-signature"))
    if not (msg_id and stamp and signatures):
        raise InvalidSignature("missing webhook-id, webhook-timestamp or webhook-signature")
    try:
        timestamp = int(stamp)
    except ValueError:
        raise InvalidSignature("webhook-timestamp is not an integer") from None
    if abs((time.time() if now is None else now) - timestamp) > tolerance:
        raise InvalidSignature("webhook-timestamp is too old or in the future")
    expected = sign(secret, msg_id, timestamp, body)
    if not any(hmac.compare_digest(expected, candidate) for candidate in signatures.split()):
        raise InvalidSignature("no signature matches")
