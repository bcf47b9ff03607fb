"""The dataset formats we accept and how each one becomes the internal form.

Plain module (no Django) so the validator, the benchmark and the training recipe can use it alone.

Internal form, one JSON object per line of a stored version:

- chat-like formats (alpaca, sharegpt, openai) ->
  ``{"messages": [{"role": "system"|"user"|"assistant"|"tool", "content": str, ...}], "tools"?: [...]}``.
  An assistant message may carry ``"weight": 0|1`` and ``"tool_calls": [{"id", "type": "function",
  "function": {"name", "arguments": {...}}}]`` (arguments decoded from their JSON text); a ``tool`` message
  answers one call: ``{"role": "tool", "tool_call_id", "name", "content"}``. ``tools`` lists the declared
  functions as ``[{"type": "function", "function": {"name", "description"?, "parameters"?}}]``.
- completion -> ``{"prompt": str, "completion": str}`` (kind text: no chat template, loss on the completion)
- classification -> ``{"text": str, "label": str}``
- plain text -> ``{"text": str}``
- preference (pairs) -> ``{"prompt": [messages], "chosen": [messages], "rejected": [messages]}``
- kto (unpaired, labelled) -> ``{"prompt": [messages], "completion": [messages], "label": bool}``

Each ``normalise_<format>`` takes one parsed example and returns ``(record, problems)``: the internal
record when the example is usable, else ``None`` and a list of ``(code, message)`` errors. The codes
for chat data are those of OpenAI's public format checker (see the project's reference notes).

A ``ColumnMapping`` (``--columns``, the API's ``columns``, a LLaMA-Factory ``dataset_info.json`` entry)
renames a file's keys onto these formats' keys before detection and normalisation.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, Field, field_validator

ALPACA = "alpaca"
SHAREGPT = "sharegpt"
OPENAI = "openai"
COMPLETION = "completion"
CLASSIFICATION = "classification"
TEXT = "text"
PREFERENCE = "preference"
KTO = "kto"
FORMATS: tuple[str, ...] = (ALPACA, SHAREGPT, OPENAI, COMPLETION, CLASSIFICATION, TEXT, PREFERENCE, KTO)
FORMAT_LABELS = {
    ALPACA: "Alpaca (instruction / input / output)",
    SHAREGPT: "ShareGPT (conversations: from / value, or role / content)",
    OPENAI: "OpenAI chat (messages: role / content, tools)",
    COMPLETION: "Completion (prompt / completion)",
    CLASSIFICATION: "Classification (text / label)",
    TEXT: "Plain text (text, or a .txt / .md corpus)",
    PREFERENCE: "Preference pairs (prompt / chosen / rejected)",
    KTO: "KTO (unpaired rows with a boolean label)",
}
# Other spellings people type for a format (on the command line, in the API).
FORMAT_ALIASES = {"chat": OPENAI, "openai_chat": OPENAI, "openai-chat": OPENAI, "messages": OPENAI,
                  "sharegpt": SHAREGPT, "share_gpt": SHAREGPT, "alpaca": ALPACA, "classify": CLASSIFICATION,
                  "classification": CLASSIFICATION, "text": TEXT, "plain": TEXT, "plaintext": TEXT,
                  "prompt_completion": COMPLETION, "prompt-completion": COMPLETION, "completions": COMPLETION,
                  "pairs": PREFERENCE, "dpo": PREFERENCE, "ranking": PREFERENCE, "unpaired": KTO}

KIND_CHAT = "chat"
KIND_CLASSIFICATION = "classification"
KIND_TEXT = "text"
KIND_PREFERENCE = "preference"
KIND_KTO = "kto"
CHAT_FORMATS = frozenset({ALPACA, SHAREGPT, OPENAI})
# Formats whose rows become supervised (SFT / plain LM) training rows: preference keys are refused in them.
SFT_FORMATS = frozenset({ALPACA, SHAREGPT, OPENAI, COMPLETION, TEXT})

ROLES = ("system", "user", "assistant")
# Keys the OpenAI checker tolerates on a message; we drop the ones the internal form has no use for.
OPENAI_MESSAGE_KEYS = frozenset({"role", "content", "name", "weight", "function_call", "tool_calls", "tool_call_id",
                                 "refusal"})
OPENAI_ROLES = ("system", "developer", "user", "assistant", "tool", "function")
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "chatgpt": "assistant", "bard": "assistant", "model": "assistant", "system": "system",
                  "function_call": "function_call", "observation": "observation", "tool": "observation"}
SHAREGPT_TURN_KEYS = frozenset({"from", "value", "weight", "role", "content"})
# Keys of modalities we do not train: refused, never dropped.
MODALITY_KEYS = ("images", "videos", "audios", "image", "video", "audio")
MEDIA_PART_TYPES = frozenset({"image_url", "image", "input_image", "input_audio", "audio", "video", "video_url",
                              "file"})
PREFERENCE_KEYS = ("chosen", "rejected", "preferred_output", "non_preferred_output")
# LLaMA-Factory's ``columns`` names -> ours, and its ``tags`` -> the ShareGPT roles we read.
LLAMA_FACTORY_COLUMNS = {"prompt": "instruction", "query": "input", "response": "output", "system": "system",
                         "history": "history", "messages": "conversations", "tools": "tools", "chosen": "chosen",
                         "rejected": "rejected", "kto_tag": "label", "images": "images", "videos": "videos",
                         "audios": "audios"}
TAG_ROLES = {"user_tag": "human", "assistant_tag": "gpt", "observation_tag": "observation",
             "function_tag": "function_call", "system_tag": "system"}
TAG_KEYS = frozenset({"role_tag", "content_tag", *TAG_ROLES})
# The keys a mapping may target (ours).
MAPPABLE_KEYS = frozenset({"instruction", "input", "output", "response", "system", "history", "messages",
                           "conversations", "tools", "functions", "prompt", "completion", "chosen", "rejected",
                           "label", "text", "images", "videos", "audios", "input.messages", "preferred_output",
                           "non_preferred_output"})

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
    """The internal form a format normalises to: chat, text (plain or prompt/completion), classification,
    preference or kto."""
    if fmt in CHAT_FORMATS:
        return KIND_CHAT
    if fmt == CLASSIFICATION:
        return KIND_CLASSIFICATION
    if fmt in (TEXT, COMPLETION):
        return KIND_TEXT
    if fmt == PREFERENCE:
        return KIND_PREFERENCE
    if fmt == KTO:
        return KIND_KTO
    return None


def detect(example: Any) -> tuple[str | None, str]:
    """Guess the format from one example's keys: ``(format, why)``; ``(None, "")`` when nothing fits.

    Preference and labelled (KTO) shapes are looked for first, so that they are never read as chat.
    """
    if not isinstance(example, dict):
        return None, ""
    if "chosen" in example and "rejected" in example:
        return PREFERENCE, 'it has "chosen" and "rejected"'
    if "preferred_output" in example or "non_preferred_output" in example:
        return PREFERENCE, 'it has "preferred_output" / "non_preferred_output" (OpenAI preference format)'
    if is_boolean_label(example.get("label")) and any(k in example for k in ("prompt", "completion", "messages",
                                                                               "conversations", "instruction")):
        return KTO, 'it has a boolean "label" next to the conversation (unpaired preference, KTO)'
    if "messages" in example:
        return OPENAI, 'it has "messages"'
    if "conversations" in example:
        return SHAREGPT, 'it has "conversations"'
    if "prompt" in example and "completion" in example:
        if isinstance(example["prompt"], list) and isinstance(example["completion"], list):
            return OPENAI, 'it has "prompt" and "completion" as message lists (conversational prompt/completion)'
        return COMPLETION, 'it has "prompt" and "completion"'
    if "instruction" in example or "output" in example or "response" in example:
        keys = "/".join(k for k in ("instruction", "input", "output", "response") if k in example)
        return ALPACA, f'it has "{keys}"'
    if "label" in example:
        return CLASSIFICATION, 'it has "label"'
    if "text" in example:
        return TEXT, 'it has "text"'
    return None, ""


def is_boolean_label(value: Any) -> bool:
    """True/false, also as CSV's text ``"true"`` / ``"false"``: the label of a KTO row."""
    return isinstance(value, bool) or (isinstance(value, str) and value.strip().lower() in ("true", "false"))


