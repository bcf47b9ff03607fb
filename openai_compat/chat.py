"""/v1/chat/completions: the OpenAI chat protocol onto ``serving.services`` (which resolves the model, bounds
the request and applies the team's rate limits); this module translates messages and the response shapes,
plain and streamed (server-sent events)."""

# No `from __future__ import annotations`: ninja resolves the schemas at import.
import json
import time
import uuid

from django.http import StreamingHttpResponse
from ninja import Router

from accounts.auth import principal
from core.errors import ApplicationError
from openai_compat.schemas import ChatIn
from serving.inference import GenerationResult
from serving.services import chat_completion_create, chat_completion_stream

router = Router(tags=["chat"])
ROLES = {"developer": "system"}  # the protocol's roles -> ours


def _text_of(content) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    parts = []
    for part in content:
        if isinstance(part, dict) and part.get("type") in ("text", "input_text"):
            parts.append(str(part.get("text", "")))
        else:
            raise ApplicationError("Only text content parts are supported.", code="unsupported_content",
                                   param="messages")
    return "".join(parts)


def _arguments(payload: ChatIn) -> dict:
    messages = [{"role": ROLES.get(m.role, m.role), "content": _text_of(m.content)} for m in payload.messages]
    return {"model": payload.model, "messages": messages,
            "max_tokens": payload.max_completion_tokens or payload.max_tokens, "temperature": payload.temperature,
            "top_p": payload.top_p, "seed": payload.seed, "stop": payload.stop}


def _in_protocol_terms(exc: ApplicationError, payload: ChatIn) -> ApplicationError:
    if exc.param == "max_tokens" and payload.max_completion_tokens:
        exc.param = "max_completion_tokens"
    return exc


def _usage(result: GenerationResult) -> dict:
    return {"prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens,
            "total_tokens": result.prompt_tokens + result.completion_tokens}


@router.post("/chat/completions", response={200: dict})
def chat_completions(request, payload: ChatIn):
    who = principal(request)
    completion_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
    created = int(time.time())
    try:
        if not payload.stream:
            result = chat_completion_create(user=who, **_arguments(payload))
        else:
            pieces = chat_completion_stream(user=who, **_arguments(payload))
    except ApplicationError as exc:
        raise _in_protocol_terms(exc, payload) from None
    if not payload.stream:
        return {"id": completion_id, "object": "chat.completion", "created": created, "model": payload.model,
                "system_fingerprint": None,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": result.text, "refusal": None},
                             "logprobs": None, "finish_reason": result.finish_reason}],
                "usage": _usage(result)}

    include_usage = bool((payload.stream_options or {}).get("include_usage"))

    def chunk(delta: dict, finish: str | None = None, usage: dict | None = None) -> str:
        body = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": payload.model,
                "system_fingerprint": None,
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
        if usage is not None:
            body = {**body, "choices": [], "usage": usage}
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

    def events():
        yield chunk({"role": "assistant", "content": ""})
        try:
            for piece in pieces:
                if isinstance(piece, GenerationResult):
                    yield chunk({}, piece.finish_reason)
                    if include_usage:
                        yield chunk({}, usage=_usage(piece))
                else:
                    yield chunk({"content": piece})
        except Exception as exc:  # the status line is sent: report in-band, the OpenAI way
            err = {"error": {"message": f"Generation failed: {exc}", "type": "server_error", "param": None,
                             "code": "generation_failed"}}
            yield f"data: {json.dumps(err)}\n\n"
        yield "data: [DONE]\n\n"

    response = StreamingHttpResponse(events(), content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    return response
