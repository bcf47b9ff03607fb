"""From normalised records to tokens and labels: the one renderer, label masking, truncation, packing, batching.

Plain module: no Django, and no torch at import (the dataset preview and the token statistics of the web process
use it; the collator imports torch when it builds a batch). Training, the preview, token statistics, evaluation
and the model server's prompts all render here, by one rule, so the preview shows exactly what is trained.

Records are the normalised dataset lines:

- chat: ``{"messages": [{"role": "system"|"user"|"assistant"|"tool", "content": str, "weight"?: 0|1,
  "tool_calls"?: [...], "tool_call_id"?: str}, ...], "tools"?: [...]}``
- plain corpus: ``{"text": str}`` (every token trained, EOS appended); a classification row ``{"text", "label"}``
  renders the same way with nothing trained
- prompt/completion: ``{"prompt": str, "completion": str}``: the prompt (with the tokenizer's special tokens)
  then the completion and EOS, no template; the loss is on the completion and EOS only.
- preference and KTO rows are shown (``encode_record``) as their prompt followed by the chosen / given answer;
  supervised training refuses them (``check_record``).

A conversation is rendered with a chat template chosen by one rule (``ml.templates.resolve_template``): the
model's own, else the named fallback (alpaca). Training installs its template as the tokenizer's chat template,
so the saved adapter's tokenizer renders prompts the same way at inference; the preview passes it per call and
never changes a cached tokenizer. Tool calls go through the template's own tool support when it has one, else
through the fallback of ``ml.templates.template_messages``; the loss is on the assistant's calls and answers,
never on the tool results.

The loss covers only assistant turns by default: each assistant turn's character span is found by rendering the
conversation prefix-by-prefix (the prefix rendered with the generation prompt ends where the answer starts; the
prefix including the turn ends where it stops), then mapped onto tokens through the fast tokenizer's offsets.
That works for any template, including SmolLM2's, which has no ``{% generation %}`` tags.

Batching: no padding to ``max_seq_length``. Batches group examples of similar length (a deterministic per-epoch
shuffle, so resuming replays the same batches) and are padded only to their own longest member (or, on CPU, not
padded at all: ``Collator(flat=True)`` concatenates them into one row that attention splits back per example);
labels arrive pre-shifted (``shift_labels``) so the loss can be computed at the target positions only. Optional
packing concatenates examples into rows with ``position_ids`` restarting at 0 for each example; transformers then
builds a block-diagonal mask (no attention across examples) on every backend, CPU included.
"""

from __future__ import annotations

import json
import math
import random
import weakref
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ml.errors import TrainingError
from ml.templates import FALLBACK_TEMPLATES, resolve_template, template_messages, template_supports_tools

IGNORE_INDEX = -100
ROLES = ("system", "user", "assistant", "tool")


def install_template(tokenizer, template: str) -> None:
    """Make ``tokenizer.chat_template`` the template training renders with (so the saved tokenizer carries it)."""
    tokenizer.chat_template = template_source(tokenizer, template)


def template_source(tokenizer, template: str = "auto") -> str:
    """The Jinja source of a template name (``auto``, ``chat_template`` or a fallback name) for this tokenizer."""
    name = resolve_template(template, has_chat_template=has_chat_template(tokenizer))
    if name == "chat_template":
        if not has_chat_template(tokenizer):
            raise TrainingError("dataset_error", "The base model has no chat template; choose a named template "
                                "(chatml, alpaca, alpaca_zh).")
        return tokenizer.chat_template
    if name not in FALLBACK_TEMPLATES:
        raise TrainingError("dataset_error", f"Unknown prompt template {template!r}.")
    return FALLBACK_TEMPLATES[name]


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


@dataclass
class Rendered:
    """A record as the model sees it: its text, the character spans that are trained, and how it was rendered."""

    text: str
    trained_spans: list[tuple[int, int]] = field(default_factory=list)
    template: str = "none"  # "chat_template" (the model's own), a fallback's name ("alpaca"), or "none"
    kind: str = "chat"  # chat | completion | text | classification


