"""The batching engine of the model server: one decode loop over every active sequence, whatever adapter each uses.

- **One batch across adapters.** Each base model is loaded once, wrapped by PEFT with every hot adapter; a decode
  step runs all active sequences of that base in one forward pass with ``adapter_names=[...]`` (PEFT's mixed
  batch: the base layer once for the batch, each LoRA on its own rows; ``"__base__"`` rows get none).
  transformers' continuous-batching API (``generate_batch``) has no per-request adapter, so it cannot mix them.
- **Joining between steps.** The requests waiting at a step are prefilled together (left-padded, one forward
  pass per base), then their cache is left-padded
  to the batch's length (or the batch's to its) and concatenated on the batch axis; the 2-D attention mask hides
  the padding and each row keeps its own position ids, so a sequence decodes the same tokens in a batch as alone.
  A finished or cancelled row is dropped from the cache before the next step; padding columns no row needs
  any more are cut off.
- **Per request**: temperature, top_p, a seed (its own ``torch.Generator``), stop strings (held back while they
  could still start), ``max_new_tokens``, the end-of-sequence tokens; a cancel flag checked every step.
- **Bounded.** At most ``SERVING_MAX_BATCH`` sequences decode at once and ``SERVING_MAX_QUEUE`` wait; beyond that
  ``submit`` raises ``QueueFull`` (the server answers 429 with Retry-After, never a hang).
- **Adapters by memory.** An adapter is loaded the first time a request names it (by the path the web process
  resolved, so a freshly trained one is servable at once) and the least recently used idle adapters are
  deleted while their bytes exceed ``SERVING_ADAPTER_MEMORY_BYTES``.

This module imports torch at the top: only the model server (``manage.py serve_models``) and the in-process
engine of development and tests import it, never the web process's request path.
"""

from __future__ import annotations

import logging
import queue
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import torch
from django.conf import settings
from transformers import DynamicCache

from ml.data import prompt_ids
from ml.model import load_causal_lm, load_tokenizer
from serving.inference import GenerationRequest, GenerationResult, _adapter_template

log = logging.getLogger(__name__)
BASE = "__base__"  # PEFT's name for "no adapter" in a mixed batch


class QueueFull(Exception):
    """Every decode slot and every queue place is taken."""


