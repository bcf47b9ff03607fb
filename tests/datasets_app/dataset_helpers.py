"""Builders of dataset files for the tests (a uniquely named module: importable from every test file)."""

from __future__ import annotations

import json

CHAT_TEMPLATE = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def chat_record(i: int, *, answer: str = "Two years.") -> dict:
    return {"messages": [{"role": "system", "content": "You are helpful."},
                         {"role": "user", "content": f"What is the warranty of model {i}?"},
                         {"role": "assistant", "content": answer}]}


def jsonl(records: list, **dumps) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False, **dumps) + "\n" for r in records).encode("utf-8")


def chat_file(n: int = 12, start: int = 0) -> bytes:
    return jsonl([chat_record(i) for i in range(start, start + n)])


WEATHER_TOOL = {"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
                                                 "parameters": {"type": "object",
                                                                "properties": {"city": {"type": "string"}}}}}


def tool_row(i: int = 0, **changes) -> dict:
    row = {"messages": [
        {"role": "user", "content": f"Weather in Paris? ({i})"},
        {"role": "assistant", "tool_calls": [{"id": "call_a", "type": "function",
                                              "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_a", "content": '{"temp": 21}'},
        {"role": "assistant", "content": "It is 21 °C in Paris."},
    ], "tools": [WEATHER_TOOL]}
    row.update(changes)
    return row


def tool_record(i: int = 0) -> dict:
    return {"messages": [
        {"role": "user", "content": f"Weather in Paris? ({i})"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "call_a", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "tool_call_id": "call_a", "name": "get_weather", "content": '{"temp": 21}'},
        {"role": "assistant", "content": "It is 21 °C in Paris."},
    ], "tools": [WEATHER_TOOL]}


PAIR = {"prompt": [{"role": "user", "content": "Warranty?"}], "chosen": [{"role": "assistant", "content": "2 years."}],
        "rejected": [{"role": "assistant", "content": "No idea."}]}
