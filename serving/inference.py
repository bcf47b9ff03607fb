"""Text generation (chat completions, evaluation samples): each base model is loaded once per process,
adapters are attached to it and switched by name (PEFT multi-adapter), with bounded LRU caches of both.

Generation on one base model is serialised by its lock (one model in memory serves every adapter,
so two requests cannot switch adapters under each other); different base models run in parallel.

torch, transformers and peft are imported inside the functions that load or run a model: importing this
module (the web process does, through ``serving.services``) must not load them.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from django.conf import settings

from ml.data import prompt_ids
from ml.model import load_causal_lm, load_tokenizer


@dataclass
class GenerationRequest:
    messages: list[dict]
    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)


@dataclass
class GenerationResult:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" or "length"


class _LoadedBase:
    def __init__(self, path: str) -> None:
        self.path = path
        self.lock = threading.Lock()
        self.tokenizer = load_tokenizer(path)
        self.model = load_causal_lm(path, device="auto")  # CUDA when present, in its compute dtype
        self.peft = None  # PeftModel wrapping self.model once an adapter is attached
        self.adapters: OrderedDict[str, str | None] = OrderedDict()  # key -> chat template of the adapter

    @property
    def device(self):
        return next(self.model.parameters()).device

    def attach(self, key: str, adapter_path: str) -> None:
        """Load an adapter under ``key`` (once), evicting the least recently used beyond the limit."""
        from peft import PeftModel  # lazily, like torch

        if key in self.adapters:
            self.adapters.move_to_end(key)
            return
        limit = max(1, settings.INFERENCE_MAX_ADAPTERS)
        while len(self.adapters) >= limit:
            old, _ = self.adapters.popitem(last=False)
            self.peft.delete_adapter(old)
        if self.peft is None:
            self.peft = PeftModel.from_pretrained(self.model, adapter_path, adapter_name=key)
            self.peft.eval()
        else:
            self.peft.load_adapter(adapter_path, adapter_name=key)
        self.adapters[key] = _adapter_template(adapter_path)

    def render(self, messages: list[dict], template: str | None) -> list[int]:
        return prompt_ids(self.tokenizer, messages, chat_template=template)


def _adapter_template(adapter_path: str) -> str | None:
    """The chat template the adapter was trained with (saved with its tokenizer), if any."""
    folder = Path(adapter_path)
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    cfg = folder / "tokenizer_config.json"
    if cfg.is_file():
        try:
            return json.loads(cfg.read_text(encoding="utf-8")).get("chat_template")
        except ValueError:
            return None
    return None


class ModelCache:
    """Base models by path (LRU, ``INFERENCE_MAX_BASES``), each with its attached adapters."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._bases: OrderedDict[str, _LoadedBase] = OrderedDict()

    def base(self, path: str) -> _LoadedBase:
        with self._lock:
            loaded = self._bases.get(path)
            if loaded is not None:
                self._bases.move_to_end(path)
                return loaded
            limit = max(1, settings.INFERENCE_MAX_BASES)
            while len(self._bases) >= limit:
                _, old = self._bases.popitem(last=False)
                with old.lock:  # let a running generation finish before the memory goes
                    pass
            loaded = _LoadedBase(path)
            self._bases[path] = loaded
            return loaded

    def clear(self) -> None:
        with self._lock:
            self._bases.clear()


CACHE = ModelCache()


def _generate_kwargs(loaded: _LoadedBase, req: GenerationRequest, input_len: int) -> dict:
    import torch  # lazily, see the module docstring

    kwargs = {"max_new_tokens": req.max_new_tokens, "pad_token_id": loaded.tokenizer.pad_token_id}
    if req.temperature and req.temperature > 0:
        kwargs.update(do_sample=True, temperature=req.temperature, top_p=req.top_p)
    else:
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    if req.stop:
        kwargs.update(stop_strings=req.stop, tokenizer=loaded.tokenizer)
    if req.seed is not None:
        torch.manual_seed(req.seed)
    return kwargs