def detect_format(example: Any) -> str | None:
    """Guess the format from one example's keys; None when nothing fits."""
    return detect(example)[0]


def guard(example: dict, fmt: str) -> Problem | None:
    """Rows that must never be imported as ``fmt``: media we do not train, and preference / labelled rows in an
    SFT format (their rejected or undesirable answers would become training targets)."""
    media = [k for k in MODALITY_KEYS if example.get(k) not in (None, "", [], {})]
    if media:
        return ("unsupported_modality",
                f"the example has {', '.join(repr(k) for k in media)}: images, videos and audio are not trained "
                "here yet, so such rows are refused (never imported without them)")
    if fmt not in SFT_FORMATS:
        return None
    pref = [k for k in PREFERENCE_KEYS if k in example]
    if pref:
        return ("preference_data",
                f"the example has {', '.join(repr(k) for k in pref)}: that is preference data (format preference), "
                f"never imported as {fmt} training rows")
    if is_boolean_label(example.get("label")) or "kto_tag" in example:
        key = "label" if "label" in example else "kto_tag"
        return ("preference_data",
                f'the example has a boolean "{key}": that is unpaired preference data (format kto), never '
                f"imported as {fmt} training rows (the undesirable answers would be trained)")
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


def _media_parts(content: Any) -> list[str]:
    if not isinstance(content, list):
        return []
    return sorted({p["type"] for p in content if isinstance(p, dict) and p.get("type") in MEDIA_PART_TYPES})


def _not_object(example: Any) -> tuple[None, list[Problem]]:
    return None, [("data_type", f"example is {type_name(example)}, expected a JSON object")]


# ---------------------------------------------------------------------------------------------------------------
# Column mapping


