"""The model server's HTTP face (``manage.py serve_models``), on a local address only the web processes reach.

- ``POST /generate`` ``{"base_path", "adapter_key", "adapter_path", "request": {...}}``: newline-delimited JSON,
  one ``{"text": ...}`` line per decoded token (an empty text while a stop string may still be starting), then
  ``{"done": {...usage...}}`` or ``{"error": ...}``. A client that goes away makes the next write fail, which
  cancels its sequence: the engine drops it before the next decoding step.
- ``POST /tokenize`` ``{"base_path", "adapter_path", "messages"}`` -> ``{"tokens": n}`` (the prompt as the model
  will read it, with the adapter's chat template), so the web process bounds and charges a request without a
  tokenizer of its own.
- ``GET /health``: the engine's counters (active, waiting, completed, cancelled, rejected, loaded adapters).
- A full queue answers 429 with ``Retry-After``.

The server trusts its caller for visibility (the web process resolved the model for the user): it listens on
127.0.0.1 by default and must never be exposed beyond the host.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from django.conf import settings

from serving.engine import Engine, Job, QueueFull
from serving.inference import GenerationRequest, GenerationResult

log = logging.getLogger(__name__)


def job_from(payload: dict) -> Job:
    req = payload["request"]
    return Job(base_path=payload["base_path"], adapter_key=payload.get("adapter_key"),
               adapter_path=payload.get("adapter_path"),
               request=GenerationRequest(messages=req["messages"], max_new_tokens=int(req["max_new_tokens"]),
                                         temperature=float(req.get("temperature") or 0.0),
                                         top_p=float(req.get("top_p") or 1.0), seed=req.get("seed"),
                                         stop=list(req.get("stop") or [])))


class _Handler(BaseHTTPRequestHandler):
    server: ModelServer
    protocol_version = "HTTP/1.0"  # one request per connection: the end of a stream is the end of the body

    def log_message(self, fmt: str, *args) -> None:
        log.debug(fmt, *args)

    def _json(self, status: int, body: dict, headers: dict | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _payload(self) -> dict:
        length = int(self.headers.get("Content-Length") or 0)
        return json.loads(self.rfile.read(length) or b"{}")

    def do_GET(self) -> None:
        if self.path == "/health":
            self._json(200, {"ok": True, **self.server.engine.snapshot()})
        else:
            self._json(404, {"error": "not found"})

    def do_POST(self) -> None:
        try:
            payload = self._payload()
            if self.path == "/tokenize":
                n = self.server.engine.count_prompt_tokens(payload["base_path"], payload.get("adapter_path"),
                                                           payload["messages"])
                self._json(200, {"tokens": n})
            elif self.path == "/generate":
                self._generate(payload)
            else:
                self._json(404, {"error": "not found"})
        except (BrokenPipeError, ConnectionResetError):
            pass
        except Exception as exc:  # a bad request or a model that fails to load: the caller gets the reason
            log.exception("model server request failed")
            try:
                self._json(500, {"error": f"{type(exc).__name__}: {exc}"})
            except OSError:
                pass

    def _generate(self, payload: dict) -> None:
        job = job_from(payload)
        try:
            self.server.engine.submit(job)
        except QueueFull as exc:
            retry = settings.SERVING_RETRY_AFTER_SECONDS
            self._json(429, {"error": str(exc), "retry_after": retry}, {"Retry-After": str(retry)})
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.end_headers()
        try:
            while True:
                kind, value = job.events.get()
                if kind == "text":
                    line = {"text": value}
                elif kind == "done":
                    line = {"done": asdict(value)}
                else:
                    line = {"error": value}
                self.wfile.write(json.dumps(line).encode() + b"\n")
                self.wfile.flush()
                if kind != "text":
                    return
        except OSError:  # the client went away: stop decoding its sequence
            job.cancel()


class ModelServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # the listen backlog: many web threads connect at once (the default 5 resets them)

    def __init__(self, host: str, port: int, engine: Engine | None = None) -> None:
        super().__init__((host, port), _Handler)
        self.engine = engine or Engine()


def result_from(done: dict) -> GenerationResult:
    return GenerationResult(**done)