def _trim_stop(text: str, stops: list[str]) -> tuple[str, bool]:
    cut = min((text.find(s) for s in stops if s and s in text), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


class _Session:
    """Holds the base model's lock for one generation, with the right adapter active."""

    def __init__(self, base_path: str, adapter_key: str | None, adapter_path: str | None) -> None:
        self.loaded = CACHE.base(base_path)
        self.adapter_key = adapter_key
        self.adapter_path = adapter_path

    def __enter__(self):
        self.loaded.lock.acquire()
        try:
            template = None
            if self.adapter_key:
                self.loaded.attach(self.adapter_key, self.adapter_path)
                self.loaded.peft.set_adapter(self.adapter_key)
                template = self.loaded.adapters[self.adapter_key]
                self.model = self.loaded.peft
                self._ctx = None
            elif self.loaded.peft is not None:
                # the base alone: adapters stay loaded but disabled for this generation
                self._ctx = self.loaded.peft.disable_adapter()
                self._ctx.__enter__()
                self.model = self.loaded.peft
            else:
                self._ctx = None
                self.model = self.loaded.model
            self.template = template
        except BaseException:
            self.loaded.lock.release()
            raise
        return self

    def __exit__(self, *exc) -> None:
        try:
            if self._ctx is not None:
                self._ctx.__exit__(*exc)
        finally:
            self.loaded.lock.release()


def count_prompt_tokens(base_path: str, messages: list[dict]) -> int:
    return len(CACHE.base(base_path).render(messages, None))


def generate(base_path: str, adapter_key: str | None, adapter_path: str | None,
             req: GenerationRequest) -> GenerationResult:
    import torch  # lazily, see the module docstring

    with _Session(base_path, adapter_key, adapter_path) as s:
        tok = s.loaded.tokenizer
        ids = s.loaded.render(req.messages, s.template)
        input_ids = torch.tensor([ids], device=s.loaded.device)
        with torch.inference_mode():
            out = s.model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                                   **_generate_kwargs(s.loaded, req, len(ids)))
        new = out[0][len(ids):].tolist()
    text = tok.decode(new, skip_special_tokens=True)
    text, stopped = _trim_stop(text, req.stop)
    hit_eos = bool(new) and new[-1] == tok.eos_token_id
    finish = "stop" if stopped or hit_eos or len(new) < req.max_new_tokens else "length"
    return GenerationResult(text=text, prompt_tokens=len(ids), completion_tokens=len(new), finish_reason=finish)


def generate_stream(base_path: str, adapter_key: str | None, adapter_path: str | None,
                    req: GenerationRequest) -> Iterator[str | GenerationResult]:
    """Yield text pieces as they are generated, then one final ``GenerationResult`` (usage, finish reason)."""
    import torch  # lazily, see the module docstring
    from transformers import TextIteratorStreamer

    with _Session(base_path, adapter_key, adapter_path) as s:
        tok = s.loaded.tokenizer
        ids = s.loaded.render(req.messages, s.template)
        input_ids = torch.tensor([ids], device=s.loaded.device)
        streamer = TextIteratorStreamer(tok, skip_prompt=True, skip_special_tokens=True)
        produced: dict = {}

        def run() -> None:
            try:
                with torch.inference_mode():
                    produced["out"] = s.model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                                                       streamer=streamer, **_generate_kwargs(s.loaded, req, len(ids)))
            except BaseException as exc:  # surfaced to the consumer below
                produced["error"] = exc
                streamer.end()

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        sent = ""
        pending = ""
        stopped = False
        hold = max((len(x) for x in req.stop), default=0)
        for piece in streamer:
            if stopped:
                continue
            pending += piece
            text, hit = _trim_stop(sent + pending, req.stop)
            if hit:
                stopped = True
                delta = text[len(sent):]
                if delta:
                    yield delta
                sent = text
                pending = ""
                continue
            # hold back a tail that could be the start of a stop sequence
            safe = len(pending) - hold if hold else len(pending)
            if safe > 0:
                yield pending[:safe]
                sent += pending[:safe]
                pending = pending[safe:]
        thread.join()
        if "error" in produced:
            raise produced["error"]
        if pending and not stopped:
            final_text, stopped = _trim_stop(sent + pending, req.stop)
            if final_text[len(sent):]:
                yield final_text[len(sent):]
        new = produced["out"][0][len(ids):].tolist()
    hit_eos = bool(new) and new[-1] == tok.eos_token_id
    finish = "stop" if stopped or hit_eos or len(new) < req.max_new_tokens else "length"
    yield GenerationResult(text="", prompt_tokens=len(ids), completion_tokens=len(new), finish_reason=finish)