class ColumnMapping(BaseModel):
    """How a file's keys map onto ours: ``columns`` is ``{our_key: file_key}``, ``tags`` LLaMA-Factory's
    ShareGPT tags (``role_tag``, ``content_tag``, ``user_tag``, ``assistant_tag``, ``observation_tag``,
    ``function_tag``, ``system_tag``). Shared by the API schema, the admin form, the command and the service."""

    columns: dict[str, str] = Field(default_factory=dict)
    tags: dict[str, str] = Field(default_factory=dict)
    source: str | None = Field(None, description="Where the mapping came from (e.g. dataset_info.json:entry).")

    @field_validator("columns")
    @classmethod
    def _known_columns(cls, value: dict[str, str]) -> dict[str, str]:
        unknown = [k for k in value if k not in MAPPABLE_KEYS]
        if unknown:
            raise ValueError(f"unknown target key(s) {', '.join(repr(k) for k in unknown)}; a mapping is "
                             f"our_key=file_key with our_key one of {', '.join(sorted(MAPPABLE_KEYS))}")
        for key, source in value.items():
            if not isinstance(source, str) or not source.strip():
                raise ValueError(f"the column mapped to {key!r} is empty")
        return value

    @field_validator("tags")
    @classmethod
    def _known_tags(cls, value: dict[str, str]) -> dict[str, str]:
        unknown = [k for k in value if k not in TAG_KEYS]
        if unknown:
            raise ValueError(f"unknown tag(s) {', '.join(repr(k) for k in unknown)}; use {', '.join(sorted(TAG_KEYS))}")
        return value

    def __bool__(self) -> bool:
        return bool(self.columns or self.tags)

    def describe(self) -> str:
        parts = [f"{k}={v}" for k, v in self.columns.items()] + [f"{k}={v}" for k, v in self.tags.items()]
        return ", ".join(parts) + (f" (from {self.source})" if self.source else "")

    def apply(self, example: Any) -> Any:
        """The example with its keys renamed onto ours (other keys kept); turns re-tagged as ShareGPT turns."""
        if not isinstance(example, dict):
            return example
        out = example
        if self.columns:
            sources = set(self.columns.values())
            out = {k: v for k, v in example.items() if k not in sources or k in self.columns}
            for target, source in self.columns.items():
                if source in example:
                    if target == "input.messages":
                        out["input"] = {"messages": example[source]}
                    else:
                        out[target] = example[source]
        if self.tags:
            out = dict(out)
            for key in ("conversations", "chosen", "rejected"):
                value = out.get(key)
                if isinstance(value, list):
                    out[key] = [self._turn(t) for t in value]
                elif isinstance(value, dict):
                    out[key] = self._turn(value)
        return out

    def _turn(self, turn: Any) -> Any:
        if not isinstance(turn, dict):
            return turn
        role_tag = self.tags.get("role_tag", "from")
        content_tag = self.tags.get("content_tag", "value")
        roles = {self.tags[tag]: role for tag, role in TAG_ROLES.items() if tag in self.tags}
        out = {k: v for k, v in turn.items() if k not in (role_tag, content_tag)}
        if role_tag in turn:
            source = turn[role_tag]
            out["from"] = roles.get(source, source) if isinstance(source, str) else source
        if content_tag in turn:
            out["value"] = turn[content_tag]
        return out


def parse_columns(text: str | None) -> dict[str, str]:
    """``"instruction=question,input=context"`` (or a JSON object) -> ``{"instruction": "question", ...}``."""
    text = (text or "").strip()
    if not text:
        return {}
    if text.startswith("{"):
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"columns: invalid JSON ({exc.msg})") from None
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise ValueError('columns: expected a JSON object of strings, e.g. {"instruction": "question"}')
        return value
    out: dict[str, str] = {}
    for part in text.split(","):
        if not part.strip():
            continue
        target, sep, source = part.partition("=")
        if not sep or not target.strip() or not source.strip():
            raise ValueError(f"columns: {part.strip()!r} is not our_key=file_key (e.g. instruction=question)")
        out[target.strip()] = source.strip()
    return out


def mapping_from_dataset_info(entry: dict, name: str) -> tuple[str | None, ColumnMapping]:
    """A LLaMA-Factory ``dataset_info.json`` entry -> (format, mapping).

    ``formatting`` (alpaca, the default, or sharegpt) gives the format, ``ranking: true`` makes it preference
    pairs and a ``kto_tag`` column KTO rows; ``columns`` use LLaMA-Factory's names (prompt, query, response,
    messages, ...) and are translated onto ours; ``tags`` are kept as they are.
    """
    if not isinstance(entry, dict):
        raise ValueError(f"entry {name!r} is not an object")
    formatting = str(entry.get("formatting") or "alpaca").lower()
    if formatting not in ("alpaca", "sharegpt", "openai"):
        raise ValueError(f"entry {name!r}: formatting {formatting!r} is not alpaca or sharegpt")
    raw_columns = entry.get("columns") or {}
    if not isinstance(raw_columns, dict):
        raise ValueError(f"entry {name!r}: columns is not an object")
    columns: dict[str, str] = {}
    for key, source in raw_columns.items():
        if key not in LLAMA_FACTORY_COLUMNS:
            raise ValueError(f"entry {name!r}: unknown column {key!r} (LLaMA-Factory names: "
                             f"{', '.join(LLAMA_FACTORY_COLUMNS)})")
        target = LLAMA_FACTORY_COLUMNS[key]
        if key == "messages" and formatting == "openai":
            target = "messages"
        if target != source:
            columns[target] = source
    tags = entry.get("tags") or {}
    if not isinstance(tags, dict):
        raise ValueError(f"entry {name!r}: tags is not an object")
    if entry.get("ranking"):
        fmt = PREFERENCE
    elif "kto_tag" in raw_columns:
        fmt = KTO
    else:
        fmt = SHAREGPT if formatting == "sharegpt" else OPENAI if formatting == "openai" else ALPACA
    return fmt, ColumnMapping(columns=columns, tags=dict(tags), source=f"dataset_info.json:{name}")


