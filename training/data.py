"""From normalised records to training batches: rendering, label masking, truncation, batching.

Plain module (no Django). Records are the normalised dataset lines:

- chat: ``{"messages": [{"role": "system"|"user"|"assistant"|"tool", "content": str, "weight"?: 0|1,
  "tool_calls"?: [...], "tool_call_id"?: str}, ...], "tools"?: [...]}``
- plain corpus: ``{"text": str}``
- prompt/completion: ``{"prompt": str, "completion": str}``: the prompt (with the tokenizer's special tokens)
  then the completion and EOS, no template; the loss is on the completion and EOS only.

Tool calls are rendered through the template's own tool support when it has one, else through the fallback
of ``datasets_app.formats.template_messages`` (the preview uses the same function); the loss is on the
assistant's calls and answers, never on the tool results.

A conversation is rendered with the tokenizer's chat template (or a named fallback template installed as
the tokenizer's chat template, so the saved adapter's tokenizer renders prompts the same way at inference).
The loss covers only assistant turns by default: each assistant turn's character span is found by
rendering the conversation prefix-by-prefix (the prefix rendered with the generation prompt ends where the
answer starts; the prefix including the turn ends where it stops), then mapped onto tokens through the fast
tokenizer's offsets. That works for any template, including SmolLM2's, which has no ``{% generation %}`` tags.

Batching (issue 9): no padding to ``max_seq_length``. Batches group examples of similar length (a
deterministic per-epoch shuffle, so resuming replays the same batches) and are padded only to their own
longest member (or, on CPU, not padded at all: ``Collator(flat=True)`` concatenates them into one row that
attention splits back per example); labels arrive pre-shifted (``shift_labels``) so the loss can be computed at
the target positions only. Optional packing concatenates examples into rows with ``position_ids`` restarting at 0 for
each example; transformers then builds a block-diagonal mask (no attention across examples) on every
backend, CPU included.
"""

from __future__ import annotations

import json
import math
import os
import random
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from datasets_app.formats import template_messages, template_supports_tools
from datasets_app.prompt_templates import FALLBACK_TEMPLATES
from training.errors import TrainingError

# see training/recipe.py: must be set before torch is first imported (this module imports it)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

IGNORE_INDEX = -100
ROLES = ("system", "user", "assistant", "tool")

def install_template(tokenizer, template: str) -> None:
    """Make ``tokenizer.chat_template`` the template training renders with."""
    if template == "chat_template":
        if not getattr(tokenizer, "chat_template", None):
            raise TrainingError("dataset_error", "The base model has no chat template; choose a named template "
                                "(chatml, alpaca, alpaca_zh).")
        return
    if template not in FALLBACK_TEMPLATES:
        raise TrainingError("dataset_error", f"Unknown prompt template {template!r}.")
    tokenizer.chat_template = FALLBACK_TEMPLATES[template]


@dataclass
class Example:
    """One tokenised training sequence; ``labels`` are aligned with ``input_ids`` (not shifted)."""

    input_ids: list[int]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def n_targets(self) -> int:
        # the first label has no preceding token to predict it from
        return sum(1 for x in self.labels[1:] if x != IGNORE_INDEX)


@dataclass
class EncodeReport:
    """What tokenisation did to a set of records."""

    examples: int = 0
    truncated: int = 0
    dropped_no_target: int = 0
    tokens: int = 0
    target_tokens: int = 0
    max_tokens: int = 0
    mean_tokens: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------------------------------------------------------
# Records


