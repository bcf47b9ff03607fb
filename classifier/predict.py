"""Classifier predictions: each adapter's model is loaded once per process and kept in a bounded LRU cache."""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from django.conf import settings

from ml.classifier_data import load_for_inference, predict_texts


@dataclass
class Loaded:
    model: Any
    tokenizer: Any
    id2label: dict[int, str]
    device: str
    max_length: int


_CACHE: OrderedDict[tuple, Loaded] = OrderedDict()
_LOCK = threading.Lock()
# Loads are serialised: two requests for the same cold adapter must not load it twice.
_LOAD_LOCK = threading.Lock()


def cache_size() -> int:
    return max(1, int(settings.CLASSIFIER_CACHE_SIZE))


def _key(adapter) -> tuple:
    return (adapter.pk, adapter.path, adapter.base_model.path)


def _device() -> str:
    import torch

    wanted = settings.TRAINING_DEVICE
    if wanted not in ("", "auto"):
        return wanted if (not wanted.startswith("cuda") or torch.cuda.is_available()) else "cpu"
    return "cuda" if torch.cuda.is_available() else "cpu"


def get_model(adapter) -> Loaded:
    key = _key(adapter)
    with _LOCK:
        hit = _CACHE.get(key)
        if hit is not None:
            _CACHE.move_to_end(key)
            return hit
    with _LOAD_LOCK:
        with _LOCK:
            hit = _CACHE.get(key)
        if hit is not None:
            return hit
        device = _device()
        model, tokenizer, id2label = load_for_inference(adapter.path, adapter.base_model.path, device=device)
        max_length = int((adapter.metrics or {}).get("max_seq_length")
                         or (adapter.lora_config or {}).get("max_seq_length") or 512)
        loaded = Loaded(model, tokenizer, id2label, device, max_length)
        with _LOCK:
            _CACHE[key] = loaded
            while len(_CACHE) > cache_size():
                _CACHE.popitem(last=False)
        return loaded


def cached_keys() -> list[tuple]:
    with _LOCK:
        return list(_CACHE)


def clear_cache() -> None:
    with _LOCK:
        _CACHE.clear()


def classify(adapter, texts: list[str]) -> list[dict]:
    loaded = get_model(adapter)
    return predict_texts(loaded.model, loaded.tokenizer, loaded.id2label, texts, max_length=loaded.max_length,
                         device=loaded.device, batch_size=int(settings.CLASSIFIER_MAX_BATCH))