# ---------------------------------------------------------------------------------------------------------------
# Tool calling: declared tools, calls and their answers


def normalise_tools(value: Any, problems: list[Problem], key: str = "tools") -> list[dict]:
    """OpenAI ``tools`` (``[{"type": "function", "function": {...}}]``), legacy ``functions`` (``[{name, ...}]``)
    or ShareGPT's ``tools`` column (the same as a JSON string) -> ``[{"type": "function", "function": {...}}]``."""
    if isinstance(value, str):
        if not value.strip():
            return []
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            problems.append(("invalid_tools", f'"{key}" is a string but not JSON ({exc.msg})'))
            return []
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        problems.append(("invalid_tools", f'"{key}" is {type_name(value)}, expected a list of functions'))
        return []
    out: list[dict] = []
    seen: set[str] = set()
    for i, tool in enumerate(value, 1):
        function = tool.get("function") if isinstance(tool, dict) and "function" in tool else tool
        if isinstance(tool, dict) and "function" in tool and tool.get("type", "function") != "function":
            problems.append(("invalid_tools", f'{key} entry {i} has type {_short(tool.get("type"))}; only '
                                              '"function" tools are supported'))
            continue
        if not isinstance(function, dict) or not isinstance(function.get("name"), str) \
                or not function["name"].strip():
            problems.append(("invalid_tools", f"{key} entry {i} has no function name"))
            continue
        name = function["name"]
        if name in seen:
            problems.append(("invalid_tools", f"{key} entry {i} declares {name!r} a second time"))
            continue
        seen.add(name)
        clean = {"name": name}
        for field in ("description", "parameters", "strict"):
            if field in function:
                clean[field] = function[field]
        if "parameters" in clean and not isinstance(clean["parameters"], dict):
            problems.append(("invalid_tools", f"{key} entry {i} ({name!r}): parameters must be a JSON schema object"))
            continue
        out.append({"type": "function", "function": clean})
    return out


