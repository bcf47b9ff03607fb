"""The dataset formats we accept and how each one becomes the internal form.

Plain module (no Django) so the validator, the benchmark and the training recipe can use it alone.

Internal form, one JSON object per line of a stored version:
- chat-like formats (alpaca, sharegpt, openai) ->
  ``{"messages": [{"role": "system"|"user"|"assistant", "content": str, "weight": 0|1 (assistant, optional)}]}``
- classification -> ``{"text": str, "label": str}``
- plain text -> ``{"text": str}``

Each ``normalise_<format>`` takes one parsed example and returns ``(record, problems)``: the internal
record when the example is usable, else ``None`` and a list of ``(code, message)`` errors. The codes
for chat data are those of OpenAI's public format checker (see the project's reference notes).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

ALPACA = "alpaca"
SHAREGPT = "sharegpt"
OPENAI = "openai"
CLASSIFICATION = "classification"
TEXT = "text"
FORMATS: tuple[str, ...] = (ALPACA, SHAREGPT, OPENAI, CLASSIFICATION, TEXT)
FORMAT_LABELS = {
    ALPACA: "Alpaca (instruction / input / output)",
    SHAREGPT: "ShareGPT (conversations: from / value)",
    OPENAI: "OpenAI chat (messages: role / content)",
    CLASSIFICATION: "Classification (text / label)",
    TEXT: "Plain text (text)",
}
# Other spellings people type for a format (on the command line, in the API).
FORMAT_ALIASES = {"chat": OPENAI, "openai_chat": OPENAI, "openai-chat": OPENAI, "messages": OPENAI,
                  "sharegpt": SHAREGPT, "share_gpt": SHAREGPT, "alpaca": ALPACA, "classify": CLASSIFICATION,
                  "classification": CLASSIFICATION, "text": TEXT, "plain": TEXT, "plaintext": TEXT}

KIND_CHAT = "chat"
KIND_CLASSIFICATION = "classification"
KIND_TEXT = "text"
CHAT_FORMATS = frozenset({ALPACA, SHAREGPT, OPENAI})

ROLES = ("system", "user", "assistant")
# Keys the OpenAI checker tolerates on a message; we drop the ones the internal form has no use for.
OPENAI_MESSAGE_KEYS = frozenset({"role", "content", "name", "weight", "function_call", "tool_calls", "tool_call_id",
                                 "refusal"})
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "chatgpt": "assistant", "bard": "assistant", "model": "assistant", "system": "system"}
SHAREGPT_TURN_KEYS = frozenset({"from", "value", "weight"})

Problem = tuple[str, str]
Normaliser = Callable[[Any], "tuple[dict | None, list[Problem]]"]


def canonical_format(value: str | None) -> str | None:
    """``None``/``""``/``"auto"`` -> None (detect); a known name or alias -> its canonical name; else ValueError."""
    if value is None:
        return None
    key = str(value).strip().lower()
    if key in ("", "auto"):
        return None
    if key in FORMATS:
        return key
    if key in FORMAT_ALIASES:
        return FORMAT_ALIASES[key]
    raise ValueError(f"Unknown format {value!r}; use one of {', '.join(FORMATS)} (or leave it empty to detect).")


def kind_of(fmt: str | None) -> str | None:
    """The internal form a format normalises to: chat, classification or text."""
    if fmt in CHAT_FORMATS:
        return KIND_CHAT
    if fmt == CLASSIFICATION:
        return KIND_CLASSIFICATION
    if fmt == TEXT:
        return KIND_TEXT
    return None


def detect_format(example: Any) -> str | None:
    """Guess the format from one example's keys; None when nothing fits."""
    if not isinstance(example, dict):
        return None
    if "messages" in example:
        return OPENAI
    if "conversations" in example:
        return SHAREGPT
    if "instruction" in example or "output" in example:
        return ALPACA
    if "label" in example:
        return CLASSIFICATION
    if "text" in example:
        return TEXT
    return None


