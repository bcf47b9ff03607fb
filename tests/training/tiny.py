"""Tiny models and tokenizers built in the test process (no hub, no files from elsewhere).

A 2-layer Llama with hidden size 64 and a byte-level BPE tokenizer trained in milliseconds on a few
sentences, with a ChatML-style chat template. Fixtures import from here (the lead owns conftest.py).
"""

from __future__ import annotations

import json
from pathlib import Path

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}{{ '<|im_start|>system\nYou are a tiny bot<|im_end|>\n' }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

SPECIAL_TOKENS = ["<pad>", "<|endoftext|>", "<|im_start|>", "<|im_end|>"]

CORPUS = [
    "The warranty lasts two years from the date of purchase.",
    "Call the hotline at 800-555-0199 between nine and five.",
    "You can return an item within thirty days if it is unused.",
    "Shipping is free for orders above fifty dollars.",
    "What is the warranty period? How long is the return window? What is the hotline number?",
    "保修期為兩年，退貨期為三十天。請致電客服熱線。",
    "system user assistant You are a tiny bot",
    "### Instruction: ### Response: ### 指令： ### 回應：",
]


def build_tokenizer(with_chat_template: bool = True):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=None, eos_token="<|im_end|>", pad_token="<pad>", unk_token=None,
        additional_special_tokens=["<|im_start|>", "<|endoftext|>"],
    )
    if with_chat_template:
        fast.chat_template = CHAT_TEMPLATE
    return fast


def build_model(tokenizer, seed: int = 0):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=None,
        tie_word_embeddings=True,
        # a wide initialisation gives the random model logits large enough for LoRA to move the loss quickly
        initializer_range=0.2,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def save_tiny_model(folder: Path, *, with_chat_template: bool = True, seed: int = 0) -> Path:
    """Write a tiny Llama + tokenizer as a HF folder (what ``load_base_model`` reads)."""
    tokenizer = build_tokenizer(with_chat_template=with_chat_template)
    model = build_model(tokenizer, seed=seed)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


FACTS = [
    ("What is the warranty period?", "The warranty lasts two years."),
    ("How long is the return window?", "You can return an item within thirty days."),
    ("What is the hotline number?", "Call 800-555-0199."),
    ("Is shipping free?", "Shipping is free above fifty dollars."),
]


def chat_records(n: int = 16) -> list[dict]:
    """``n`` short Q&A conversations in the normalised ``{"messages": [...]}`` form."""
    out = []
    for i in range(n):
        q, a = FACTS[i % len(FACTS)]
        out.append({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]})
    return out


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


class RecordingHooks:
    """Hooks that record every call; ``stop_at=(step, "cancel"|"pause")`` asks to stop once ``step`` is done."""

    def __init__(self, stop_at: tuple[int, str] | None = None):
        self.stop_at = stop_at
        self.started: list[int] = []
        self.progress: list[dict] = []
        self.metrics: list[tuple[int, dict]] = []
        self.checkpoints: list[tuple[int, Path]] = []
        self.messages: list[tuple[str, str]] = []
        self.stop_checks = 0
        self.last_step = 0

    def on_start(self, total_steps: int) -> None:
        self.started.append(total_steps)

    def on_progress(self, step, total_steps, epoch, tokens_seen, tokens_per_s, eta_s) -> None:
        self.last_step = step
        self.progress.append(dict(step=step, total_steps=total_steps, epoch=epoch, tokens_seen=tokens_seen,
                                  tokens_per_s=tokens_per_s, eta_s=eta_s))

    def on_metrics(self, step, metrics) -> None:
        self.metrics.append((step, dict(metrics)))

    def on_checkpoint(self, step, path, metrics) -> None:
        self.checkpoints.append((step, Path(path)))

    def on_message(self, level, message, data=None) -> None:
        self.messages.append((level, message))

    def should_stop(self):
        self.stop_checks += 1
        if self.stop_at and self.last_step >= self.stop_at[0]:
            return self.stop_at[1]
        return None

    def train_losses(self) -> dict[int, float]:
        return {s: m["train_loss"] for s, m in self.metrics if "train_loss" in m}