class _Calls:
    """The tool calls of one conversation: each must name a declared tool and be answered before the
    conversation goes on."""

    def __init__(self, declared: list[dict], problems: list[Problem]) -> None:
        self.names = {t["function"]["name"] for t in declared}
        self.problems = problems
        self.pending: list[dict] = []  # calls not answered yet, in order
        self.ids: set[str] = set()
        self.counter = 0

    def calls(self, where: str, raw: Any) -> list[dict]:
        """Validated calls in the internal form (ids given to those without)."""
        items = raw if isinstance(raw, list) else [raw]
        if not items:
            self.problems.append(("invalid_tool_call", f"{where}: tool_calls is empty"))
            return []
        out = []
        for k, call in enumerate(items, 1):
            label = f"{where}, tool call {k}" if len(items) > 1 else where
            if not isinstance(call, dict):
                self.problems.append(("invalid_tool_call", f"{label} is {type_name(call)}, expected an object"))
                continue
            function = call.get("function", call) if isinstance(call.get("function"), dict) else call
            if "function" in call and not isinstance(call["function"], dict):
                self.problems.append(("invalid_tool_call", f'{label}: "function" is {type_name(call["function"])}'))
                continue
            if call.get("type", "function") != "function":
                self.problems.append(("invalid_tool_call", f'{label} has type {_short(call.get("type"))}; expected '
                                                           '"function"'))
                continue
            name = function.get("name")
            if not isinstance(name, str) or not name.strip():
                self.problems.append(("invalid_tool_call", f"{label} has no function name"))
                continue
            if name not in self.names:
                declared = ", ".join(sorted(self.names)[:10]) or "none"
                self.problems.append(("undeclared_tool", f"{label} calls {name!r}, which the example's tools do not "
                                                         f"declare (declared: {declared})"))
                continue
            arguments = function.get("arguments", {})
            if isinstance(arguments, str):
                try:
                    arguments = json.loads(arguments) if arguments.strip() else {}
                except json.JSONDecodeError as exc:
                    self.problems.append(("invalid_tool_arguments", f"{label} ({name}): arguments are not valid "
                                                                    f"JSON ({exc.msg} at column {exc.colno})"))
                    continue
            if not isinstance(arguments, dict):
                self.problems.append(("invalid_tool_arguments", f"{label} ({name}): arguments are "
                                                                f"{type_name(arguments)}, expected a JSON object"))
                continue
            call_id = call.get("id")
            if call_id is None:
                self.counter += 1
                call_id = f"call_{self.counter}"
                while call_id in self.ids:
                    self.counter += 1
                    call_id = f"call_{self.counter}"
            if not isinstance(call_id, str) or not call_id:
                self.problems.append(("invalid_tool_call", f"{label}: id is {type_name(call_id)}, expected a string"))
                continue
            if call_id in self.ids:
                self.problems.append(("invalid_tool_call", f"{label}: id {call_id!r} is used twice"))
                continue
            self.ids.add(call_id)
            record = {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
            out.append(record)
            self.pending.append(record)
        return out

    def answer(self, where: str, call_id: Any = None, name: Any = None) -> dict | None:
        """The pending call a tool message answers (by id, else by function name, else the oldest)."""
        if not self.pending:
            self.problems.append(("unexpected_tool_message", f"{where} answers no tool call (none is pending)"))
            return None
        if call_id is not None:
            found = next((c for c in self.pending if c["id"] == call_id), None)
            if found is None:
                self.problems.append(("unexpected_tool_message", f"{where}: tool_call_id {_short(call_id)} matches "
                                                                 "no pending tool call"))
                return None
        elif name is not None:
            found = next((c for c in self.pending if c["function"]["name"] == name), None)
            if found is None:
                self.problems.append(("unexpected_tool_message", f"{where}: no pending call to {_short(name)}"))
                return None
        else:
            found = self.pending[0]
        self.pending.remove(found)
        return found

    def boundary(self, where: str) -> None:
        """A user or assistant message: every earlier call must have been answered."""
        if self.pending:
            names = ", ".join(f"{c['function']['name']} ({c['id']})" for c in self.pending[:5])
            self.problems.append(("unanswered_tool_call", f"tool call(s) {names} not answered before {where}"))
            self.pending = []

    def finish(self) -> None:
        self.boundary("the end of the conversation")


def _tool_message(call: dict, content: str) -> dict:
    return {"role": "tool", "tool_call_id": call["id"], "name": call["function"]["name"], "content": content}


def _declared_tools(example: dict, problems: list[Problem]) -> list[dict]:
    tools: list[dict] = []
    for key in ("tools", "functions"):
        if example.get(key) not in (None, "", []):
            tools += normalise_tools(example[key], problems, key)
    return tools


def _with_tools(messages: list[dict], tools: list[dict]) -> dict:
    return {"messages": messages, "tools": tools} if tools else {"messages": messages}


# ---------------------------------------------------------------------------------------------------------------
# Chat formats


def normalise_openai(example: Any) -> tuple[dict | None, list[Problem]]:
    """OpenAI chat: ``{"messages": [{"role", "content", "weight"?, "tool_calls"?}, ...], "tools"?}`` (the
    /v1/files format), with the legacy ``functions`` / ``function_call`` / ``function`` role too."""
    if not isinstance(example, dict):
        return _not_object(example)
    if "messages" not in example and isinstance(example.get("prompt"), list) \
            and isinstance(example.get("completion"), list):
        # TRL's conversational prompt/completion: the loss is on the completion only.
        prompt = [{**m, "weight": 0} if isinstance(m, dict) and m.get("role") == "assistant" else m
                  for m in example["prompt"]]
        example = {**{k: v for k, v in example.items() if k not in ("prompt", "completion")},
                   "messages": prompt + example["completion"]}
    messages = example.get("messages")
    if not isinstance(messages, list) or not messages:
        what = 'no "messages" key' if "messages" not in example else \
            f'"messages" is {type_name(messages)}' + (" (empty)" if messages == [] else "") + ", expected a list"
        return None, [("missing_messages_list", f"{what}: an example needs a non-empty list of messages")]
    problems: list[Problem] = []
    tools = _declared_tools(example, problems)
    calls = _Calls(tools, problems)
    out: list[dict] = []
    has_assistant = False
    for i, message in enumerate(messages, 1):
        if not isinstance(message, dict):
            problems.append(("data_type", f"message {i} is {type_name(message)}, expected an object"))
            continue
        role = message.get("role")
        if "role" not in message:
            problems.append(("message_missing_key", f'message {i} has no "role"'))
        elif role not in OPENAI_ROLES:
            problems.append(("unrecognized_role",
                             f"message {i} has role {_short(role)}; expected system, user, assistant or tool"))
        role = "system" if role == "developer" else role
        raw_calls = message.get("tool_calls") or message.get("function_call") or None  # exports write [] or null
        if raw_calls is not None and role != "assistant":
            problems.append(("invalid_tool_call", f"message {i} ({_short(role)}) has tool calls; only assistant "
                                                  "messages call tools"))
        if "content" not in message and not (raw_calls is not None and role == "assistant"):
            problems.append(("message_missing_key", f'message {i} has no "content"'))
        extra = [k for k in message if k not in OPENAI_MESSAGE_KEYS]
        if extra:
            problems.append(("message_unrecognized_key",
                             f"message {i} has unrecognized key(s) {', '.join(repr(k) for k in extra[:5])}"))
        raw = message.get("content")
        media = _media_parts(raw)
        if media:
            problems.append(("unsupported_modality", f"message {i} has {', '.join(media)} content: images, audio "
                                                     "and video are not trained here yet, so the row is refused"))
            continue
        content = _content_text(raw)
        where = f"message {i}"
        if role == "assistant" and raw_calls is not None:
            if raw not in (None, "") and content is None:
                problems.append(("missing_content", f"message {i} (assistant) content is {type_name(raw)}, "
                                                    "expected a string"))
            calls.boundary(where)
            record = {"role": "assistant", "content": content or "", "tool_calls": calls.calls(where, raw_calls)}
        elif role in ("tool", "function"):
            if "content" in message and content is None:
                problems.append(("missing_content", f"message {i} ({role}) content is {type_name(raw)}, expected a "
                                                    "string"))
            call = calls.answer(where, message.get("tool_call_id"), message.get("name") if role == "function" else None)
            record = _tool_message(call, content or "") if call else {"role": "tool", "content": content}
        else:
            if "content" in message and (content is None or not content.strip()):
                why = f"is {type_name(raw)}, expected a string" if content is None and raw not in (None, "", []) \
                    else "is empty"
                problems.append(("missing_content", f"message {i} ({_short(role)}) content {why}"))
            if role in ("user", "assistant"):
                calls.boundary(where)
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
    calls.finish()
    if not has_assistant:
        problems.append(("example_missing_assistant_message", "the example has no assistant message"))
    if problems:
        return None, problems
    return _with_tools(out, tools), problems


def _function_call_value(value: Any) -> Any:
    """A ShareGPT ``function_call`` turn's value: JSON text of one call or a list of calls."""
    if isinstance(value, str):
        return json.loads(value)
    return value


def normalise_sharegpt(example: Any) -> tuple[dict | None, list[Problem]]:
    """ShareGPT: ``{"conversations": [{"from": "human"|"gpt"|"system"|"function_call"|"observation", "value"}],
    "system"?, "tools"?}``; axolotl's turns with ``role`` / ``content`` are read the same way."""
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
    tools = _declared_tools(example, problems)
    calls = _Calls(tools, problems)
    has_assistant = False
    for i, turn in enumerate(turns, 1):
        if not isinstance(turn, dict):
            problems.append(("data_type", f"turn {i} is {type_name(turn)}, expected an object"))
            continue
        role_key = "from" if "from" in turn or "role" not in turn else "role"
        value_key = "value" if "value" in turn or "content" not in turn else "content"
        if role_key not in turn:
            problems.append(("message_missing_key", f'turn {i} has no "from"'))
        if value_key not in turn:
            problems.append(("message_missing_key", f'turn {i} has no "{value_key}"'))
        extra = [k for k in turn if k not in (role_key, value_key, "weight")]
        if extra:
            problems.append(("message_unrecognized_key",
                             f"turn {i} has unrecognized key(s) {', '.join(repr(k) for k in extra[:5])}"))
        source = turn.get(role_key)
        role = SHAREGPT_ROLES.get(source.lower()) if isinstance(source, str) else None
        if role_key in turn and role is None:
            problems.append(("unrecognized_role", f"turn {i} is from {_short(source)}; expected human, gpt, system, "
                                                  "function_call or observation"))
        value = turn.get(value_key)
        if value_key in turn and (not isinstance(value, str) or not value.strip()) \
                and not (role == "function_call" and isinstance(value, (dict, list)) and value):
            why = "is empty" if isinstance(value, str) or value is None else \
                f"is {type_name(value)}, expected a string"
            problems.append(("missing_content", f"turn {i} ({_short(source)}) {value_key} {why}"))
            role = "assistant" if role == "function_call" else role
        where = f"turn {i}"
        if role == "function_call":
            try:
                raw_calls = _function_call_value(value)
            except json.JSONDecodeError as exc:
                problems.append(("invalid_tool_arguments", f"turn {i} (function_call) is not JSON ({exc.msg})"))
                continue
            calls.boundary(where)
            record = {"role": "assistant", "content": "", "tool_calls": calls.calls(where, raw_calls)}
            role = "assistant"
        elif role == "observation" and isinstance(value, str):
            pending = len(calls.pending)
            parts: list[Any] = [value]
            if pending > 1:
                try:
                    parsed = json.loads(value)
                except (json.JSONDecodeError, TypeError):
                    parsed = None
                if isinstance(parsed, list) and len(parsed) == pending:
                    parts = [p if isinstance(p, str) else json.dumps(p, ensure_ascii=False) for p in parsed]
                else:
                    problems.append(("unanswered_tool_call", f"turn {i} (observation) answers {pending} parallel "
                                                             "calls: give a JSON list with one result per call"))
                    continue
            for part in parts:
                call = calls.answer(where)
                if call:
                    out.append(_tool_message(call, part))
            continue
        else:
            if role in ("user", "assistant"):
                calls.boundary(where)
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
    calls.finish()
    if not has_assistant:
        problems.append(("example_missing_assistant_message", "the conversation has no gpt (assistant) turn"))
    if problems:
        return None, problems
    return _with_tools(out, tools), problems


def _optional_str(example: dict, key: str, problems: list[Problem]) -> str:
    value = example.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        problems.append(("data_type", f'"{key}" is {type_name(value)}, expected a string'))
        return ""
    return value


def normalise_alpaca(example: Any) -> tuple[dict | None, list[Problem]]:
    """Alpaca: ``instruction``, ``input``?, ``output`` (or ``response``), ``system``?, ``history``? (list of [user, assistant])."""
    if not isinstance(example, dict):
        return _not_object(example)
    if "output" not in example and "response" in example:  # instruction / input / response
        example = {**example, "output": example["response"]}
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
        hint = " (a boolean label marks unpaired preference data: format kto)" if isinstance(label, bool) else ""
        problems.append(("data_type", f'"label" is {type_name(label)}, expected a string or an integer{hint}'))
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




# ---------------------------------------------------------------------------------------------------------------
# Completion, preference and KTO


def normalise_completion(example: Any) -> tuple[dict | None, list[Problem]]:
    """TRL's / OpenAI's completion rows: ``{"prompt": str, "completion": str}`` (the loss is on the completion)."""
    if not isinstance(example, dict):
        return _not_object(example)
    problems: list[Problem] = []
    for key in ("prompt", "completion"):
        value = example.get(key)
        if key not in example:
            problems.append(("missing_field", f'no "{key}" field'))
        elif isinstance(value, list):
            problems.append(("data_type", f'"{key}" is a list of messages: conversational prompt/completion rows '
                                          'are chat data; write them as "messages" (format openai)'))
        elif not isinstance(value, str):
            problems.append(("data_type", f'"{key}" is {type_name(value)}, expected a string'))
    if not problems and not example["completion"].strip():
        problems.append(("empty_field", '"completion" is empty'))
    if problems:
        return None, problems
    return {"prompt": example["prompt"], "completion": example["completion"]}, problems


def _message_list(value: Any, what: str, problems: list[Problem], *, default_role: str) -> list[dict]:
    """A string, one message, or a list of messages (role/content or from/value) -> ``[{"role", "content"}]``."""
    if isinstance(value, str):
        if not value.strip():
            problems.append(("empty_field", f"{what} is empty"))
            return []
        return [{"role": default_role, "content": value}]
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list) or not value:
        problems.append(("data_type", f"{what} is {type_name(value)}" + (" (empty)" if value == [] else "")
                         + ", expected a string or a list of messages"))
        return []
    out = []
    for i, message in enumerate(value, 1):
        if not isinstance(message, dict):
            problems.append(("data_type", f"{what}, message {i} is {type_name(message)}, expected an object"))
            continue
        media = _media_parts(message.get("content"))
        if media:
            problems.append(("unsupported_modality", f"{what}, message {i} has {', '.join(media)} content: images, "
                                                     "audio and video are not trained here yet"))
            continue
        source = message.get("role", message.get("from"))
        role = SHAREGPT_ROLES.get(source.lower()) if isinstance(source, str) else None
        role = "system" if source == "developer" else role
        content = _content_text(message.get("content", message.get("value")))
        if role not in ROLES:
            problems.append(("unrecognized_role", f"{what}, message {i} has role {_short(source)}; expected system, "
                                                  "user or assistant"))
            continue
        if content is None or not content.strip():
            problems.append(("missing_content", f"{what}, message {i} ({role}) content is empty or not text"))
            continue
        out.append({"role": role, "content": content})
    return out


