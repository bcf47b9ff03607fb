"""The web process's side of the model server: send a generation, read its tokens as they come.

``SERVING_URL`` (``http://127.0.0.1:8077``) points at ``manage.py serve_models``; the web process then loads no
model at all. Empty, the same ``Engine`` runs inside this process (development and tests), started on first use.
Either way a caller gets text pieces and then one ``GenerationResult``; closing the iterator early (the HTTP
client disconnected) cancels the sequence on the engine.
"""

from __future__ import annotations

import http.client
import json
import threading
from collections.abc import Iterator
from dataclasses import asdict
from urllib.parse import urlsplit

from django.conf import settings

from core.errors import ApplicationError, RateLimited
from serving.inference import GenerationRequest, GenerationResult

_local = None
_local_lock = threading.Lock()


class ModelServerError(ApplicationError):
    """The model server is unreachable or failed the request."""

    status = 503

    def __init__(self, message: str) -> None:
        super().__init__(message, code="model_server_unavailable")


def _local_engine():
    global _local
    with _local_lock:
        if _local is None:
            from serving.engine import Engine  # imports torch: only when no model server is configured

            _local = Engine()
        return _local


def _connection() -> http.client.HTTPConnection:
    url = urlsplit(settings.SERVING_URL)
    return http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port or 80, timeout=600)


def _post(path: str, body: dict) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    conn = _connection()
    try:
        conn.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"})
        response = conn.getresponse()
    except OSError as exc:
        conn.close()
        raise ModelServerError(f"The model server at {settings.SERVING_URL} is unreachable: {exc}") from None
    if response.status == 429:
        retry = int(response.getheader("Retry-After") or settings.SERVING_RETRY_AFTER_SECONDS)
        conn.close()
        raise RateLimited(f"The model server is at capacity; retry in {retry}s.", retry_after=retry,
                          code="server_overloaded")
    if response.status != 200:
        detail = response.read().decode(errors="replace")[:500]
        conn.close()
        raise ModelServerError(f"The model server failed the request ({response.status}): {detail}")
    return conn, response


def engine_count_prompt_tokens(*, base_path: str, adapter_path: str | None, messages: list[dict]) -> int:
    if not settings.SERVING_URL:
        return _local_engine().count_prompt_tokens(base_path, adapter_path, messages)
    conn, response = _post("/tokenize", {"base_path": base_path, "adapter_path": adapter_path, "messages": messages})
    try:
        return int(json.loads(response.read())["tokens"])
    finally:
        conn.close()


def engine_generate_stream(*, base_path: str, adapter_key: str | None, adapter_path: str | None,
                           request: GenerationRequest) -> Iterator[str | GenerationResult]:
    """Submit now (a full queue raises ``RateLimited`` here, before any byte is streamed); iterate for tokens."""
    if not settings.SERVING_URL:
        from serving.engine import Job  # imports torch, as above

        job = _local_engine().submit(Job(base_path, adapter_key, adapter_path, request))
        return _local_pieces(job)
    conn, response = _post("/generate", {"base_path": base_path, "adapter_key": adapter_key, "adapter_path": adapter_path,
                                   "request": asdict(request)})
    return _remote_pieces(conn, response)


def _local_pieces(job) -> Iterator[str | GenerationResult]:
    try:
        yield from job
    finally:
        job.cancel()  # a no-op once finished; stops the decoding when the consumer leaves early


def _remote_pieces(conn: http.client.HTTPConnection, response: http.client.HTTPResponse) -> Iterator[str | GenerationResult]:
    try:
        for raw in response:
            line = json.loads(raw)
            if "text" in line:
                if line["text"]:
                    yield line["text"]
            elif "done" in line:
                yield GenerationResult(**line["done"])
                return
            else:
                raise ModelServerError(f"The model server failed: {line.get('error')}")
        raise ModelServerError("The model server closed the stream early.")
    finally:
        response.close()
        conn.close()  # the server's next write fails and it cancels the sequence


def engine_generate(*, base_path: str, adapter_key: str | None, adapter_path: str | None,
                    request: GenerationRequest) -> GenerationResult:
    text = []
    for piece in engine_generate_stream(base_path=base_path, adapter_key=adapter_key, adapter_path=adapter_path,
                                        request=request):
        if isinstance(piece, GenerationResult):
            piece.text = "".join(text)
            return piece
        text.append(piece)
    raise ModelServerError("The model server ended without a result.")
