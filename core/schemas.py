"""Schemas shared by every app's API."""

from __future__ import annotations

from ninja import Schema


class ErrorOut(Schema):
    """Error body of /api/: a readable message, a stable code and the offending field, if any."""

    detail: str
    code: str
    param: str | None = None
    errors: list[dict] | None = None


# The error statuses every /api/ route may answer.
ERRORS = {400: ErrorOut, 401: ErrorOut, 403: ErrorOut, 404: ErrorOut, 409: ErrorOut, 429: ErrorOut}