@dataclass
class Example:
    """One tokenised sequence; ``labels`` are aligned with ``input_ids`` (not shifted), ``IGNORE_INDEX`` where the
    loss is not. ``offsets`` (each token's character span in ``rendered.text``) and ``rendered`` are kept only when
    asked for (``encode_record(..., with_offsets=True)``: the preview)."""

    input_ids: list[int]
    labels: list[int]
    offsets: list[tuple[int, int]] | None = field(default=None, repr=False)
    rendered: Rendered | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def trained(self) -> list[bool]:
        return [label != IGNORE_INDEX for label in self.labels]

    @property
    def n_trained(self) -> int:
        return sum(self.trained)

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


def _render(tokenizer, messages: list[dict], add_generation_prompt: bool, tools: list[dict] | None = None,
            template: str | None = None) -> str:
    """One ``apply_chat_template`` call: ``weight`` dropped, ``template`` (Jinja) instead of the tokenizer's own
    when given."""
    clean = [{k: v for k, v in m.items() if k != "weight"} for m in messages]
    kwargs: dict[str, Any] = {"tools": tools} if tools else {}
    if template is not None:
        kwargs["chat_template"] = template
    return tokenizer.apply_chat_template(clean, tokenize=False, add_generation_prompt=add_generation_prompt,
                                         **kwargs)


def _as_chat(record: dict) -> dict:
    """Preference and KTO rows are shown (and counted) as their prompt followed by the chosen / given answer."""
    if "chosen" in record:
        return {"messages": record["prompt"] + record["chosen"]}
    if isinstance(record.get("completion"), list):
        return {"messages": record["prompt"] + record["completion"]}
    return record


def _kind(record: dict) -> str:
    if "messages" in record or "chosen" in record or isinstance(record.get("completion"), list):
        return "chat"
    if isinstance(record.get("completion"), str):
        return "completion"
    return "classification" if "label" in record else "text"


def template_conversation(tokenizer, record: dict, template: str | None = None
                          ) -> tuple[list[dict], list[dict] | None]:
    """The record's messages (and tools) as the chat template takes them: natively when the template renders
    tools, else with the documented text fallback for tool calls and results."""
    native = template_supports_tools(template if template is not None else getattr(tokenizer, "chat_template", None))
    return template_messages(_as_chat(record), native_tools=native)


def assistant_spans(tokenizer, messages: list[dict], tools: list[dict] | None = None, *, template: str | None = None
                    ) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans ``[start, end)`` of its trained assistant turns.

    A span covers the answer (or the tool calls) and the template's end-of-turn marker (so the model learns to
    stop), with trailing whitespace dropped. Turns with ``weight: 0`` are located (to keep the order) but left
    out. ``messages`` and ``tools`` are as ``template_conversation`` gives them.
    """
    full = _render(tokenizer, messages, add_generation_prompt=False, tools=tools, template=template)
    spans: list[tuple[int, int]] = []
    cursor = 0
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        span = None
        try:
            start_text = _render(tokenizer, messages[:i], add_generation_prompt=True, tools=tools,
                                 template=template) if i else None
            end_text = _render(tokenizer, messages[: i + 1], add_generation_prompt=False, tools=tools,
                               template=template)
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


def _template_name(tokenizer, template: str) -> str:
    return resolve_template(template, has_chat_template=has_chat_template(tokenizer))


def render_record(tokenizer, record: dict, *, template: str = "auto") -> Rendered:
    """The record's text as the model sees it and the character spans the loss is on (assistant turns for chat,
    the completion for prompt/completion, everything for plain text, nothing for a classification text)."""
    kind = _kind(record)
    if kind == "completion":
        text = record["prompt"] + record["completion"]
        return Rendered(text=text, trained_spans=[(len(record["prompt"]), len(text))], kind=kind)
    if kind in ("text", "classification"):
        text = record.get("text", "")
        return Rendered(text=text, trained_spans=[(0, len(text))] if kind == "text" else [], kind=kind)
    source = template_source(tokenizer, template)
    messages, tools = template_conversation(tokenizer, record, source)
    full, spans = assistant_spans(tokenizer, messages, tools, template=source)
    return Rendered(text=full, trained_spans=spans, template=_template_name(tokenizer, template))


def _ids(tokenizer, text: str, *, special: bool, offsets: bool) -> tuple[list[int], list[tuple[int, int]]]:
    enc = tokenizer(text, add_special_tokens=special, return_offsets_mapping=offsets)
    return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]] if offsets else []


_LEADING_BOS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def leading_bos(tokenizer) -> int | None:
    """The BOS id this tokenizer puts before every text by default (``add_special_tokens=True``), else None.

    A chat template renders its own special tokens, so rendered conversations are tokenised without the
    tokenizer's; but a template that does not write the BOS (every fallback template, and some models' own) would
    then train and prompt a model like Gemma or Llama 2 without the BOS it always saw in pre-training, which
    degrades it badly. ``rendered_ids`` adds it back; a model whose tokenizer adds none (SmolLM2, Qwen) is
    unchanged. Cached per tokenizer object (two tokenisations of a letter; weakly, so a freed one is forgotten).
    """
    try:
        return _LEADING_BOS[tokenizer]
    except KeyError:
        pass
    bos = getattr(tokenizer, "bos_token_id", None)
    with_special = tokenizer("a", add_special_tokens=True)["input_ids"]
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    adds = bos is not None and bool(with_special) and with_special[0] == bos and (not plain or plain[0] != bos)
    _LEADING_BOS[tokenizer] = bos if adds else None
    return _LEADING_BOS[tokenizer]


def rendered_ids(tokenizer, text: str, *, offsets: bool = False) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids (and character offsets) of a template-rendered conversation: no special tokens but the
    template's own, with the tokenizer's default BOS first when the template did not write it (``leading_bos``)."""
    ids, spans = _ids(tokenizer, text, special=False, offsets=offsets)
    bos = leading_bos(tokenizer)
    if bos is not None and (not ids or ids[0] != bos):
        ids.insert(0, bos)
        if offsets:
            spans.insert(0, (0, 0))
    return ids, spans


