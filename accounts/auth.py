"""Authentication for the ninja APIs: bearer API tokens (scripts) and Django sessions (browser)."""

from __future__ import annotations

from ninja.security import HttpBearer, SessionAuth

from accounts.services import api_token_authenticate
from accounts.visibility import Principal


class TokenAuth(HttpBearer):
    """``Authorization: Bearer <token>``; the request acts as the token's user, narrowed to its team."""

    def authenticate(self, request, token: str):
        api_token = api_token_authenticate(token.strip())
        if api_token is None:
            return None
        request.user = api_token.user
        request.api_token = api_token
        return Principal(user=api_token.user, team=api_token.team)


class SessionPrincipalAuth(SessionAuth):
    """The logged-in admin user (CSRF-checked on unsafe methods by ninja)."""

    def authenticate(self, request, key):
        user = super().authenticate(request, key)
        return Principal(user=user) if user is not None else None


def principal(request) -> Principal:
    """The acting principal of an authenticated ninja request."""
    return request.auth
