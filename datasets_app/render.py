"""Render internal records through a base model's tokenizer, marking the tokens the loss is on.

Plain module (no Django). The preview and the token statistics use it. The rules are those of the
training recipe (``ml/data.py``); ``tests/datasets_app`` checks that both give the same tokens and the
same trained positions, so the preview shows exactly what is trained.

A conversation is rendered with the tokenizer's chat template. The trained span of an assistant
message is the text its turn adds after the generation prompt: rendering ``messages[:i]`` with
``add_generation_prompt=True`` and ``messages[:i+1]`` without gives the two ends (content plus the
template's end-of-turn marker). Assistant messages with ``weight: 0`` are not trained. When a
template is not prefix-stable (some insert dates or strip earlier reasoning), the content's own
position in the full text is used instead.

Tool calls go through the template's own tool support when it has one (it reads ``tools`` and
``tool_calls``), else through the fallback of ``templates.template_messages`` (tools described in the
system message, ``<tool_call>`` blocks in the assistant's turn, ``<tool_response>`` blocks in a user
turn); either way the loss is on the assistant's calls and answers. Prompt/completion rows are the prompt
followed by the completion, without a template, with the loss on the completion (and EOS).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ml import templates
from ml.templates import fallback_template


@dataclass
class Rendered:
    """A record as the model sees it: text, character spans that are trained, and how it was rendered."""

    text: str
    trained_spans: list[tuple[int, int]] = field(default_factory=list)
    template: str = "model"  # model | fallback | none (plain text / classification)
    kind: str = "chat"


@dataclass
class Encoded:
    input_ids: list[int]
    trained: list[bool]
    offsets: list[tuple[int, int]]
    rendered: Rendered

    @property
    def n_trained(self) -> int:
        return sum(self.trained)


def _mtime(path: str) -> float:
    try:
        return max((p.stat().st_mtime for p in Path(path).iterdir() if p.name.startswith(("tokenizer", "chat"))),
                   default=0.0)
    except OSError:
        return 0.0


@functools.lru_cache(maxsize=4)
def _load(path: str, _mtime: float) -> Any:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path, local_files_only=True)


def load_tokenizer(path: str | os.PathLike) -> Any:
    """The tokenizer of a local model folder (offline), cached per process and per folder change."""
    path = str(path)
    return _load(path, _mtime(path))


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def _apply(tokenizer: Any, messages: list[dict], *, add_generation_prompt: bool, template: str | None,
           tools: list[dict] | None = None) -> str:
    clean = [{k: v for k, v in m.items() if k != "weight"} for m in messages]
    kwargs: dict[str, Any] = {"chat_template": template} if template else {}
    if tools:
        kwargs["tools"] = tools
    return tokenizer.apply_chat_template(clean, tokenize=False, add_generation_prompt=add_generation_prompt,
                                         **kwargs)


def _conversation(tokenizer: Any, record: dict) -> tuple[list[dict], list[dict] | None, str | None]:
    """The messages and tools to render, and the template to render them with (None: the tokenizer's)."""
    template = None if has_chat_template(tokenizer) else fallback_template()
    native = templates.template_supports_tools(template or tokenizer.chat_template)
    messages, tools = templates.template_messages(_as_chat(record), native_tools=native)
    return messages, tools, template


def _as_chat(record: dict) -> dict:
    """Preference and KTO rows are shown (and counted) as their prompt followed by the chosen / given answer."""
    if "chosen" in record:
        return {"messages": record["prompt"] + record["chosen"]}
    if isinstance(record.get("completion"), list):
        return {"messages": record["prompt"] + record["completion"]}
    return record


def _is_chat(record: dict) -> bool:
    return "messages" in record or "chosen" in record or isinstance(record.get("completion"), list)


def render_record(tokenizer: Any, record: dict) -> Rendered:
    """Render one internal record; chat records go through the chat template.

    The rules are those of ``ml/data.py`` (a test compares the two token for token): a trained
    span runs from the end of the generation prompt to the end of the turn, trailing whitespace
    dropped; turns with ``weight: 0`` are located (to keep the order) but not trained.
    """
    if isinstance(record.get("completion"), str):
        prompt = record["prompt"]
        text = prompt + record["completion"]
        return Rendered(text=text, trained_spans=[(len(prompt), len(text))], template="none", kind="completion")
    if not _is_chat(record):
        text = record.get("text", "")
        # Plain text is trained on every token; a classification text has no generated tokens.
        spans = [(0, len(text))] if "label" not in record else []
        return Rendered(text=text, trained_spans=spans, template="none",
                        kind="classification" if "label" in record else "text")
    messages, tools, template = _conversation(tokenizer, record)
    full = _apply(tokenizer, messages, add_generation_prompt=False, template=template, tools=tools)
    spans: list[tuple[int, int]] = []
    cursor = 0
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        span = None
        try:
            prefix = _apply(tokenizer, messages[:i], add_generation_prompt=True, template=template,
                            tools=tools) if i else None
            upto = _apply(tokenizer, messages[: i + 1], add_generation_prompt=False, template=template, tools=tools)
        except Exception:  # a template that refuses partial conversations (e.g. an assistant turn first)
            prefix = upto = None
        if prefix is not None and upto is not None and full.startswith(prefix) and full.startswith(upto) \
                and len(prefix) < len(upto):
            start, end = len(prefix), len(upto)
            while end > start and full[end - 1].isspace():
                end -= 1
            span = (start, end)
        else:
            found = full.find(message["content"], cursor) if message["content"] else -1
            if found >= 0:
                span = (found, found + len(message["content"]))
        if span is None:
            raise ValueError("could not locate an assistant turn in the rendered conversation")
        cursor = span[1]
        if message.get("weight", 1) != 0:
            spans.append(span)
    return Rendered(text=full, trained_spans=spans, template="fallback" if template else "model")


def encode_record(tokenizer: Any, record: dict) -> Encoded:
    """Token ids of the rendered record and, per token, whether the loss is on it."""
    rendered = render_record(tokenizer, record)
    if rendered.kind == "completion":
        # As training does: the prompt with the tokenizer's special tokens, the completion without, then EOS.
        prompt = tokenizer(record["prompt"], add_special_tokens=True, return_offsets_mapping=True)
        completion = tokenizer(record["completion"], add_special_tokens=False, return_offsets_mapping=True)
        shift = len(record["prompt"])
        ids = list(prompt["input_ids"]) + list(completion["input_ids"])
        offsets = [tuple(o) for o in prompt["offset_mapping"]] + \
            [(a + shift, b + shift) for a, b in completion["offset_mapping"]]
        trained = [False] * len(prompt["input_ids"]) + [True] * len(completion["input_ids"])
        eos = getattr(tokenizer, "eos_token_id", None)
        if eos is not None:
            ids.append(eos)
            offsets.append((len(rendered.text), len(rendered.text)))
            trained.append(True)
        return Encoded(input_ids=ids, trained=trained, offsets=offsets, rendered=rendered)
    if rendered.kind != "chat":
        # As training does for plain text: the tokenizer's own special tokens, then EOS if missing.
        enc = tokenizer(rendered.text, add_special_tokens=True, return_offsets_mapping=True)
        ids = list(enc["input_ids"])
        offsets = [tuple(o) for o in enc["offset_mapping"]]
        eos = getattr(tokenizer, "eos_token_id", None)
        if rendered.kind == "text" and eos is not None and (not ids or ids[-1] != eos):
            ids.append(eos)
            offsets.append((len(rendered.text), len(rendered.text)))
        return Encoded(input_ids=ids, trained=[rendered.kind == "text"] * len(ids), offsets=offsets,
                       rendered=rendered)
    enc = tokenizer(rendered.text, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    offsets = [tuple(o) for o in enc["offset_mapping"]]
    spans = rendered.trained_spans
    # A token is trained when it overlaps a trained span (the rule of ml/data.py).
    trained = [end > start and any(start < e and end > s for s, e in spans) for start, end in offsets]
    return Encoded(input_ids=ids, trained=trained, offsets=offsets, rendered=rendered)


def count_tokens(tokenizer: Any, record: dict) -> int:
    """Length in tokens of the rendered record (cheaper than ``encode_record``: no spans)."""
    if isinstance(record.get("completion"), str):
        eos = getattr(tokenizer, "eos_token_id", None)
        return len(tokenizer(record["prompt"], add_special_tokens=True)["input_ids"]) + \
            len(tokenizer(record["completion"], add_special_tokens=False)["input_ids"]) + (eos is not None)
    if not _is_chat(record):
        ids = tokenizer(record.get("text", ""), add_special_tokens=True)["input_ids"]
        eos = getattr(tokenizer, "eos_token_id", None)
        return len(ids) + (1 if "label" not in record and eos is not None and (not ids or ids[-1] != eos) else 0)
    messages, tools, template = _conversation(tokenizer, record)
    text = _apply(tokenizer, messages, add_generation_prompt=False, template=template, tools=tools)
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def segments(encoded: Encoded) -> list[dict]:
    """The rendered text cut at the trained spans, each piece with its number of tokens.

    A token belongs to the piece its first character is in (a trained token overlapping the start of a
    trained piece belongs to that piece), so the trained pieces' counts add up to the trained tokens.
    """
    text = encoded.rendered.text
    pieces: list[tuple[int, int, bool]] = []
    cursor = 0
    for start, end in sorted(encoded.rendered.trained_spans):
        if start > cursor:
            pieces.append((cursor, start, False))
        if end > start:
            pieces.append((start, end, True))
        cursor = max(cursor, end)
    if cursor < len(text) or not pieces:
        pieces.append((cursor, len(text), False))
    counts = [0] * len(pieces)
    index = 0
    for (start, end), trained in zip(encoded.offsets, encoded.trained, strict=True):
        if end <= start:
            counts[len(pieces) - 1 if start >= len(text) else index] += 1  # e.g. an appended EOS
            continue
        while index < len(pieces) - 1 and start >= pieces[index][1]:
            index += 1
        # A trained token that starts just before its span (overlap) is counted with the span.
        if trained and not pieces[index][2] and index + 1 < len(pieces) and pieces[index + 1][2]:
            counts[index + 1] += 1
        else:
            counts[index] += 1
    return [{"text": text[s:e], "trained": t, "tokens": n} for (s, e, t), n in zip(pieces, counts, strict=True)]