def encode_record(tokenizer, record: dict, *, loss_on: str = "assistant", template: str = "auto",
                  with_offsets: bool = False) -> Example:
    """Tokenise one record; labels are ``IGNORE_INDEX`` outside the trained tokens. ``loss_on="all"`` trains
    every token of a chat or prompt/completion record. ``with_offsets`` keeps each token's character span and the
    rendering (the preview cuts the text at the trained tokens with them)."""
    eos = getattr(tokenizer, "eos_token_id", None)
    kind = _kind(record)
    if kind == "completion":
        prompt, prompt_offsets = _ids(tokenizer, record["prompt"], special=True, offsets=with_offsets)
        completion, completion_offsets = _ids(tokenizer, record["completion"], special=False, offsets=with_offsets)
        shift = len(record["prompt"])
        offsets = prompt_offsets + [(a + shift, b + shift) for a, b in completion_offsets]
        if eos is not None:
            completion.append(eos)
            offsets.append((shift + len(record["completion"]),) * 2)
        labels = prompt + completion if loss_on == "all" else [IGNORE_INDEX] * len(prompt) + completion
        rendered = render_record(tokenizer, record) if with_offsets else None
        return Example(prompt + completion, labels, offsets if with_offsets else None, rendered)
    if kind in ("text", "classification"):
        text = record.get("text", "")
        ids, offsets = _ids(tokenizer, text, special=True, offsets=with_offsets)
        if kind == "text" and eos is not None and (not ids or ids[-1] != eos):
            ids.append(eos)
            offsets.append((len(text), len(text)))
        labels = list(ids) if kind == "text" else [IGNORE_INDEX] * len(ids)
        rendered = render_record(tokenizer, record) if with_offsets else None
        return Example(ids, labels, offsets if with_offsets else None, rendered)

    if loss_on == "all":
        source = template_source(tokenizer, template)
        messages, tools = template_conversation(tokenizer, record, source)
        full = _render(tokenizer, messages, add_generation_prompt=False, tools=tools, template=source)
        rendered = Rendered(text=full, trained_spans=[(0, len(full))], template=_template_name(tokenizer, template))
    else:
        rendered = render_record(tokenizer, record, template=template)
    ids, offsets = rendered_ids(tokenizer, rendered.text, offsets=True)
    if loss_on == "all":
        labels = list(ids)
    else:
        labels = [IGNORE_INDEX] * len(ids)
        for k, (a, b) in enumerate(offsets):
            if b <= a:
                continue
            for s, e in rendered.trained_spans:
                if a < e and b > s:  # the token overlaps a trained span
                    labels[k] = ids[k]
                    break
    return Example(ids, labels, offsets if with_offsets else None, rendered if with_offsets else None)


