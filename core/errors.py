"""The one error type for rule violations.

Services raise ``ApplicationError``; each door maps it once: the ninja APIs through an exception
handler (status + JSON), the admin through ``messages``, commands through ``CommandError``.
"""

from __future__ import annotations


class ApplicationError(Exception):
    """A rule was broken by the caller's input or the object's state.

    ``code`` is a stable machine-readable identifier, ``param`` names the offending field when there
    is one, ``status`` is the HTTP status the APIs use.
    """

    status = 400

    def __init__(self, message: str, *, code: str = "invalid_request", param: str | None = None,
                 status: int | None = None, details: object | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.param = param
        self.details = details
        if status is not None:
            self.status = status

    def __str__(self) -> str:
        return self.message


class NotFound(ApplicationError):
    """The object does not exist or is not visible to the caller (never tells which)."""

    status = 404

    def __init__(self, message: str = "Not found.", *, code: str = "not_found", param: str | None = None) -> None:
        super().__init__(message, code=code, param=param)


class PermissionDenied(ApplicationError):
    """The caller can see the object but their role does not allow the operation."""

    status = 403

    def __init__(self, message: str = "You do not have permission to do this.", *, code: str = "permission_denied",
                 param: str | None = None) -> None:
        super().__init__(message, code=code, param=param)


class Conflict(ApplicationError):
    """The object's state does not allow the operation (e.g. cancel a finished job)."""

    status = 409

    def __init__(self, message: str, *, code: str = "invalid_state", param: str | None = None) -> None:
        super().__init__(message, code=code, param=param)


class RateLimited(ApplicationError):
    """Too many requests (a rate limit or a queue quota): 429, and the seconds after which a retry can succeed."""

    status = 429

    def __init__(self, message: str, *, retry_after: int, code: str = "rate_limit_exceeded",
                 param: str | None = None) -> None:
        super().__init__(message, code=code, param=param)
        self.retry_after = max(1, int(retry_after))
