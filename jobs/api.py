"""The control and log routes every job kind offers on /api/, added to a kind's router in one call:
``POST <path>/{ref}/cancel|pause|resume|retry`` and ``GET <path>/{ref}/events``."""

# No `from __future__ import annotations` here: ninja reads the views' annotations at import.
from collections.abc import Callable
from typing import Any

from ninja import Router

from accounts.auth import principal
from core.schemas import ERRORS
from jobs import services
from jobs.models import Job
from jobs.schemas import EventPage

CONTROLS = {"cancel": services.job_cancel, "pause": services.job_pause, "resume": services.job_resume,
            "retry": services.job_retry}


def _control_view(get: Callable[..., Job], out: Callable[[Job], Any], service: Callable[..., Job]):
    def view(request, ref: str):
        who = principal(request)
        return out(service(user=who, job=get(user=who, ref=ref)))

    return view


def _events_view(get: Callable[..., Job]):
    def view(request, ref: str, after: int | None = None, limit: int = 100):
        rows, has_more = services.job_events_page(job=get(user=principal(request), ref=ref), after=after,
                                                  limit=limit)
        return {"items": rows, "has_more": has_more, "next_after": rows[-1].id if rows else after}

    return view


def add_job_routes(router: Router, *, path: str, name: str, get: Callable[..., Job], out: Callable[[Job], Any],
                   schema: type) -> None:
    """``get(user=, ref=)`` finds the kind's job (visibility included); ``out(job)`` renders it as ``schema``."""
    for action, service in CONTROLS.items():
        router.add_api_operation(f"{path}/{{ref}}/{action}", ["POST"], _control_view(get, out, service),
                                 response={200: schema, **ERRORS}, operation_id=f"{name}_{action}",
                                 summary=f"{action.capitalize()} a {name.replace('_', ' ')}")
    router.add_api_operation(f"{path}/{{ref}}/events", ["GET"], _events_view(get),
                             response={200: EventPage, **ERRORS}, operation_id=f"{name}_events",
                             summary=f"Events of a {name.replace('_', ' ')}, oldest first (keyset pages)")
