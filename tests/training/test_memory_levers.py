"""What keeps a CPU run's memory low without changing what it computes: a batch run in chunks of whole examples
(``micro_batch_tokens``), the LM head's loss fused with its gradient chunk by chunk, LoRA inputs left in the
compute dtype under autocast, and training children on jemalloc."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from ml.data import Collator, encode_records, to_item, token_chunks  # noqa: E402
from ml.hparams import InvalidParams, estimate_run_memory, resolve_params  # noqa: E402
from ml.probe import allocator_library  # noqa: E402
from ml.train import sft  # noqa: E402
from ml.train.sft import RunSpec, run_training  # noqa: E402
from tests.training.test_recipe import FAST  # noqa: E402  (the recipe tests' quick parameters)
from tests.training.tiny import build_tokenizer, chat_records, save_tiny_model  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("models") / "tiny-llama")


def _run(base: Path, tmp: Path, name: str, **params):
    spec = RunSpec(base_model_path=base, train=chat_records(16), params=dict(FAST, **params), run_dir=tmp / name,
                   adapter_dir=tmp / name / "adapter", device="cpu")
    return run_training(spec)


def _adapter(result) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(Path(result.adapter_dir) / "adapter_model.safetensors"))


# --- chunked passes ---------------------------------------------------------------------------------------------


def test_token_chunks_keep_the_order_and_the_budget():
    items = [{"input_ids": [0] * n} for n in (30, 50, 10, 200, 5, 5)]
    chunks = token_chunks(items, 64)
    assert [it for chunk in chunks for it in chunk] == items
    assert [[len(it["input_ids"]) for it in c] for c in chunks] == [[30], [50, 10], [200], [5, 5]]
    assert all(sum(len(it["input_ids"]) for it in c) <= 64 for c in chunks if len(c) > 1)


def test_a_batch_over_the_budget_is_collated_in_chunks():
    tokenizer = build_tokenizer()
    examples, _ = encode_records(tokenizer, chat_records(6))
    items = [to_item(e) for e in examples]
    total = sum(len(it["input_ids"]) for it in items)
    whole = Collator(tokenizer.pad_token_id, flat=True)(items)
    chunked = Collator(tokenizer.pad_token_id, flat=True, max_tokens=total // 2)(items)
    assert "chunks" in chunked and len(chunked["chunks"]) >= 2
    joined = torch.cat([c["input_ids"] for c in chunked["chunks"]], dim=1)
    assert torch.equal(joined, whole["input_ids"])
    assert "chunks" not in Collator(tokenizer.pad_token_id, flat=True, max_tokens=total)(items)
    # padded batches (CUDA) are never chunked
    assert "chunks" not in Collator(tokenizer.pad_token_id, max_tokens=8)(items)


def test_chunked_passes_train_what_one_pass_trains(tiny_base, tmp_path, monkeypatch):
    # One optimizer step: the loss and the step it takes must be the batch's. (Over many steps AdamW turns float
    # summation differences of near-zero gradient components into full-size updates, so trajectories part slowly
    # whatever the arithmetic; the step itself is what chunking must not change.)
    one = _run(tiny_base, tmp_path, "one", micro_batch_tokens=0, max_steps=1)
    passes: list[int] = []
    real = sft._passes
    monkeypatch.setattr(sft, "_passes", lambda batch: passes.append(len(real(batch))) or real(batch))
    chunked = _run(tiny_base, tmp_path, "chunked", micro_batch_tokens=40, max_steps=1)  # 1-2 examples per pass
    assert max(passes) >= 2  # the batch did run in several passes
    assert chunked.trained_tokens == one.trained_tokens > 0
    loss = [h["train_loss"] for h in one.history if "train_loss" in h]
    assert [h["train_loss"] for h in chunked.history if "train_loss" in h] == pytest.approx(loss, rel=1e-6)
    a, b = _adapter(one), _adapter(chunked)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], rtol=1e-5, atol=1e-7), key


def test_auto_chunks_cpu_runs_of_one_process_only():
    cpu = resolve_params({}, n_examples=100, device="cpu")
    assert cpu.micro_batch_tokens == 1536 and "chunks" in cpu.auto["micro_batch_tokens"]
    assert resolve_params({}, n_examples=100, device="cuda").micro_batch_tokens == 0
    assert resolve_params({}, n_examples=100, device="cpu", method="dpo").micro_batch_tokens == 0
    assert resolve_params({"num_processes": 2}, n_examples=100, device="cpu").micro_batch_tokens == 0
    with pytest.raises(InvalidParams) as err:
        resolve_params({"num_processes": 2, "micro_batch_tokens": 512}, n_examples=100, device="cpu")
    assert err.value.field == "micro_batch_tokens"


def test_the_memory_estimate_counts_one_pass_and_says_so():
    config = {"model_type": "llama", "hidden_size": 576, "num_hidden_layers": 30, "num_attention_heads": 9,
              "num_key_value_heads": 3, "intermediate_size": 1536, "vocab_size": 49152, "tie_word_embeddings": True}
    chunked = resolve_params({"batch_size": 8, "max_seq_length": 512}, n_examples=200, device="cpu")
    whole = resolve_params({"batch_size": 8, "max_seq_length": 512, "micro_batch_tokens": 0}, n_examples=200,
                           device="cpu")
    a = estimate_run_memory(chunked, config=config, parameter_count=None, device="cpu", tokens_per_sequence=300)
    b = estimate_run_memory(whole, config=config, parameter_count=None, device="cpu", tokens_per_sequence=300)
    assert a.parts["activations"] * 8 == b.parts["activations"] * 5  # 5 sequences of 300 tokens per pass
    assert "8 sequences x 300 tokens per micro-batch, run 5 at a time" in a.describe()
    assert "at a time" not in b.describe()


# --- the fused head loss ----------------------------------------------------------------------------------------


class _Head(torch.nn.Module):
    def __init__(self, cap: float | None):
        super().__init__()
        self.head = torch.nn.Linear(32, 300, bias=False)
        self.head.weight.requires_grad_(False)
        self.config = type("Config", (), {"final_logit_softcapping": cap})()

    def get_output_embeddings(self):
        return self.head


@pytest.mark.parametrize("cap", [None, 5.0])
def test_the_fused_head_loss_equals_cross_entropy_and_its_gradient(cap, monkeypatch):
    monkeypatch.setattr(sft, "HEAD_CHUNK", 64)  # several chunks
    torch.manual_seed(0)
    lm = _Head(cap)
    hidden = torch.randn(300, 32, requires_grad=True)
    labels = torch.randint(0, 300, (300,))
    logits = sft.head_logits(lm, hidden).float()
    expected = torch.nn.functional.cross_entropy(logits, labels, reduction="sum")
    (expected * 0.3).backward()
    expected_grad, hidden.grad = hidden.grad.clone(), None
    loss, correct = sft.fused_head_loss(lm, hidden, labels)
    (loss * 0.3).backward()
    assert float(loss) == pytest.approx(float(expected), rel=1e-6)
    assert int(correct) == int((logits.argmax(-1) == labels).sum())
    assert torch.allclose(hidden.grad, expected_grad, rtol=1e-5, atol=1e-7)


def test_a_trainable_head_takes_the_plain_loss():
    lm = _Head(None)
    lm.head.weight.requires_grad_(True)
    assert sft.fused_head_loss(lm, torch.randn(4, 32), torch.zeros(4, dtype=torch.long)) is None


# --- adapter inputs under autocast ------------------------------------------------------------------------------


def test_adapter_inputs_stay_in_the_compute_dtype_during_a_bf16_pass_only(tiny_base, tmp_path, monkeypatch):
    from peft.tuners.tuners_utils import BaseTunerLayer

    flags: list[bool] = []  # PEFT's input casting, as each training pass sees it
    real = sft.token_loss_sums

    def spy(model, batch, **kw):
        flags.extend({m.cast_input_dtype_enabled for m in model.modules() if isinstance(m, BaseTunerLayer)})
        return real(model, batch, **kw)

    monkeypatch.setattr(sft, "token_loss_sums", spy)
    result = _run(tiny_base, tmp_path, "bf16", bf16=True, n_epochs=1)
    assert result.status == "succeeded" and flags and not any(flags)
    assert result.metrics["train_loss"] == result.metrics["train_loss"]  # finite, not NaN
    flags.clear()
    _run(tiny_base, tmp_path, "fp32", bf16=False, n_epochs=1)
    assert flags and all(flags)  # fp32: PEFT's own behaviour


# --- the allocator ----------------------------------------------------------------------------------------------


def test_a_child_gets_the_allocator_first_in_ld_preload(settings):
    from jobs.runtime import child_allocator_env

    settings.JOB_CHILD_ALLOCATOR = "system"
    assert child_allocator_env({}) == {}
    library = allocator_library("jemalloc")
    assert library is not None, "no jemalloc on this host: make install installs libjemalloc2"
    settings.JOB_CHILD_ALLOCATOR = "jemalloc"
    assert child_allocator_env({"LD_PRELOAD": f"/x/other.so:{library}"}) == {
        "LD_PRELOAD": f"{library}:/x/other.so"}
    assert allocator_library("/no/such/lib.so") is None


def test_a_process_started_with_it_runs_on_jemalloc():
    library = allocator_library("jemalloc")
    assert library is not None, "no jemalloc on this host: make install installs libjemalloc2"
    code = "import json; from ml.probe import allocator_in_use; print(json.dumps(allocator_in_use()))"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    ran = subprocess.run([sys.executable, "-c", code], env=dict(env, LD_PRELOAD=library), capture_output=True,
                         text=True, timeout=60, cwd=REPO)
    assert json.loads(ran.stdout) == "jemalloc", ran.stderr
    plain = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60, cwd=REPO)
    assert json.loads(plain.stdout) == "system", plain.stderr