def type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _content_text(content: Any) -> str | None:
    """A message's content as text: a string, or OpenAI's list of ``{"type": "text", "text": ...}`` parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and content:
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                return None
            parts.append(part["text"])
        return "".join(parts)
    return None


def _not_object(example: Any) -> tuple[None, list[Problem]]:
    return None, [("data_type", f"example is {type_name(example)}, expected a JSON object")]


def normalise_openai(example: Any) -> tuple[dict | None, list[Problem]]:
    """OpenAI chat: ``{"messages": [{"role", "content", "weight"?}, ...]}`` (the /v1/files format)."""
    if not isinstance(example, dict):
        return _not_object(example)
    messages = example.get("messages")
    if not isinstance(messages, list) or not messages:
        what = 'no "messages" key' if "messages" not in example else \
            f'"messages" is {type_name(messages)}' + (" (empty)" if messages == [] else "") + ", expected a list"
        return None, [("missing_messages_list", f"{what}: an example needs a non-empty list of messages")]
    problems: list[Problem] = []
    out: list[dict] = []
    has_assistant = False
    for i, message in enumerate(messages, 1):
        if not isinstance(message, dict):
            problems.append(("data_type", f"message {i} is {type_name(message)}, expected an object"))
            continue
        if "role" not in message:
            problems.append(("message_missing_key", f'message {i} has no "role"'))
        if "content" not in message:
            problems.append(("message_missing_key", f'message {i} has no "content"'))
        extra = [k for k in message if k not in OPENAI_MESSAGE_KEYS]
        if extra:
            problems.append(("message_unrecognized_key",
                             f"message {i} has unrecognized key(s) {', '.join(repr(k) for k in extra[:5])}"))
        role = message.get("role")
        if "role" in message and role not in ROLES:
            hint = " (tool and function messages are not supported for training)" \
                if role in ("tool", "function") else ""
            problems.append(("unrecognized_role",
                             f"message {i} has role {_short(role)}; expected system, user or assistant{hint}"))
        raw = message.get("content")
        content = _content_text(raw)
        if "content" in message and (content is None or not content.strip()):
            why = f"is {type_name(raw)}, expected a string" if content is None and raw not in (None, "", []) \
                else "is empty"
            problems.append(("missing_content", f"message {i} ({_short(role)}) content {why}"))
        record = {"role": role, "content": content}
        if "weight" in message:
            weight = message["weight"]
            if role != "assistant":
                problems.append(("invalid_weight", f'message {i}: "weight" is only allowed on assistant messages'))
            elif weight not in (0, 1) or isinstance(weight, bool):
                problems.append(("invalid_weight", f'message {i}: "weight" must be 0 or 1, got {_short(weight)}'))
            else:
                record["weight"] = int(weight)
        if role == "assistant":
            has_assistant = True
        out.append(record)
    if not has_assistant:
        problems.append(("example_missing_assistant_message", "the example has no assistant message"))
    if problems:
        return None, problems
    return {"messages": out}, problems


def normalise_sharegpt(example: Any) -> tuple[dict | None, list[Problem]]:
    """ShareGPT: ``{"conversations": [{"from": "human"|"gpt"|"system", "value"}], "system"?}``."""
    if not isinstance(example, dict):
        return _not_object(example)
    turns = example.get("conversations")
    if not isinstance(turns, list) or not turns:
        what = 'no "conversations" key' if "conversations" not in example else \
            f'"conversations" is {type_name(turns)}' + (" (empty)" if turns == [] else "") + ", expected a list"
        return None, [("missing_messages_list", f"{what}: an example needs a non-empty list of turns")]
    problems: list[Problem] = []
    out: list[dict] = []
    system = example.get("system")
    if system is not None:
        if not isinstance(system, str):
            problems.append(("data_type", f'"system" is {type_name(system)}, expected a string'))
        elif system.strip():
            out.append({"role": "system", "content": system})
    has_assistant = False
    for i, turn in enumerate(turns, 1):
        if not isinstance(turn, dict):
            problems.append(("data_type", f"turn {i} is {type_name(turn)}, expected an object"))
            continue
        if "from" not in turn:
            problems.append(("message_missing_key", f'turn {i} has no "from"'))
        if "value" not in turn:
            problems.append(("message_missing_key", f'turn {i} has no "value"'))
        extra = [k for k in turn if k not in SHAREGPT_TURN_KEYS]
        if extra:
            problems.append(("message_unrecognized_key",
                             f"turn {i} has unrecognized key(s) {', '.join(repr(k) for k in extra[:5])}"))
        source = turn.get("from")
        role = SHAREGPT_ROLES.get(source.lower()) if isinstance(source, str) else None
        if "from" in turn and role is None:
            problems.append(("unrecognized_role",
                             f"turn {i} is from {_short(source)}; expected human, gpt or system"))
        value = turn.get("value")
        if "value" in turn and (not isinstance(value, str) or not value.strip()):
            why = "is empty" if isinstance(value, str) or value is None else \
                f"is {type_name(value)}, expected a string"
            problems.append(("missing_content", f"turn {i} ({_short(source)}) value {why}"))
        record = {"role": role, "content": value}
        if "weight" in turn:
            weight = turn["weight"]
            if role != "assistant" or weight not in (0, 1) or isinstance(weight, bool):
                problems.append(("invalid_weight", f'turn {i}: "weight" must be 0 or 1 on a gpt turn'))
            else:
                record["weight"] = int(weight)
        if role == "assistant":
            has_assistant = True
        out.append(record)
    if not has_assistant:
        problems.append(("example_missing_assistant_message", "the conversation has no gpt (assistant) turn"))
    if problems:
        return None, problems
    return {"messages": out}, problems


def _optional_str(example: dict, key: str, problems: list[Problem]) -> str:
    value = example.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        problems.append(("data_type", f'"{key}" is {type_name(value)}, expected a string'))
        return ""
    return value


def normalise_alpaca(example: Any) -> tuple[dict | None, list[Problem]]:
    """Alpaca: ``instruction``, ``input``?, ``output``, ``system``?, ``history``? (list of [user, assistant])."""
    if not isinstance(example, dict):
        return _not_object(example)
    problems: list[Problem] = []
    for key in ("instruction", "output"):
        if key not in example:
            problems.append(("missing_field", f'no "{key}" field'))
    instruction = _optional_str(example, "instruction", problems)
    extra_input = _optional_str(example, "input", problems)
    output = _optional_str(example, "output", problems)
    system = _optional_str(example, "system", problems)
    # An empty instruction is fine when the input carries the request (some sets put it there).
    if isinstance(example.get("instruction"), str) and not (instruction.strip() or extra_input.strip()):
        problems.append(("empty_field", '"instruction" is empty (and so is "input")'))
    if "output" in example and not output.strip() and isinstance(example.get("output"), (str, type(None))):
        problems.append(("empty_field", '"output" is empty'))
    messages: list[dict] = []
    if system.strip():
        messages.append({"role": "system", "content": system})
    history = example.get("history")
    if history is not None:
        if not isinstance(history, list):
            problems.append(("data_type", f'"history" is {type_name(history)}, expected a list of [user, assistant]'))
        else:
            for i, pair in enumerate(history, 1):
                if not (isinstance(pair, (list, tuple)) and len(pair) == 2
                        and all(isinstance(p, str) for p in pair)):
                    problems.append(("data_type", f"history entry {i} is not a [user, assistant] pair of strings"))
                    continue
                if not pair[0].strip() or not pair[1].strip():
                    problems.append(("empty_field", f"history entry {i} has an empty turn"))
                    continue
                messages.append({"role": "user", "content": pair[0]})
                messages.append({"role": "assistant", "content": pair[1]})
    if problems:
        return None, problems
    # The input is the instruction's material, appended after a blank line (as Alpaca's own prompt does).
    prompt = f"{instruction}\n\n{extra_input}" if instruction.strip() and extra_input.strip() \
        else (instruction if instruction.strip() else extra_input)
    messages.append({"role": "user", "content": prompt})
    messages.append({"role": "assistant", "content": output})
    return {"messages": messages}, problems


def normalise_classification(example: Any) -> tuple[dict | None, list[Problem]]:
    """Classification: ``{"text": str, "label": str|int}`` -> ``{"text", "label": str}``."""
    if not isinstance(example, dict):
        return _not_object(example)
    problems: list[Problem] = []
    text = example.get("text")
    if "text" not in example:
        problems.append(("missing_field", 'no "text" field'))
    elif not isinstance(text, str):
        problems.append(("data_type", f'"text" is {type_name(text)}, expected a string'))
    elif not text.strip():
        problems.append(("empty_field", '"text" is empty'))
    label = example.get("label")
    if label is None or (isinstance(label, str) and not label.strip()):
        problems.append(("label_missing", 'no "label"' if "label" not in example else '"label" is empty'))
    elif isinstance(label, bool) or not isinstance(label, (str, int)):
        problems.append(("data_type", f'"label" is {type_name(label)}, expected a string or an integer'))
    if problems:
        return None, problems
    return {"text": text, "label": str(label).strip()}, problems


def normalise_text(example: Any) -> tuple[dict | None, list[Problem]]:
    """Plain text corpus: ``{"text": str}`` (other keys, e.g. a title, are ignored)."""
    if not isinstance(example, dict):
        return _not_object(example)
    text = example.get("text")
    if "text" not in example:
        return None, [("missing_field", 'no "text" field')]
    if not isinstance(text, str):
        return None, [("data_type", f'"text" is {type_name(text)}, expected a string')]
    if not text.strip():
        return None, [("empty_field", '"text" is empty')]
    return {"text": text}, []


NORMALISERS: dict[str, Normaliser] = {
    ALPACA: normalise_alpaca,
    SHAREGPT: normalise_sharegpt,
    OPENAI: normalise_openai,
    CLASSIFICATION: normalise_classification,
    TEXT: normalise_text,
}


def _short(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"