def _prompt_of(example: dict, problems: list[Problem]) -> list[dict] | None:
    """The prompt of a preference / KTO row: ``prompt``, an Alpaca ``instruction`` (+``input``), ShareGPT
    ``conversations`` or OpenAI ``input.messages``; with ``system`` first. None: no prompt key (implicit)."""
    system = example.get("system")
    messages: list[dict] | None
    if "prompt" in example:
        messages = _message_list(example["prompt"], '"prompt"', problems, default_role="user")
    elif isinstance(example.get("input"), dict) and "messages" in example["input"]:
        messages = _message_list(example["input"]["messages"], '"input.messages"', problems, default_role="user")
    elif "conversations" in example:
        messages = _message_list(example["conversations"], '"conversations"', problems, default_role="user")
    elif "instruction" in example:
        instruction = example.get("instruction")
        extra = example.get("input")
        if not isinstance(instruction, str) or (extra is not None and not isinstance(extra, str)):
            problems.append(("data_type", '"instruction" and "input" must be strings'))
            return []
        text = f"{instruction}\n\n{extra}" if instruction.strip() and (extra or "").strip() \
            else (instruction if instruction.strip() else extra or "")
        messages = _message_list(text, '"instruction"', problems, default_role="user")
    else:
        return None
    if isinstance(system, str) and system.strip() and not (messages and messages[0]["role"] == "system"):
        messages = [{"role": "system", "content": system}, *messages]
    if messages and messages[-1]["role"] != "user":
        problems.append(("invalid_prompt", "the prompt must end with a user message (the answers follow it)"))
    return messages


