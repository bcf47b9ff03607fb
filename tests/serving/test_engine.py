"""The engine in this process (what ``serve_models`` runs): adapters evicted by their bytes, not their count."""

from __future__ import annotations

import pytest

from serving.inference import GenerationRequest

HI = [{"role": "user", "content": "What is the warranty period?"}]


@pytest.fixture
def engine(settings):
    from serving.engine import Engine

    settings.SERVING_ADAPTER_MEMORY_BYTES = 25_000  # two tiny adapters (11,264 bytes each), not three
    e = Engine()
    yield e
    e.stop()


def test_idle_adapters_are_evicted_when_their_bytes_exceed_the_budget(engine, tiny_model_dir, tiny_adapters):
    from serving.engine import Job

    base = str(tiny_model_dir)
    for adapter in tiny_adapters:
        list(engine.submit(Job(base, adapter.name, str(adapter), GenerationRequest(messages=HI, max_new_tokens=2))))
    loaded = engine.snapshot()["adapters"][base]
    assert list(loaded) == ["lora-2", "lora-3"]  # the least recently used went first
    assert sum(loaded.values()) <= 25_000
    # an evicted adapter comes back on its next use
    out = list(engine.submit(Job(base, "lora-1", str(tiny_adapters[0]), GenerationRequest(messages=HI,
                                                                                         max_new_tokens=2))))
    assert out[-1].completion_tokens == 2 and "lora-1" in engine.snapshot()["adapters"][base]
