"""The prompt templates of base models that have no chat template of their own, and the one rule for which
applies: training (installed as the tokenizer's chat_template, so the adapter's saved tokenizer renders prompts
exactly as training did), the dataset preview and the model server all render with ``fallback_template()``;
and how a conversation with tools is handed to a template (``template_messages``: natively when the template
renders tools, else through the documented text fallback).

Plain module: no Django, no torch (the web process imports it).
"""

from __future__ import annotations

import json

FALLBACK_TEMPLATES = {
    "chatml": (
        "{% for message in messages %}"
        "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    ),
    "alpaca": (
        "{% for message in messages %}"
        "{% if message['role'] == 'system' %}{{ message['content'] + '\n\n' }}"
        "{% elif message['role'] == 'assistant' %}{{ '### Response:\n' + message['content'] + (eos_token or '') + '\n\n' }}"
        "{% else %}{{ '### Instruction:\n' + message['content'] + '\n\n' }}{% endif %}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '### Response:\n' }}{% endif %}"
    ),
    "alpaca_zh": (
        "{% for message in messages %}"
        "{% if message['role'] == 'system' %}{{ message['content'] + '\n\n' }}"
        "{% elif message['role'] == 'assistant' %}{{ '### 回應：\n' + message['content'] + (eos_token or '') + '\n\n' }}"
        "{% else %}{{ '### 指令：\n' + message['content'] + '\n\n' }}{% endif %}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '### 回應：\n' }}{% endif %}"
    ),
}

# A base model without a chat template renders '### Instruction / ### Response' (what "auto" resolves to).
DEFAULT_FALLBACK = "alpaca"


TEMPLATE_NAMES = ("chat_template", *FALLBACK_TEMPLATES)


def fallback_template(name: str = DEFAULT_FALLBACK) -> str:
    """The Jinja template a model without a chat template is rendered with."""
    return FALLBACK_TEMPLATES[name]


def resolve_template(name: str, *, has_chat_template: bool) -> str:
    """The one rule: ``auto`` is the model's own chat template (``chat_template``) when it has one, else
    ``DEFAULT_FALLBACK``; a named template is itself. Training, the preview, evaluation and the model server all
    ask this."""
    if name == "auto":
        return "chat_template" if has_chat_template else DEFAULT_FALLBACK
    return name


# ---------------------------------------------------------------------------------------------------------------
# Conversations as chat templates take them (shared by the preview, training and inference)

TOOLS_PREAMBLE = ("# Tools\n\nYou may call one or more functions to assist with the user query. The functions "
                  "are described in JSON within <tools></tools>:\n<tools>\n{tools}\n</tools>\n\nFor each function "
                  'call, return a JSON object {{"name": ..., "arguments": ...}} within <tool_call></tool_call> tags.')


def template_supports_tools(template: str | None) -> bool:
    """Whether a chat template renders tools itself: it reads ``tools`` and the messages' ``tool_calls``."""
    return bool(template) and "tools" in template and "tool_calls" in template


def template_messages(record: dict, *, native_tools: bool) -> tuple[list[dict], list[dict] | None]:
    """The messages (and tools) to hand a chat template; ``weight`` is kept for the span finder.

    With ``native_tools`` the calls, the tool messages and ``tools`` go to the template as they are (arguments
    as objects, as HF templates expect). Otherwise the documented fallback (the Hermes / Qwen convention): the
    tools are described in the system message, each call is ``<tool_call>{"name", "arguments"}</tool_call>``
    in the assistant's content, and the tool results are a user turn of ``<tool_response>`` blocks.
    """
    messages = record["messages"]
    tools = record.get("tools") or None
    if native_tools or (tools is None and not any("tool_calls" in m or m["role"] == "tool" for m in messages)):
        out = []
        for m in messages:
            clean = {"role": m["role"], "content": m["content"]}
            for key in ("tool_calls", "tool_call_id", "name", "weight"):
                if key in m:
                    clean[key] = m[key]
            out.append(clean)
        return out, tools
    out = []
    if tools:
        described = TOOLS_PREAMBLE.format(tools="\n".join(json.dumps(t, ensure_ascii=False) for t in tools))
        if messages and messages[0]["role"] == "system":
            out.append({"role": "system", "content": f"{messages[0]['content']}\n\n{described}"})
            messages = messages[1:]
        else:
            out.append({"role": "system", "content": described})
    for m in messages:
        if m["role"] == "tool":
            block = f"<tool_response>\n{m['content']}\n</tool_response>"
            if out and out[-1].get("_tool"):
                out[-1]["content"] += "\n" + block
            else:
                out.append({"role": "user", "content": block, "_tool": True})
            continue
        clean = {"role": m["role"], "content": m["content"]}
        if m.get("tool_calls"):
            calls = "\n".join("<tool_call>\n" + json.dumps({"name": c["function"]["name"],
                                                            "arguments": c["function"]["arguments"]},
                                                           ensure_ascii=False) + "\n</tool_call>"
                              for c in m["tool_calls"])
            clean["content"] = f"{m['content']}\n{calls}" if m["content"] else calls
        if "weight" in m:
            clean["weight"] = m["weight"]
        out.append(clean)
    for m in out:
        m.pop("_tool", None)
    return out, None