def _answer(value: Any, what: str, problems: list[Problem]) -> list[dict]:
    answer = _message_list(value, what, problems, default_role="assistant")
    if answer and answer[-1]["role"] != "assistant":
        problems.append(("invalid_answer", f"{what} must end with an assistant message"))
    return answer


def normalise_preference(example: Any) -> tuple[dict | None, list[Problem]]:
    """Preference pairs -> ``{"prompt": [...], "chosen": [...], "rejected": [...]}``: ``prompt``/``chosen``/
    ``rejected`` (strings or message lists; without a prompt, the shared start of both conversations is the
    prompt), ShareGPT ``conversations`` + ``chosen`` + ``rejected``, Alpaca ``instruction`` + ``chosen`` +
    ``rejected`` (LLaMA-Factory ranking), or OpenAI's ``input.messages`` / ``preferred_output`` /
    ``non_preferred_output``."""
    if not isinstance(example, dict):
        return _not_object(example)
    problems: list[Problem] = []
    openai_style = "preferred_output" in example or "non_preferred_output" in example
    keys = ("preferred_output", "non_preferred_output") if openai_style else ("chosen", "rejected")
    for key in keys:
        if key not in example:
            problems.append(("missing_field", f'no "{key}" field (a preference pair needs {keys[0]} and {keys[1]})'))
    if problems:
        return None, problems
    prompt = _prompt_of(example, problems)
    chosen = _message_list(example[keys[0]], f'"{keys[0]}"', problems, default_role="assistant")
    rejected = _message_list(example[keys[1]], f'"{keys[1]}"', problems, default_role="assistant")
    if prompt is None and not problems:
        # TRL's implicit prompt: both conversations share their start.
        shared = 0
        while shared < min(len(chosen), len(rejected)) - 1 and chosen[shared] == rejected[shared]:
            shared += 1
        prompt, chosen, rejected = chosen[:shared], chosen[shared:], rejected[shared:]
        system = example.get("system")
        if prompt and isinstance(system, str) and system.strip() and prompt[0]["role"] != "system":
            prompt = [{"role": "system", "content": system}, *prompt]
        if not prompt:
            problems.append(("invalid_prompt", 'no "prompt": chosen and rejected share no prompt turns'))
    for name, answer in ((keys[0], chosen), (keys[1], rejected)):
        if answer and answer[-1]["role"] != "assistant":
            problems.append(("invalid_answer", f'"{name}" must end with an assistant message'))
    if not problems and chosen == rejected:
        problems.append(("identical_pair", f'"{keys[0]}" and "{keys[1]}" are the same answer'))
    if not problems and not prompt:
        problems.append(("invalid_prompt", "the prompt is empty"))
    if problems:
        return None, problems
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}, problems


