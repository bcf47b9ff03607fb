"""vLLM as the engine on GPU hosts: ``VLLM_URL`` points the chat service at a vLLM OpenAI-compatible server
started with ``--enable-lora`` (and ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`` so adapters can be added live).

- **Names.** Our services still resolve every name (``ft:…``, checkpoints, ``team/name:production``,
  ``adapter:team/name``) for the caller, so team visibility stays ours; vLLM only ever sees its own names: the base
  model by its catalog name (start vLLM with ``--served-model-name <that name>``) and each adapter or checkpoint
  by its cache key (``adapter-<pk>``, ``ckpt-<pk>``), registered with ``POST /v1/load_lora_adapter`` the first time
  it is used (vLLM reads the folder itself: it must see the same path, e.g. the shared ``DATA_DIR``).
- **Requests.** ``POST /tokenize`` bounds and charges the prompt; ``POST /v1/chat/completions`` streams the answer
  (server-sent events), read into the same text pieces + ``GenerationResult`` as our own model server gives.
"""

from __future__ import annotations

import http.client
import json
import threading
from collections.abc import Iterator
from urllib.parse import urlsplit

from django.conf import settings

from core.errors import RateLimited
from serving.client import ModelServerError
from serving.inference import GenerationRequest, GenerationResult

_registered: set[tuple[str, str]] = set()  # (vLLM URL, LoRA name) already loaded there
_registered_lock = threading.Lock()


def _post(path: str, body: dict) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    url = urlsplit(settings.VLLM_URL)
    conn = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port or 80, timeout=600)
    try:
        conn.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"})
        return conn, conn.getresponse()
    except OSError as exc:
        conn.close()
        raise ModelServerError(f"The vLLM server at {settings.VLLM_URL} is unreachable: {exc}") from None


def _json(path: str, body: dict) -> tuple[int, dict | str]:
    conn, response = _post(path, body)
    try:
        raw = response.read().decode(errors="replace")
        try:
            return response.status, json.loads(raw)
        except ValueError:
            return response.status, raw
    finally:
        conn.close()


def vllm_model_name(*, base_name: str, lora_name: str | None) -> str:
    """The name vLLM knows the model by: the LoRA's registered name, else the base's served name."""
    return lora_name or base_name


def vllm_adapter_ensure(*, lora_name: str, lora_path: str) -> None:
    """Register ``lora_path`` under ``lora_name`` with vLLM once (an adapter it already has is fine)."""
    key = (settings.VLLM_URL, lora_name)
    with _registered_lock:
        if key in _registered:
            return
    status, body = _json("/v1/load_lora_adapter", {"lora_name": lora_name, "lora_path": lora_path})
    if status != 200 and "already" not in str(body).lower():
        raise ModelServerError(f"vLLM refused the adapter {lora_name} ({status}): {str(body)[:300]}")
    with _registered_lock:
        _registered.add(key)


def vllm_count_prompt_tokens(*, model: str, messages: list[dict]) -> int:
    status, body = _json("/tokenize", {"model": model, "messages": messages, "add_generation_prompt": True})
    if status != 200 or not isinstance(body, dict):
        raise ModelServerError(f"vLLM could not tokenize the prompt ({status}): {str(body)[:300]}")
    return int(body["count"])


def vllm_generate_stream(*, model: str, request: GenerationRequest) -> Iterator[str | GenerationResult]:
    """Send now (a 429 from vLLM becomes ``RateLimited`` here); iterate for text pieces, then the result."""
    body = {"model": model, "messages": request.messages, "max_tokens": request.max_new_tokens,
            "temperature": request.temperature, "top_p": request.top_p, "stream": True,
            "stream_options": {"include_usage": True}}
    if request.seed is not None:
        body["seed"] = request.seed
    if request.stop:
        body["stop"] = request.stop
    conn, response = _post("/v1/chat/completions", body)
    if response.status == 429:
        conn.close()
        raise RateLimited("The vLLM server is at capacity.", retry_after=int(response.getheader("Retry-After") or
                                                                             settings.SERVING_RETRY_AFTER_SECONDS),
                          code="server_overloaded")
    if response.status != 200:
        detail = response.read().decode(errors="replace")[:300]
        conn.close()
        raise ModelServerError(f"vLLM failed the request ({response.status}): {detail}")
    return _events(conn, response)


def _events(conn: http.client.HTTPConnection, response: http.client.HTTPResponse) -> Iterator[str | GenerationResult]:
    text: list[str] = []
    finish = "stop"
    usage = {"prompt_tokens": 0, "completion_tokens": 0}
    try:
        for raw in response:
            line = raw.decode().strip()
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                break
            chunk = json.loads(data)
            if chunk.get("error"):
                raise ModelServerError(f"vLLM failed: {chunk['error']}")
            if chunk.get("usage"):
                usage = chunk["usage"]
            for choice in chunk.get("choices") or []:
                piece = (choice.get("delta") or {}).get("content")
                if piece:
                    text.append(piece)
                    yield piece
                if choice.get("finish_reason"):
                    finish = choice["finish_reason"]
        yield GenerationResult(text="".join(text), prompt_tokens=int(usage.get("prompt_tokens") or 0),
                               completion_tokens=int(usage.get("completion_tokens") or 0), finish_reason=finish)
    finally:
        response.close()
        conn.close()  # vLLM aborts a request whose client went away
