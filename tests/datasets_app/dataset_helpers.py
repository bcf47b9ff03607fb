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