def normalise_kto(example: Any) -> tuple[dict | None, list[Problem]]:
    """Unpaired preference (KTO) -> ``{"prompt": [...], "completion": [...], "label": bool}``: ``prompt`` +
    ``completion``, Alpaca ``instruction`` + ``output``, or ``messages`` / ``conversations`` whose last
    assistant turn is the completion, with a boolean ``label`` (true: desirable)."""
    if not isinstance(example, dict):
        return _not_object(example)
    problems: list[Problem] = []
    label = example.get("label")
    if isinstance(label, str) and is_boolean_label(label):  # CSV
        label = label.strip().lower() == "true"
    if "label" not in example:
        problems.append(("label_missing", 'no "label" (true for a desirable answer, false for an undesirable one)'))
    elif not isinstance(label, bool):
        problems.append(("data_type", f'"label" is {type_name(label)}, expected true or false'))
    if "completion" in example or "output" in example or "response" in example:
        key = next(k for k in ("completion", "output", "response") if k in example)
        prompt = _prompt_of(example, problems) or []
        completion = _answer(example[key], f'"{key}"', problems)
    elif "messages" in example or "conversations" in example:
        key = "messages" if "messages" in example else "conversations"
        rest = {k: v for k, v in example.items() if k != "label"}
        record, sub = normalise_openai(rest) if key == "messages" else normalise_sharegpt(rest)
        problems += sub
        messages = record["messages"] if record else []
        if record and record.get("tools"):
            problems.append(("invalid_tools", "tool calls in KTO rows are not supported yet"))
        if messages and messages[-1]["role"] != "assistant":
            problems.append(("invalid_answer", f'the last message of "{key}" must be the assistant\'s answer'))
        prompt = [{"role": m["role"], "content": m["content"]} for m in messages[:-1]]
        completion = [{"role": "assistant", "content": messages[-1]["content"]}] if messages else []
    else:
        problems.append(("missing_field", 'no "completion" (or "messages") next to the label'))
        return None, problems
    if not problems and not prompt:
        problems.append(("invalid_prompt", "the prompt is empty"))
    if problems:
        return None, problems
    return {"prompt": prompt, "completion": completion, "label": label}, problems


NORMALISERS: dict[str, Normaliser] = {
    ALPACA: normalise_alpaca,
    SHAREGPT: normalise_sharegpt,
    OPENAI: normalise_openai,
    COMPLETION: normalise_completion,
    CLASSIFICATION: normalise_classification,
    TEXT: normalise_text,
    PREFERENCE: normalise_preference,
    KTO: normalise_kto,
}


def _short(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"