@dataclass
class Job:
    base_path: str
    adapter_key: str | None
    adapter_path: str | None
    request: GenerationRequest
    events: queue.Queue = field(default_factory=queue.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    submitted_at: float = field(default_factory=time.monotonic)

    def cancel(self) -> None:
        self.cancelled.set()

    def __iter__(self):
        """Text deltas, then one ``GenerationResult``; an engine failure is raised here."""
        while True:
            kind, value = self.events.get()
            if kind == "text":
                if value:
                    yield value
            elif kind == "done":
                yield value
                return
            else:
                raise RuntimeError(value)


@dataclass
class _Seq:
    job: Job
    adapter: str
    prompt_len: int
    position: int  # position id of the next token fed
    last: int  # the token to feed next
    generated: list[int] = field(default_factory=list)
    sent: int = 0  # characters of text already emitted
    generator: torch.Generator | None = None
    text: str = ""
    finish: str | None = None  # "stop" or "length" once finished


class _Base:
    """A base model (PEFT-wrapped once an adapter is loaded), its tokenizer, adapters and the active batch."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.tokenizer = load_tokenizer(path)
        # the decode loop builds its tensors on the CPU: the model server's models live there, in fp32
        self.model = load_causal_lm(path, device="cpu", dtype=torch.float32)
        self.peft = None
        self.adapters: OrderedDict[str, int] = OrderedDict()  # key -> bytes, least recently used first
        self.templates: dict[str, str | None] = {}
        self.seqs: list[_Seq] = []
        self.cache: DynamicCache | None = None
        self.mask: torch.Tensor | None = None  # [batch, cache length + 1]: 1 for real tokens
        eos = self.model.generation_config.eos_token_id
        eos = eos if isinstance(eos, list) else [eos]
        self.eos = {e for e in [*eos, self.tokenizer.eos_token_id] if e is not None}

    @property
    def forward_model(self):
        return self.peft if self.peft is not None else self.model

    def in_use(self) -> set[str]:
        return {s.adapter for s in self.seqs}

    def adapter_bytes(self) -> int:
        return sum(self.adapters.values())

    def attach(self, key: str, path: str) -> None:
        from peft import PeftModel  # peft imports torch too; kept beside its only use

        if key in self.adapters:
            self.adapters.move_to_end(key)
            return
        if self.peft is None:
            self.peft = PeftModel.from_pretrained(self.model, path, adapter_name=key)
            self.peft.eval()
        else:
            self.peft.load_adapter(path, adapter_name=key)
        size = sum(p.numel() * p.element_size() for n, p in self.peft.named_parameters() if f".{key}." in n)
        self.adapters[key] = size
        self.templates[key] = _adapter_template(path)
        budget = settings.SERVING_ADAPTER_MEMORY_BYTES
        busy = self.in_use() | {key}
        for old in list(self.adapters):
            if self.adapter_bytes() <= budget:
                break
            if old not in busy:
                self.peft.delete_adapter(old)
                del self.adapters[old]
                self.templates.pop(old, None)
                log.info("evicted adapter %s from %s", old, self.path)

    def render(self, messages: list[dict], template: str | None) -> list[int]:
        return render(self.tokenizer, messages, template)


def render(tokenizer, messages: list[dict], template: str | None) -> list[int]:
    """The prompt's token ids: the adapter's chat template, else the one rule training and the preview render
    with (the base's own, else the fallback template of models without one)."""
    return prompt_ids(tokenizer, messages, chat_template=template)


def _pad_left(t: torch.Tensor, n: int) -> torch.Tensor:
    if n <= 0:
        return t
    pad = torch.zeros((*t.shape[:2], n, t.shape[3]), dtype=t.dtype, device=t.device)
    return torch.cat([pad, t], dim=2)


def _sample(logits: torch.Tensor, req: GenerationRequest, generator: torch.Generator | None) -> int:
    if not req.temperature:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits.float() / req.temperature, dim=-1)
    if req.top_p < 1.0:
        sorted_p, idx = torch.sort(probs, descending=True)
        keep = torch.cumsum(sorted_p, dim=-1) - sorted_p < req.top_p
        sorted_p = sorted_p * keep
        probs = torch.zeros_like(probs).scatter(0, idx, sorted_p)
    return int(torch.multinomial(probs / probs.sum(), 1, generator=generator))


class Engine:
    """Requests in (``submit``), streamed tokens out, one scheduler thread doing every forward pass."""

    def __init__(self) -> None:
        self.max_batch = settings.SERVING_MAX_BATCH
        self.max_queue = settings.SERVING_MAX_QUEUE
        self._waiting: queue.Queue[Job] = queue.Queue()
        self._bases: OrderedDict[str, _Base] = OrderedDict()
        self._lock = threading.Lock()  # guards the counters and the base table
        self._wake = threading.Event()
        self._tokenizers: dict = {}
        self._tokenizer_lock = threading.Lock()
        self._in_flight = 0  # submitted and not yet finished: what the queue bound counts
        self._stopped = threading.Event()
        self.stats = {"submitted": 0, "rejected": 0, "completed": 0, "cancelled": 0, "tokens": 0, "steps": 0,
                      "max_batch_seen": 0, "active": 0, "waiting": 0}
        self._thread = threading.Thread(target=self._loop, name="serving-engine", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------------------------------ public

    def submit(self, job: Job) -> Job:
        with self._lock:
            busy = self._in_flight
            if busy >= self.max_batch + self.max_queue:
                self.stats["rejected"] += 1
                raise QueueFull(f"{busy} requests are decoding or waiting (limit "
                                f"{self.max_batch + self.max_queue}).")
            self.stats["submitted"] += 1
            self._in_flight += 1
            self._waiting.put(job)
        self._wake.set()
        return job

    def count_prompt_tokens(self, base_path: str, adapter_path: str | None, messages: list[dict]) -> int:
        """Tokenizer only, in the caller's thread: models load in the engine's thread alone (transformers' loading
        patches process-wide state, so two loads at once break each other)."""
        with self._tokenizer_lock:
            tokenizer = self._tokenizers.get(base_path)
            if tokenizer is None:
                tokenizer = self._tokenizers[base_path] = load_tokenizer(base_path)
        template = _adapter_template(adapter_path) if adapter_path else None
        return len(render(tokenizer, messages, template))

    def snapshot(self) -> dict:
        with self._lock:
            out = dict(self.stats, waiting=self._waiting.qsize())
            out["adapters"] = {b.path: dict(b.adapters) for b in self._bases.values()}
        return out

    def stop(self) -> None:
        self._stopped.set()
        self._wake.set()
        self._thread.join(timeout=10)

    # ------------------------------------------------------------------------------------------ loop

    def _base(self, path: str) -> _Base:
        with self._lock:
            base = self._bases.get(path)
            if base is not None:
                self._bases.move_to_end(path)
                return base
        loaded = _Base(path)  # in the engine's thread only; outside the lock, which snapshot() takes
        with self._lock:
            base = self._bases.setdefault(path, loaded)
            limit = settings.INFERENCE_MAX_BASES
            for old_path in list(self._bases):
                if len(self._bases) <= limit:
                    break
                if old_path != path and not self._bases[old_path].seqs:
                    del self._bases[old_path]
            return base

    def _active(self) -> int:
        return sum(len(b.seqs) for b in list(self._bases.values()))

    def _loop(self) -> None:
        while not self._stopped.is_set():
            try:
                self._admit()
                stepped = False
                for base in list(self._bases.values()):
                    if base.seqs:
                        self._step(base)
                        stepped = True
                with self._lock:
                    self.stats["active"] = self._active()
                if not stepped and self._waiting.empty():
                    self._wake.wait(0.5)
                    self._wake.clear()
            except Exception:  # never let the loop die: fail what is active, keep serving
                log.exception("engine step failed")
                for base in list(self._bases.values()):
                    for s in base.seqs:
                        s.job.events.put(("error", "the model server failed while decoding"))
                    self._release(len(base.seqs))
                    base.seqs, base.cache, base.mask = [], None, None

    def _admit(self) -> None:
        """Take waiting requests into free slots, prefilled together per base model (one forward each)."""
        jobs: list[Job] = []
        while self._active() + len(jobs) < self.max_batch:
            try:
                job = self._waiting.get_nowait()
            except queue.Empty:
                break
            if job.cancelled.is_set():
                with self._lock:
                    self.stats["cancelled"] += 1
                self._release(1)
                continue
            jobs.append(job)
        by_base: dict[str, list[Job]] = {}
        for job in jobs:
            by_base.setdefault(job.base_path, []).append(job)
        for group in by_base.values():
            try:
                self._prefill(group)
            except Exception as exc:
                log.exception("prefill failed")
                for job in group:
                    job.events.put(("error", f"{type(exc).__name__}: {exc}"))
                self._release(len(group))
        with self._lock:
            self.stats["active"] = self._active()

    @torch.inference_mode()
    def _prefill(self, jobs: list[Job]) -> None:
        """Prompts of one base, left-padded into one forward pass; their caches then join the decoding batch."""
        base = self._base(jobs[0].base_path)
        seqs, prompts = [], []
        for job in jobs:
            adapter, template = BASE, None
            if job.adapter_key:
                base.attach(job.adapter_key, job.adapter_path)
                adapter, template = job.adapter_key, base.templates.get(job.adapter_key)
            ids = base.render(job.request.messages, template)
            generator = None
            if job.request.temperature:
                generator = torch.Generator()
                generator.manual_seed(job.request.seed if job.request.seed is not None else secrets.randbits(63))
            seqs.append(_Seq(job=job, adapter=adapter, prompt_len=len(ids), position=len(ids), last=0,
                             generator=generator))
            prompts.append(ids)
        width = max(len(p) for p in prompts)
        pad = base.tokenizer.pad_token_id or 0
        input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
        kwargs = {"adapter_names": [s.adapter for s in seqs]} if base.peft is not None else {}
        out = base.forward_model(input_ids=input_ids, attention_mask=mask, position_ids=positions,
                                 past_key_values=DynamicCache(), use_cache=True, logits_to_keep=1, **kwargs)
        tokens = [_sample(out.logits[i, -1], s.job.request, s.generator) for i, s in enumerate(seqs)]
        self._merge(base, seqs, out.past_key_values, mask)
        for seq, token in zip(seqs, tokens, strict=True):
            self._accept(base, seq, token)
        done = [s for s in seqs if self._finished(s)]
        if done:
            self._drop(base, done)

    def _merge(self, base: _Base, seqs: list[_Seq], cache: DynamicCache, mask: torch.Tensor) -> None:
        """Add prefilled sequences (their cache and padding mask) to the base's batch, left-padding the shorter."""
        mask = torch.cat([mask, torch.ones((len(seqs), 1), dtype=torch.long)], dim=1)  # the token fed next
        if base.cache is None or not base.seqs:
            base.cache, base.mask, base.seqs = cache, mask, list(seqs)
            return
        have, length = base.mask.shape[1] - 1, mask.shape[1] - 1
        width = max(have, length)
        for mine, theirs in zip(base.cache.layers, cache.layers, strict=True):
            mine.keys = torch.cat([_pad_left(mine.keys, width - have), _pad_left(theirs.keys, width - length)])
            mine.values = torch.cat([_pad_left(mine.values, width - have), _pad_left(theirs.values, width - length)])
        old = torch.cat([torch.zeros((len(base.seqs), width - have), dtype=torch.long), base.mask], dim=1)
        new = torch.cat([torch.zeros((len(seqs), width - length), dtype=torch.long), mask], dim=1)
        base.mask = torch.cat([old, new])
        base.seqs.extend(seqs)

    @torch.inference_mode()
    def _step(self, base: _Base) -> None:
        """One token for every active sequence of ``base``, in one forward pass."""
        cancelled = [s for s in base.seqs if s.job.cancelled.is_set()]
        if cancelled:
            with self._lock:
                self.stats["cancelled"] += len(cancelled)
            self._drop(base, cancelled, cancelled=True)
        if not base.seqs:
            return
        n = len(base.seqs)
        input_ids = torch.tensor([[s.last] for s in base.seqs])
        positions = torch.tensor([[s.position] for s in base.seqs])
        kwargs = {"adapter_names": [s.adapter for s in base.seqs]} if base.peft is not None else {}
        out = base.forward_model(input_ids=input_ids, attention_mask=base.mask, position_ids=positions,
                                 past_key_values=base.cache, use_cache=True, logits_to_keep=1, **kwargs)
        base.cache = out.past_key_values
        with self._lock:
            self.stats["steps"] += 1
            self.stats["max_batch_seen"] = max(self.stats["max_batch_seen"], n)
        base.mask = torch.cat([base.mask, torch.ones((n, 1), dtype=torch.long)], dim=1)
        done = []
        for i, seq in enumerate(base.seqs):
            seq.position += 1
            self._accept(base, seq, _sample(out.logits[i, -1], seq.job.request, seq.generator))
            if self._finished(seq):
                done.append(seq)
        if done:
            self._drop(base, done)

    def _accept(self, base: _Base, seq: _Seq, token: int) -> None:
        """Record one sampled token and stream the text it makes safe to send."""
        req = seq.job.request
        with self._lock:
            self.stats["tokens"] += 1
        if token in base.eos:
            seq.generated.append(token)
            seq.finish = "stop"
            return
        seq.generated.append(token)
        seq.last = token
        text = base.tokenizer.decode(seq.generated, skip_special_tokens=True)
        cut = min((text.find(s) for s in req.stop if s in text), default=-1)
        if cut >= 0:
            seq.text = text[:cut]
            seq.finish = "stop"
        else:
            seq.text = text
            if len(seq.generated) >= req.max_new_tokens:
                seq.finish = "length"
        safe = len(seq.text)
        if not seq.finish:
            if seq.text.endswith("\ufffd"):  # half of a multi-byte character: wait for the rest
                safe = len(seq.text.rstrip("\ufffd"))
            hold = max((len(s) - 1 for s in req.stop), default=0)
            for k in range(min(hold, safe), 0, -1):  # a tail that may start a stop string
                if any(s.startswith(seq.text[safe - k:safe]) for s in req.stop):
                    safe -= k
                    break
        # one event per token even when nothing is safe to send yet: the server writes it, so a client that went
        # away is noticed at the next token, not at the end
        seq.job.events.put(("text", seq.text[seq.sent:safe] if safe > seq.sent else ""))
        seq.sent = max(seq.sent, safe)

    @staticmethod
    def _finished(seq: _Seq) -> bool:
        return bool(seq.finish)

    def _release(self, n: int) -> None:
        with self._lock:
            self._in_flight -= n

    def _drop(self, base: _Base, seqs: list[_Seq], *, cancelled: bool = False) -> None:
        self._release(len(seqs))
        gone = {id(s) for s in seqs}
        keep = [i for i, s in enumerate(base.seqs) if id(s) not in gone]
        for seq in seqs:
            if cancelled:
                seq.job.events.put(("done", GenerationResult(seq.text[:seq.sent], seq.prompt_len,
                                                             len(seq.generated), "cancelled")))
                continue
            with self._lock:
                self.stats["completed"] += 1
            seq.job.events.put(("done", GenerationResult(seq.text, seq.prompt_len, len(seq.generated),
                                                         seq.finish)))
        if not keep:
            base.seqs, base.cache, base.mask = [], None, None
            return
        index = torch.tensor(keep)
        base.seqs = [base.seqs[i] for i in keep]
        base.cache.batch_select_indices(index)
        base.mask = base.mask[index]
        # cut the padding columns no remaining row needs (a long prompt left the batch)
        lead = int((base.mask.cumsum(dim=1) == 0).all(dim=0).sum())
        if lead:
            base.mask = base.mask[:, lead:]
            for layer in base.cache.layers:
                layer.keys, layer.values = layer.keys[:, :, lead:], layer.values[:, :, lead:]
