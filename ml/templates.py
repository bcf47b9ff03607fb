"""The prompt templates of base models that have no chat template of their own, and the one rule for which
applies: training (installed as the tokenizer's chat_template, so the adapter's saved tokenizer renders prompts
exactly as training did), the dataset preview and the model server all render with ``fallback_template()``.

Plain module: no Django, no torch.
"""

from __future__ import annotations

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


def fallback_template(name: str = DEFAULT_FALLBACK) -> str:
    """The Jinja template a model without a chat template is rendered with."""
    return FALLBACK_TEMPLATES[name]
