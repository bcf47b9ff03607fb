"""Hyperparameter validation, "auto" resolution and the memory estimate (no Django, no torch)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ml.hparams import (
    InvalidParams,
    ResolvedParams,
    TrainingParams,
    estimate_memory,
    parameter_count_from_config,
    parse_params,
    resolve_params,
)

SMOLLM2_CONFIG = {
    "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
    "num_key_value_heads": 3, "head_dim": 64, "vocab_size": 49152, "tie_word_embeddings": True,
}
LLAMA_7B_CONFIG = {
    "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
    "num_key_value_heads": 32, "vocab_size": 32000, "tie_word_embeddings": False,
}


def test_every_knob_has_a_default():
    params = parse_params({})
    assert params.n_epochs == "auto"
    assert params.target_modules == "all-linear"
    assert params.loss_on == "assistant"
    assert params.quantization == "auto"


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"n_epochs": 0}, "n_epochs"),
        ({"batch_size": -1}, "batch_size"),
        ({"learning_rate": "fast"}, "learning_rate"),
        ({"learning_rate": 0.5}, "learning_rate"),
        ({"learning_rate_multiplier": 0}, "learning_rate_multiplier"),
        ({"lr_scheduler": "exponential"}, "lr_scheduler"),
        ({"warmup_ratio": 0.9}, "warmup_ratio"),
        ({"max_seq_length": 4}, "max_seq_length"),
        ({"lora_r": 0}, "lora_r"),
        ({"lora_dropout": 1.5}, "lora_dropout"),
        ({"target_modules": []}, "target_modules"),
        ({"target_modules": ["q_proj", "bad name"]}, "target_modules"),
        ({"quantization": "fp8"}, "quantization"),
        ({"loss_on": "user"}, "loss_on"),
        ({"seed": -3}, "seed"),
        ({"eval_steps": 0}, "eval_steps"),
        ({"max_steps": 0}, "max_steps"),
        ({"template": "vicuna"}, "template"),
        ({"bf16": "sometimes"}, "bf16"),
    ],
)
def test_bad_value_is_refused_naming_the_field(data, field):
    with pytest.raises(InvalidParams) as info:
        parse_params(data)
    assert info.value.field == field
    assert field in info.value.message


def test_unknown_key_is_refused_naming_it():
    with pytest.raises(InvalidParams) as info:
        parse_params({"lr": 1e-4})
    assert info.value.field == "lr"
    assert "unknown parameter" in info.value.message


def test_explicit_values_are_kept():
    resolved = resolve_params(
        {"n_epochs": 2, "batch_size": 3, "gradient_accumulation_steps": 5, "learning_rate": 1e-4, "lora_r": 8,
         "lora_alpha": 8, "lora_dropout": 0.1, "quantization": "nf4", "max_seq_length": 256, "packing": True,
         "target_modules": ["q_proj", "v_proj"], "lr_scheduler": "linear", "warmup_ratio": 0.0, "save_steps": 7,
         "eval_steps": 9, "template": "alpaca_zh", "bf16": True, "micro_batch_tokens": 0},
        n_examples=100, device="cpu",
    )
    assert resolved.micro_batch_tokens == 0
    assert (resolved.n_epochs, resolved.batch_size, resolved.gradient_accumulation_steps) == (2, 3, 5)
    assert (resolved.learning_rate, resolved.lora_r, resolved.lora_alpha, resolved.lora_dropout) == (1e-4, 8, 8, 0.1)
    assert resolved.quantization == "nf4" and resolved.max_seq_length == 256 and resolved.packing is True
    assert resolved.target_modules == ["q_proj", "v_proj"] and resolved.template == "alpaca_zh"
    assert (resolved.save_steps, resolved.eval_steps, resolved.warmup_ratio) == (7, 9, 0.0)
    assert resolved.bf16 is True
    assert resolved.auto == {}


def test_auto_gives_small_sets_many_steps_and_a_higher_learning_rate():
    small = resolve_params({}, n_examples=30, n_tokens_mean=60, device="cpu")
    # the measurement: 3 epochs at 2e-4 learn nothing from ~30 examples
    assert small.n_epochs >= 6
    assert small.total_steps >= 60
    assert small.learning_rate >= 5e-4
    assert small.lora_r >= 16
    assert small.effective_batch_size <= 8


def test_auto_large_sets_converge_to_tutorial_defaults():
    large = resolve_params({}, n_examples=10_000, n_tokens_mean=300, device="cuda", gpu_memory_gb=24)
    assert large.n_epochs == 3
    assert large.learning_rate == pytest.approx(2e-4)
    assert large.lora_r == 16 and large.lora_alpha == 32
    assert 16 <= large.effective_batch_size <= 32
    huge = resolve_params({}, n_examples=200_000, device="cuda", gpu_memory_gb=24)
    assert huge.n_epochs == 1


def test_auto_learning_rate_falls_as_the_set_grows():
    rates = [resolve_params({}, n_examples=n, device="cpu").learning_rate for n in (20, 100, 500, 2000, 50000)]
    assert rates == sorted(rates, reverse=True)
    assert rates[0] > 4 * rates[-1]


def test_learning_rate_multiplier_scales_auto_and_explicit_rates():
    auto = resolve_params({}, n_examples=100, device="cpu").learning_rate
    doubled = resolve_params({"learning_rate_multiplier": 2}, n_examples=100, device="cpu")
    assert doubled.learning_rate == pytest.approx(2 * auto)
    explicit = resolve_params({"learning_rate": 1e-4, "learning_rate_multiplier": 0.5}, n_examples=100, device="cpu")
    assert explicit.learning_rate == pytest.approx(5e-5)
    assert "learning_rate_multiplier" in explicit.auto


def test_quantization_auto_is_nf4_on_cuda_and_none_on_cpu():
    assert resolve_params({}, n_examples=50, device="cuda").quantization == "nf4"
    assert resolve_params({}, n_examples=50, device="cpu").quantization == "none"
    assert resolve_params({"quantization": "nf4"}, n_examples=50, device="cpu").quantization == "nf4"


def test_every_auto_choice_is_explained():
    resolved = resolve_params({}, n_examples=40, n_tokens_mean=80, n_tokens_max=300, device="cpu")
    for name in ("n_epochs", "batch_size", "learning_rate", "lora_r", "lora_alpha", "quantization", "max_seq_length",
                 "warmup_ratio", "save_steps", "packing", "template"):
        assert resolved.auto[name], name
    assert resolved.max_seq_length == 320  # longest example rounded up to 64


def test_bf16_is_auto_true_or_false_and_auto_is_decided_on_the_worker():
    assert parse_params({}).bf16 == "auto"
    assert parse_params({"bf16": "true"}).bf16 is True
    assert resolve_params({"bf16": False}, n_examples=40, device="cpu").bf16 is False
    auto = resolve_params({}, n_examples=40, device="cpu")
    assert auto.bf16 == "auto" and "probe" in auto.auto["bf16"]


def test_bf16_is_refused_for_the_preference_methods():
    with pytest.raises(InvalidParams) as info:
        resolve_params({"bf16": False}, n_examples=40, device="cpu", method="dpo")
    assert info.value.field == "bf16" and "sft" in info.value.message


def test_max_steps_caps_the_schedule():
    resolved = resolve_params({"max_steps": 5}, n_examples=1000, device="cpu")
    assert resolved.total_steps == 5


def test_chat_template_required_when_named():
    with pytest.raises(InvalidParams) as info:
        resolve_params({"template": "chat_template"}, n_examples=10, device="cpu", has_chat_template=False)
    assert info.value.field == "template"
    assert resolve_params({}, n_examples=10, device="cpu", has_chat_template=False).template == "alpaca"


def test_resolved_params_round_trip_through_json():
    resolved = resolve_params({}, n_examples=64, device="cpu")
    again = ResolvedParams.from_dict(json.loads(json.dumps(resolved.to_dict())))
    assert again == resolved


def test_training_params_schema_is_usable_by_the_api():
    schema = TrainingParams.model_json_schema()
    assert schema["additionalProperties"] is False
    assert "n_epochs" in schema["properties"]


def test_parameter_count_from_config_matches_smollm2():
    model = Path(__file__).resolve().parents[2] / "var/models/SmolLM2-135M-Instruct/config.json"
    config = json.loads(model.read_text()) if model.exists() else SMOLLM2_CONFIG
    assert parameter_count_from_config(config) == pytest.approx(134_515_008, rel=0.01)


def test_memory_estimate_grows_with_batch_and_length():
    kw = dict(config=SMOLLM2_CONFIG, quantization="none", device="cpu")
    small = estimate_memory(batch_size=1, max_seq_length=256, **kw).total_bytes
    wider = estimate_memory(batch_size=8, max_seq_length=256, **kw).total_bytes
    longer = estimate_memory(batch_size=1, max_seq_length=2048, **kw).total_bytes
    assert small < wider and small < longer


def test_nf4_needs_far_less_gpu_memory_for_a_7b_model():
    kw = dict(config=LLAMA_7B_CONFIG, batch_size=1, max_seq_length=512, device="cuda")
    nf4 = estimate_memory(quantization="nf4", **kw)
    full = estimate_memory(quantization="none", **kw)
    assert nf4.total_bytes < 8 * 1024**3 < full.total_bytes  # the seeds' 7B QLoRA on a small GPU
    assert nf4.parts["weights"] < full.parts["weights"] / 3


def test_memory_refusal_suggests_the_remedies():
    estimate = estimate_memory(config=LLAMA_7B_CONFIG, quantization="none", batch_size=8, max_seq_length=2048,
                               device="cuda")
    message = estimate.refusal(6 * 1024**3)
    assert message is not None
    for hint in ("batch size", "max sequence length", "nf4"):
        assert hint in message
    assert estimate.refusal(10**15) is None