def count_tokens(tokenizer, record: dict, *, template: str = "auto") -> int:
    """The length in tokens of the rendered record (``len(encode_record(...))`` without finding the spans); a
    preference pair counts as its longer sequence (prompt and chosen, or prompt and rejected), the longest that
    trains."""
    if "chosen" in record and "rejected" in record:
        return max(count_tokens(tokenizer, {"messages": record["prompt"] + record[key]}, template=template)
                   for key in ("chosen", "rejected"))
    kind = _kind(record)
    if kind != "chat":
        return len(encode_record(tokenizer, record))
    source = template_source(tokenizer, template)
    messages, tools = template_conversation(tokenizer, record, source)
    text = _render(tokenizer, messages, add_generation_prompt=False, tools=tools, template=source)
    return len(rendered_ids(tokenizer, text)[0])


def prompt_ids(tokenizer, messages: list[dict], *, chat_template: str | None = None,
               tools: list[dict] | None = None) -> list[int]:
    """A prompt's token ids, ending with the generation prompt: ``chat_template`` (an adapter's saved template)
    when given, else the one rule (the model's own, else the fallback). The tokenizer is not changed."""
    source = chat_template or template_source(tokenizer, "auto")
    shown = messages
    if tools or any("tool_calls" in m or m.get("role") == "tool" for m in messages):
        shown, tools = template_conversation(tokenizer, {"messages": messages, "tools": tools}, source)
    text = _render(tokenizer, shown, add_generation_prompt=True, tools=tools, template=source)
    return rendered_ids(tokenizer, text)[0]


def segments(example: Example) -> list[dict]:
    """The rendered text cut at the trained spans, each piece with its number of tokens (the preview).

    ``example`` comes from ``encode_record(..., with_offsets=True)``. A token belongs to the piece its first
    character is in (a trained token overlapping the start of a trained piece belongs to that piece), so the
    trained pieces' counts add up to the trained tokens.
    """
    assert example.rendered is not None and example.offsets is not None, "encode_record(..., with_offsets=True)"
    text = example.rendered.text
    pieces: list[tuple[int, int, bool]] = []
    cursor = 0
    for start, end in sorted(example.rendered.trained_spans):
        if start > cursor:
            pieces.append((cursor, start, False))
        if end > start:
            pieces.append((start, end, True))
        cursor = max(cursor, end)
    if cursor < len(text) or not pieces:
        pieces.append((cursor, len(text), False))
    counts = [0] * len(pieces)
    index = 0
    for (start, end), trained in zip(example.offsets, example.trained, strict=True):
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


def token_chunks(items: list[dict], max_tokens: int) -> list[list[dict]]:
    """``items`` cut, in order, into runs of at most ``max_tokens`` tokens (an item longer than that alone)."""
    chunks: list[list[dict]] = []
    size = 0
    for it in items:
        n = len(it["input_ids"])
        if chunks and size + n <= max_tokens:
            chunks[-1].append(it)
            size += n
        else:
            chunks.append([it])
            size = n
    return chunks


