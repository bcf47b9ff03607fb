"""A fixed-window rate limiter on Django's default cache (per key, per minute).

Used by the chat-completion service (requests and tokens per team). The cache is ``CACHE_URL``: the database
by default, so every web process of every host counts together; Redis makes the counts atomic (Django's
database cache increments by read-then-write, so two requests at the very same moment may both take the last
slot); ``locmem`` counts per process only.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from django.core.cache import cache

from core.errors import RateLimited  # noqa: F401 - the error this limiter's callers raise


@dataclass(frozen=True)
class Window:
    used: int
    retry_after: int


def consume(key: str, amount: int, *, limit: int, period: int = 60, now: float | None = None) -> Window | None:
    """Add ``amount`` to the counter of ``key`` for the current window; the window if that passes ``limit``.

    Nothing is counted for a refused request, so a client that backs off is not punished twice.
    """
    now = time.time() if now is None else now
    window = int(now // period)
    name = f"rl:{key}:{window}"
    cache.add(name, 0, timeout=period + 5)
    try:
        used = cache.incr(name, amount)
    except ValueError:  # expired between add and incr
        cache.set(name, amount, timeout=period + 5)
        used = amount
    if used > limit:
        cache.decr(name, amount)
        return Window(used=used - amount, retry_after=int((window + 1) * period - now) + 1)
    return None