def read_records(source: Iterable[dict] | str | Path) -> Iterator[dict]:
    """Records from an iterable, or from a JSONL file (one JSON object per line)."""
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise TrainingError("dataset_error", f"Dataset file not found: {path}")
        with path.open(encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as exc:
                    raise TrainingError("dataset_error", f"{path.name} line {lineno}: invalid JSON ({exc.msg}).") \
                        from exc
    else:
        yield from source


def check_record(record: Any, index: int) -> None:
    where = f"record {index + 1}"
    if not isinstance(record, dict):
        raise TrainingError("dataset_error", f"{where}: expected a JSON object.")
    if "chosen" in record or isinstance(record.get("label"), bool):
        raise TrainingError("dataset_error", f"{where}: preference / KTO rows cannot be trained as supervised "
                            "examples.")
    if "completion" in record:
        if not isinstance(record.get("prompt"), str) or not isinstance(record["completion"], str) \
                or not record["completion"]:
            raise TrainingError("dataset_error", f"{where}: 'prompt' and 'completion' must be strings, the "
                                "completion non-empty.")
    elif "messages" in record:
        messages = record["messages"]
        if not isinstance(messages, list) or not messages:
            raise TrainingError("dataset_error", f"{where}: 'messages' must be a non-empty list.")
        for j, m in enumerate(messages):
            if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
                raise TrainingError("dataset_error", f"{where}, message {j + 1}: needs a role "
                                    f"({', '.join(ROLES)}) and a string content.")
            if "weight" in m and m["weight"] not in (0, 1):
                raise TrainingError("dataset_error", f"{where}, message {j + 1}: weight must be 0 or 1.")
    elif "text" in record:
        if not isinstance(record["text"], str) or not record["text"]:
            raise TrainingError("dataset_error", f"{where}: 'text' must be a non-empty string.")
    else:
        raise TrainingError("dataset_error", f"{where}: expected 'messages' or 'text'.")


# ---------------------------------------------------------------------------------------------------------------
# Rendering and label masking


def _render(tokenizer, messages: list[dict], add_generation_prompt: bool, tools: list[dict] | None = None) -> str:
    clean = [{k: v for k, v in m.items() if k != "weight"} for m in messages]
    kwargs = {"tools": tools} if tools else {}
    return tokenizer.apply_chat_template(clean, tokenize=False, add_generation_prompt=add_generation_prompt,
                                         **kwargs)


def template_conversation(tokenizer, record: dict) -> tuple[list[dict], list[dict] | None]:
    """The record's messages (and tools) as the tokenizer's chat template takes them: natively when the template
    renders tools, else with the documented text fallback for tool calls and results."""
    native = template_supports_tools(getattr(tokenizer, "chat_template", None))
    return template_messages(record, native_tools=native)


def assistant_spans(tokenizer, messages: list[dict], tools: list[dict] | None = None
                    ) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans ``[start, end)`` of its trained assistant turns.

    A span covers the answer (or the tool calls) and the template's end-of-turn marker (so the model learns to
    stop), with trailing whitespace dropped. Turns with ``weight: 0`` are left out. ``messages`` and ``tools``
    are as ``template_conversation`` gives them.
    """
    full = _render(tokenizer, messages, add_generation_prompt=False, tools=tools)
    spans: list[tuple[int, int]] = []
    cursor = 0
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        span = None
        try:
            start_text = _render(tokenizer, messages[:i], add_generation_prompt=True, tools=tools) if i else None
            end_text = _render(tokenizer, messages[: i + 1], add_generation_prompt=False, tools=tools)
        except Exception:  # templates may refuse a prefix (e.g. an assistant turn first)
            start_text = end_text = None
        if start_text is not None and end_text is not None and full.startswith(start_text) \
                and full.startswith(end_text) and len(start_text) < len(end_text):
            start, end = len(start_text), len(end_text)
            while end > start and full[end - 1].isspace():
                end -= 1
            span = (start, end)
        else:
            # Templates whose prefixes are not prefixes of the whole (e.g. ones that rewrite earlier turns):
            # find the answer text itself, in order.
            pos = full.find(m["content"], cursor) if m["content"] else -1
            if pos >= 0:
                span = (pos, pos + len(m["content"]))
        if span is None:
            raise TrainingError("dataset_error", "Could not locate an assistant turn in the rendered conversation.")
        cursor = span[1]
        if m.get("weight", 1) != 0:
            spans.append(span)
    return full, spans


def encode_record(tokenizer, record: dict, *, loss_on: str = "assistant") -> Example:
    """Tokenise one record; labels are ``IGNORE_INDEX`` outside the trained tokens."""
    if "text" in record:
        ids = tokenizer(record["text"], add_special_tokens=True)["input_ids"]
        if tokenizer.eos_token_id is not None and (not ids or ids[-1] != tokenizer.eos_token_id):
            ids = ids + [tokenizer.eos_token_id]
        return Example(input_ids=list(ids), labels=list(ids))
    if isinstance(record.get("completion"), str):
        prompt = list(tokenizer(record["prompt"], add_special_tokens=True)["input_ids"])
        completion = list(tokenizer(record["completion"], add_special_tokens=False)["input_ids"])
        if tokenizer.eos_token_id is not None:
            completion.append(tokenizer.eos_token_id)
        labels = prompt + completion if loss_on == "all" else [IGNORE_INDEX] * len(prompt) + completion
        return Example(input_ids=prompt + completion, labels=labels)

    messages, tools = template_conversation(tokenizer, record)
    if loss_on == "all":
        full = _render(tokenizer, messages, add_generation_prompt=False, tools=tools)
        ids = tokenizer(full, add_special_tokens=False)["input_ids"]
        return Example(input_ids=list(ids), labels=list(ids))

    full, spans = assistant_spans(tokenizer, messages, tools)
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    offsets = enc["offset_mapping"]
    labels = [IGNORE_INDEX] * len(ids)
    for k, (a, b) in enumerate(offsets):
        if b <= a:
            continue
        for s, e in spans:
            if a < e and b > s:  # the token overlaps a trained span
                labels[k] = ids[k]
                break
    return Example(input_ids=ids, labels=labels)


def encode_records(tokenizer, records: Iterable[dict] | str | Path, *, loss_on: str = "assistant",
                   max_seq_length: int | None = None) -> tuple[list[Example], EncodeReport]:
    """Validate and tokenise records; truncate to ``max_seq_length`` when given (see ``truncate_examples``)."""
    examples = []
    for i, record in enumerate(read_records(records)):
        check_record(record, i)
        examples.append(encode_record(tokenizer, record, loss_on=loss_on))
    if not examples:
        raise TrainingError("dataset_error", "The dataset has no records.")
    return truncate_examples(examples, max_seq_length)


def truncate_examples(examples: list[Example], max_seq_length: int | None) -> tuple[list[Example], EncodeReport]:
    """Cut examples to ``max_seq_length`` tokens (keeping the start); drop those left with nothing to learn."""
    report = EncodeReport()
    out = []
    for ex in examples:
        if max_seq_length is not None and len(ex) > max_seq_length:
            ex = Example(ex.input_ids[:max_seq_length], ex.labels[:max_seq_length])
            report.truncated += 1
        if ex.n_targets == 0:
            report.dropped_no_target += 1
            continue
        out.append(ex)
        report.tokens += len(ex)
        report.target_tokens += ex.n_targets
        report.max_tokens = max(report.max_tokens, len(ex))
    report.examples = len(out)
    report.mean_tokens = round(report.tokens / len(out), 2) if out else 0.0
    if not out:
        raise TrainingError("dataset_error", "No example has tokens to train on (after truncation to "
                            f"{max_seq_length} tokens every assistant answer was cut off).")
    return out, report


def length_stats(examples: list[Example]) -> tuple[float, int]:
    lengths = [len(e) for e in examples]
    return (sum(lengths) / len(lengths), max(lengths)) if lengths else (0.0, 0)


# ---------------------------------------------------------------------------------------------------------------
# Dataset items, packing and batching


def to_item(ex: Example) -> dict:
    """A dataset item: ``input_ids`` and ``shift_labels`` (label of position t = token t+1, or ignored)."""
    return {"input_ids": ex.input_ids, "shift_labels": ex.labels[1:] + [IGNORE_INDEX]}


def pack_items(examples: list[Example], max_len: int, seed: int = 0) -> list[dict]:
    """Best-fit-decreasing packing into rows of at most ``max_len`` tokens, with per-example position_ids.

    Shift labels are computed per example first, so no position learns to predict the next example's
    first token; position_ids restarting at 0 make transformers mask attention across examples.
    """
    order = sorted(range(len(examples)), key=lambda i: (-len(examples[i]), i))
    bins: list[list[int]] = []
    free: list[int] = []
    for i in order:
        n = len(examples[i])
        best = -1
        for b, room in enumerate(free):
            if room >= n and (best < 0 or room < free[best]):
                best = b
        if best < 0:
            bins.append([i])
            free.append(max_len - n)
        else:
            bins[best].append(i)
            free[best] -= n
    random.Random(seed).shuffle(bins)
    rows = []
    for b in bins:
        ids, labels, pos = [], [], []
        for i in b:
            item = to_item(examples[i])
            ids += item["input_ids"]
            labels += item["shift_labels"]
            pos += list(range(len(item["input_ids"])))
        rows.append({"input_ids": ids, "shift_labels": labels, "position_ids": pos})
    return rows


class Collator:
    """Pads a batch to its own longest row (never to max_seq_length), or, with ``flat``, pads nothing at all.

    ``flat`` (issue 9): the batch's examples are concatenated into one row of shape ``[1, total tokens]`` with
    ``position_ids`` restarting at 0 for each example and ``cu_seq_lens_q`` = the example boundaries, which
    ``training.recipe``'s attention uses to attend within each example only. Every matmul then runs on real
    tokens only, as one large matrix; the all-ones ``attention_mask`` is kept only so that the Trainer counts
    non-padding tokens (the pad id may be a real token, e.g. SmolLM2's ``<|im_end|>``).
    """

    def __init__(self, pad_token_id: int | None, *, flat: bool = False):
        self.pad_token_id = 0 if pad_token_id is None else int(pad_token_id)
        self.flat = flat

    def __call__(self, items: list[dict]) -> dict:
        if self.flat:
            return self._flat(items)
        import torch

        width = max(len(it["input_ids"]) for it in items)
        packed = "position_ids" in items[0]
        ids, labels, mask, pos = [], [], [], []
        for it in items:
            n = len(it["input_ids"])
            pad = width - n
            ids.append(list(it["input_ids"]) + [self.pad_token_id] * pad)
            labels.append(list(it["shift_labels"]) + [IGNORE_INDEX] * pad)
            mask.append([1] * n + [0] * pad)
            if packed:
                # the padding is one more "example" of its own, so nothing attends to it
                pos.append(list(it["position_ids"]) + list(range(pad)))
        batch = {
            "input_ids": torch.tensor(ids, dtype=torch.long),
            "shift_labels": torch.tensor(labels, dtype=torch.long),
            "attention_mask": torch.tensor(mask, dtype=torch.long),
        }
        if packed:
            batch["position_ids"] = torch.tensor(pos, dtype=torch.long)
        return batch

    @staticmethod
    def _flat(items: list[dict]) -> dict:
        import torch

        ids: list[int] = []
        labels: list[int] = []
        pos: list[int] = []
        bounds = [0]
        for it in items:
            n = len(it["input_ids"])
            ids += it["input_ids"]
            labels += it["shift_labels"]
            # packed rows (pack_items) already hold several examples: each restart of position_ids is a boundary
            p = list(it["position_ids"]) if "position_ids" in it else list(range(n))
            base = len(pos)
            bounds += [base + k for k in range(1, n) if p[k] == 0]
            bounds.append(base + n)
            pos += p
        total = len(ids)
        return {
            "input_ids": torch.tensor([ids], dtype=torch.long),
            "shift_labels": torch.tensor([labels], dtype=torch.long),
            "position_ids": torch.tensor([pos], dtype=torch.long),
            "attention_mask": torch.ones((1, total), dtype=torch.long),
            "cu_seq_lens_q": torch.tensor(bounds, dtype=torch.int32),
        }


def _sampler_base():
    import torch

    return torch.utils.data.Sampler


class LengthGroupedSampler(_sampler_base()):  # type: ignore[misc]
    """Indices ordered so that each consecutive ``batch_size`` chunk holds examples of similar length.

    The order depends only on (seed, epoch): examples are shuffled, split into mega-batches, sorted by a
    jittered length inside each (so batch membership still varies between epochs), cut into batches, and
    the batches shuffled (the short last batch stays last). Resuming mid-epoch therefore replays exactly the
    batches the interrupted run would have seen.
    """

    def __init__(self, lengths: list[int], batch_size: int, seed: int, mega_batches: int = 16):
        self.lengths = list(lengths)
        self.batch_size = max(1, int(batch_size))
        self.seed = int(seed)
        self.mega = max(1, mega_batches) * self.batch_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.lengths)

    def batches(self) -> list[list[int]]:
        rng = random.Random(self.seed * 1_000_003 + self.epoch)
        idx = list(range(len(self.lengths)))
        rng.shuffle(idx)
        batches = []
        for m in range(0, len(idx), self.mega):
            chunk = idx[m: m + self.mega]
            chunk.sort(key=lambda i: self.lengths[i] * rng.uniform(0.9, 1.1), reverse=True)
            batches += [chunk[k: k + self.batch_size] for k in range(0, len(chunk), self.batch_size)]
        full = [b for b in batches if len(b) == self.batch_size]
        partial = [b for b in batches if len(b) < self.batch_size]
        rng.shuffle(full)
        # at most one partial batch per mega-batch; merge them so only the last batch is short
        rest = [i for b in partial for i in b]
        tail = [rest[k: k + self.batch_size] for k in range(0, len(rest), self.batch_size)]
        return full + tail

    def __iter__(self) -> Iterator[int]:
        for b in self.batches():
            yield from b


def padding_fraction(lengths: list[int], batches: list[list[int]]) -> float:
    """Share of padded positions in these batches (for reports and benchmarks)."""
    total = sum(len(b) * max(lengths[i] for i in b) for b in batches if b)
    real = sum(lengths[i] for b in batches for i in b)
    return 0.0 if total == 0 else 1 - real / total


def eval_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    order = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True)
    return [order[k: k + batch_size] for k in range(0, len(order), batch_size)]


def steps_per_epoch(n_items: int, batch_size: int, grad_accum: int) -> int:
    return max(1, math.ceil(math.ceil(n_items / batch_size) / grad_accum))