class Collator:
    """Pads a batch to its own longest row (never to max_seq_length), or, with ``flat``, pads nothing at all.

    ``flat`` (issue 9): the batch's examples are concatenated into one row of shape ``[1, total tokens]`` with
    ``position_ids`` restarting at 0 for each example and ``cu_seq_lens_q`` = the example boundaries, which
    ``ml.train.sft``'s attention uses to attend within each example only. Every matmul then runs on real
    tokens only, as one large matrix; the ``attention_mask`` (ones, zeros on a rank's filler) is kept only so that
    the Trainer counts non-padding tokens (the pad id may be a real token, e.g. SmolLM2's ``<|im_end|>``).
    """

    def __init__(self, pad_token_id: int | None, *, flat: bool = False, max_tokens: int = 0):
        self.pad_token_id = 0 if pad_token_id is None else int(pad_token_id)
        self.flat = flat
        self.max_tokens = max_tokens if flat else 0

    def __call__(self, items: list[dict]) -> dict:
        if self.flat:
            if self.max_tokens and sum(len(it["input_ids"]) for it in items) > self.max_tokens and len(items) > 1:
                # {"chunks": [...]}: flat rows of whole examples, in order, each within max_tokens (an example
                # longer than that is a chunk of its own); the trainer runs them one after another (same step)
                return {"chunks": [self._flat(part) for part in token_chunks(items, self.max_tokens)]}
            return self._flat(items)
        import torch  # only when a batch is built: importing this module loads no torch

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
        import torch  # only when a batch is built: importing this module loads no torch

        ids: list[int] = []
        labels: list[int] = []
        pos: list[int] = []
        mask: list[int] = []
        bounds = [0]
        for it in items:
            n = len(it["input_ids"])
            ids += it["input_ids"]
            labels += it["shift_labels"]
            mask += [0 if it.get("pad") else 1] * n  # a rank's filler (pad_item) is not a token seen
            # packed rows (pack_items) already hold several examples: each restart of position_ids is a boundary
            p = list(it["position_ids"]) if "position_ids" in it else list(range(n))
            base = len(pos)
            bounds += [base + k for k in range(1, n) if p[k] == 0]
            bounds.append(base + n)
            pos += p
        return {
            "input_ids": torch.tensor([ids], dtype=torch.long),
            "shift_labels": torch.tensor([labels], dtype=torch.long),
            "position_ids": torch.tensor([pos], dtype=torch.long),
            "attention_mask": torch.tensor([mask], dtype=torch.long),
            "cu_seq_lens_q": torch.tensor(bounds, dtype=torch.int32),
        }


class LengthGroupedSampler:
    """Indices ordered so that each consecutive ``batch_size`` chunk holds examples of similar length
    (or, with ``grouped=False``, simply shuffled).

    The order depends only on (seed, epoch): examples are shuffled, split into mega-batches, sorted by a
    jittered length inside each (so batch membership still varies between epochs), cut into batches, and
    the batches shuffled (the short last batch stays last). Resuming mid-epoch therefore replays exactly the
    batches the interrupted run would have seen. A sampler as torch's ``DataLoader`` takes one (``__iter__`` and
    ``__len__``), without subclassing torch's (this module must import without torch).

    Several ranks (``ranks`` > 1): ``batch_size`` is the global micro-batch (per-rank batch x ranks), so the order
    is that of one process with the same global batch; accelerate hands each rank its consecutive slice of every
    global batch. The short last batch is filled up with ``pad_index`` (an item with no trained token: it adds
    nothing to the loss or its token count), because accelerate would otherwise repeat examples from the start of
    the epoch to give every rank a full batch.
    """

    def __init__(self, lengths: list[int], batch_size: int, seed: int, mega_batches: int = 16, *,
                 grouped: bool = True, ranks: int = 1):
        self.lengths = list(lengths)
        self.batch_size = max(1, int(batch_size))
        self.seed = int(seed)
        self.mega = max(1, mega_batches) * self.batch_size
        # Flat (padding-free) batches have no padding to save: grouping would only put the longest examples in
        # one batch, whose activations then set the run's peak memory. grouped=False: a plain seeded shuffle.
        self.grouped = grouped
        self.ranks = max(1, int(ranks))
        self.pad_index = len(self.lengths)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        if self.ranks == 1:
            return len(self.lengths)
        return math.ceil(len(self.lengths) / self.batch_size) * self.batch_size

    def batches(self) -> list[list[int]]:
        if not self.grouped:
            # The order Trainer's own sampler draws for the same seed (accelerate's SeedableRandomSampler: a
            # permutation under a generator seeded with seed + epoch), which is the order TRL and LLaMA-Factory
            # train in: on 160 examples any other shuffle moved the held-out loss by up to 3 % (benchmarks/RESULTS.md).
            import torch  # only when an epoch is drawn: importing this module loads no torch

            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            idx = torch.randperm(len(self.lengths), generator=generator).tolist()
            return [idx[k: k + self.batch_size] for k in range(0, len(idx), self.batch_size)]
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
            if self.ranks > 1:
                yield from [self.pad_index] * (self.batch_size - len(b))


def pad_item(pad_token_id: int | None, *, packed: bool = False) -> dict:
    """The filler of a short last batch on several ranks: one token, nothing trained (see LengthGroupedSampler)."""
    item = {"input_ids": [0 if pad_token_id is None else int(pad_token_id)], "shift_labels": [IGNORE_INDEX],
            "pad": True}
    if packed:
        item["position_ids"] = [0]
    return item


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
