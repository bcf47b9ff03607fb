"""Failed-login throttling for the admin login (a small cache-based limiter).

After LOGIN_FAILURE_LIMIT failed attempts for one username (or LOGIN_FAILURE_LIMIT_PER_IP from one
address) within LOGIN_LOCKOUT_SECONDS, further attempts are refused without checking the password, until
the window has passed; even the right password is refused meanwhile, so guessing gains nothing.

Why not django-axes: its authentication backend requires the ``request`` argument to ``authenticate()``,
which Django's test client ``login()`` and our own code paths do not pass, and it adds tables and a
middleware for what is twenty lines here. Counters live in the default cache (per process with
LocMemCache; configure a shared cache when running several web processes).
"""

from __future__ import annotations

import time

from django.conf import settings
from django.contrib.admin.forms import AdminAuthenticationForm
from django.core.cache import cache
from django.core.exceptions import ValidationError


def _limits() -> tuple[int, int, int]:
    return settings.LOGIN_FAILURE_LIMIT, settings.LOGIN_FAILURE_LIMIT_PER_IP, settings.LOGIN_LOCKOUT_SECONDS


def _keys(username: str, ip: str) -> list[tuple[str, int]]:
    per_user, per_ip, _ = _limits()
    keys = [(f"login-fail:ip:{ip}", per_ip)]
    if username:
        keys.append((f"login-fail:user:{username.strip().lower()[:150]}", per_user))
    return keys


def locked_for(username: str, ip: str, now: float | None = None) -> int:
    """Seconds until a login may be tried again (0: not locked)."""
    now = time.time() if now is None else now
    _, _, window = _limits()
    wait = 0
    for key, limit in _keys(username, ip):
        entry = cache.get(key)
        if entry and entry["count"] >= limit:
            wait = max(wait, int(entry["since"] + window - now) + 1)
    return max(0, wait)


def record_failure(username: str, ip: str, now: float | None = None) -> None:
    now = time.time() if now is None else now
    _, _, window = _limits()
    for key, _limit in _keys(username, ip):
        entry = cache.get(key)
        if not entry or entry["since"] + window <= now:
            entry = {"count": 0, "since": now}
        entry["count"] += 1
        cache.set(key, entry, timeout=int(entry["since"] + window - now) + 1)


def record_success(username: str) -> None:
    if username:
        cache.delete(f"login-fail:user:{username.strip().lower()[:150]}")


class ThrottledAdminAuthenticationForm(AdminAuthenticationForm):
    """The admin login form, refusing attempts while the username or the address is locked out."""

    def clean(self):
        username = self.cleaned_data.get("username") or ""
        ip = (self.request.META.get("REMOTE_ADDR") if self.request is not None else "") or "unknown"
        wait = locked_for(username, ip)
        if wait:
            raise ValidationError(
                f"Too many failed login attempts. Try again in {max(1, round(wait / 60))} minute(s).",
                code="throttled")
        try:
            cleaned = super().clean()
        except ValidationError:
            record_failure(username, ip)
            raise
        record_success(username)
        return cleaned
