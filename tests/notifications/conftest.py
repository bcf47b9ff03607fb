"""Fixtures for the webhook tests: a local HTTP receiver (a thread on 127.0.0.1), the queue's messages captured
so a test runs them when it chooses, and a team admin."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.training.conftest import make_version, tiny_base_model, tiny_model_dir  # noqa: F401 - shared fixtures


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """Answers each POST with the next of ``statuses`` (the last one repeats) and records what came."""

    url: str
    statuses: list[int] = field(default_factory=lambda: [200])
    requests: list[Received] = field(default_factory=list)

    def answer(self) -> int:
        index = min(len(self.requests) - 1, len(self.statuses) - 1)
        return self.statuses[index]


@pytest.fixture
def receiver():
    state: dict = {}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - the http.server protocol
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            rec: Receiver = state["receiver"]
            rec.requests.append(Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body))
            status = rec.answer()
            self.send_response(status)
            self.send_header("Content-Type", "text/plain")
            self.end_headers()
            self.wfile.write(b"ok" if status < 300 else b"receiver error")

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state["receiver"] = Receiver(url=f"http://127.0.0.1:{server.server_address[1]}/hooks")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state["receiver"]
    server.shutdown()
    server.server_close()


@pytest.fixture
def queued(monkeypatch):
    """The delivery tasks the services queued (async_task) and scheduled (retries): (func, args, next_run)."""
    from notifications import services

    calls: list[tuple] = []
    monkeypatch.setattr(services, "async_task", lambda func, *args, **kw: calls.append((func, args, None)))
    real_schedule = services.schedule

    def record_schedule(func, *args, **kw):
        calls.append((func, args, kw.get("next_run")))
        return real_schedule(func, *args, **kw)

    monkeypatch.setattr(services, "schedule", record_schedule)
    return calls


def run_queued(calls: list[tuple]) -> list[str]:
    """Run (and forget) the captured queue messages, as a worker would; a scheduled retry as if its time had come."""
    from django.utils import timezone
    from django.utils.module_loading import import_string

    from notifications.models import WebhookDelivery

    results = []
    while calls:
        func, args, when = calls.pop(0)
        if when is not None:
            WebhookDelivery.objects.filter(pk=args[0]).update(next_attempt_at=timezone.now())
        results.append(import_string(func)(*args))
    return results


@pytest.fixture
def admin_of(make_team, make_user):
    team = make_team("alpha")
    return team, make_user("ada", team, "admin")
