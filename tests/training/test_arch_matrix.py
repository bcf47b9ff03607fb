"""The causal-LM recipe on every architecture it claims: tiny random configs built here, no hub.

For each: the CPU fast path (flat rows, per-example attention, head at target positions only) computes the loss
and gradients transformers' own padded forward does; a short run writes an adapter plain PEFT loads and generates
with; ``all-linear`` and the LoRA defaults resolve to the attention and MLP projections; NF4 trains where
bitsandbytes runs on CPU. Windows are shorter than the examples (16 tokens against 30-70), so a path that
ignored them would be off by far more than the tolerance; soft-capping values are small for the same reason.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from ml.data import Collator, encode_records, to_item  # noqa: E402
from ml.hparams import lora_parameter_count, parse_params, resolve_params  # noqa: E402
from ml.model import attention_implementation  # noqa: E402
from ml.train.sft import (  # noqa: E402
    RunSpec,
    add_lora,
    attention_plan,
    enable_flat_batches,
    run_training,
    token_loss_sums,
    uses_direct_head,
)
from tests.training.test_recipe import (  # noqa: E402
    _assert_same_grads,
    _grads,
    _padded_standard_loss_tensor,
    _varied_records,
)
from tests.training.tiny import build_tokenizer, chat_records  # noqa: E402

WINDOW = 16
COMMON = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=512, initializer_range=0.2, tie_word_embeddings=True)
GEMMA = dict(head_dim=16, query_pre_attn_scalar=16, layer_types=["sliding_attention", "full_attention"],
             sliding_window=WINDOW)

# name -> (config class, its keyword arguments)
ARCHITECTURES = {
    "llama": ("LlamaConfig", {}),
    "qwen2": ("Qwen2Config", {"use_sliding_window": False}),
    # layer 0 global, layer 1 windowed (max_window_layers=1), as Qwen2 configs with use_sliding_window do
    "qwen2-window": ("Qwen2Config", {"use_sliding_window": True, "sliding_window": WINDOW, "max_window_layers": 1}),
    "qwen3": ("Qwen3Config", {"head_dim": 16}),
    "mistral": ("MistralConfig", {"sliding_window": WINDOW}),
    "phi3": ("Phi3Config", {"sliding_window": WINDOW, "pad_token_id": None}),
    "gemma2": ("Gemma2Config", {**GEMMA, "attn_logit_softcapping": 2.0, "final_logit_softcapping": 3.0}),
    "gemma3": ("Gemma3TextConfig", {**GEMMA, "rope_parameters": {
        "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
        "full_attention": {"rope_type": "default", "rope_theta": 1_000_000.0}}}),
}
WINDOWED = {"qwen2-window", "mistral", "phi3", "gemma2", "gemma3"}

# Module names LoRA's all-linear must reach on each: every attention and MLP projection (Phi-3 fuses q/k/v and
# gate/up into one layer each).
PROJECTIONS = {"phi3": {"qkv_proj", "o_proj", "gate_up_proj", "down_proj"}}
LLAMA_PROJECTIONS = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}

FAST = {"n_epochs": 1, "max_steps": 3, "batch_size": 4, "learning_rate": 1e-2, "lora_r": 8, "lora_alpha": 16,
        "lora_dropout": 0.0, "save_steps": 100, "max_seq_length": 128}


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


def build_config(name: str, tokenizer):
    import transformers

    class_name, kwargs = ARCHITECTURES[name]
    return getattr(transformers, class_name)(
        **{**COMMON, "vocab_size": len(tokenizer), "pad_token_id": tokenizer.pad_token_id,
           "eos_token_id": tokenizer.eos_token_id, "bos_token_id": None, **kwargs})


def build_model(name: str, tokenizer, seed: int = 0):
    from transformers import AutoModelForCausalLM

    config = build_config(name, tokenizer)
    implementation, _ = attention_implementation(config)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config, attn_implementation=implementation)


def long_records() -> list[dict]:
    """Conversations of 30 to 70 tokens, so every window above cuts into them."""
    records = _varied_records()
    records[2]["messages"][1]["content"] += " The warranty lasts two years from the date of purchase, call us."
    return records


@pytest.fixture(scope="module")
def saved_models(tmp_path_factory, tokenizer) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("arch")
    out = {}
    for name in ARCHITECTURES:
        folder = root / name
        build_model(name, tokenizer).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        out[name] = folder
    return out


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_fast_path_loss_and_gradients_equal_the_padded_forward(name, tokenizer):
    model = build_model(name, tokenizer)
    examples, _ = encode_records(tokenizer, long_records())
    if name in WINDOWED:
        assert max(len(e) for e in examples) > 3 * WINDOW
    loss = _padded_standard_loss_tensor(model, tokenizer, examples, width=128)
    loss.backward()
    standard = _grads(model)

    plan = attention_plan(model, "cpu")
    assert plan["flat"] is True, plan["reason"]
    assert uses_direct_head(model)
    enable_flat_batches(model)
    batch = Collator(tokenizer.pad_token_id, flat=True)([to_item(e) for e in examples])
    loss_sum, n, _ = token_loss_sums(model, batch, direct=True, packed=False)
    fast = loss_sum / n
    fast.backward()
    assert fast.item() == pytest.approx(loss.item(), rel=1e-4)
    _assert_same_grads(_grads(model), standard)


@pytest.mark.parametrize("name", sorted(WINDOWED))
def test_windowed_plan_says_which_layers_are_windowed(name, tokenizer):
    plan = attention_plan(build_model(name, tokenizer), "cpu")
    # Mistral and Phi-3 window every layer; the others alternate windowed and global layers
    assert plan["sliding_window"] == WINDOW and plan["windowed_layers"] == (2 if name in ("mistral", "phi3") else 1)
    assert "sliding window" in plan["reason"]


def test_gemma2_loads_with_eager_attention_and_soft_capping_on_the_fast_path(tokenizer):
    config = build_config("gemma2", tokenizer)
    assert attention_implementation(config)[0] == "eager"
    plan = attention_plan(build_model("gemma2", tokenizer), "cpu")
    assert plan["path"] == "flat varlen eager" and plan["attn_logit_softcapping"] == 2.0
    assert attention_implementation(build_config("gemma3", tokenizer))[0] == "sdpa"


def test_cuda_keeps_the_models_own_masks(tokenizer):
    plan = attention_plan(build_model("mistral", tokenizer), "cuda")
    assert plan["flat"] is False and plan["path"] == "padded sdpa"


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_all_linear_and_lora_defaults_resolve(name, tokenizer):
    model = build_model(name, tokenizer)
    params = resolve_params(parse_params({}), n_examples=16, n_tokens_mean=40, n_tokens_max=70, device="cpu",
                            has_chat_template=True, model_max_length=512, has_validation=False)
    assert params.target_modules == "all-linear"
    peft_model = add_lora(model, params)
    targeted = {n.rsplit(".", 1)[-1] for n, m in peft_model.named_modules() if hasattr(m, "lora_A")}
    assert targeted == PROJECTIONS.get(name, LLAMA_PROJECTIONS)
    trainable, _ = peft_model.get_nb_trainable_parameters()
    config = json.loads(model.config.to_json_string())
    assert lora_parameter_count(config, lora_r=params.lora_r) == trainable


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_short_run_writes_an_adapter_plain_peft_generates_with(name, saved_models, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = saved_models[name]
    result = run_training(RunSpec(base_model_path=base, train=long_records() * 2, params=dict(FAST),
                                  run_dir=tmp_path / "run", adapter_dir=tmp_path / "adapter", device="cpu"))
    assert result.status == "succeeded" and result.global_step == 3
    assert result.device_info["flat_batches"] is True
    summary = json.loads((result.adapter_dir / "training_summary.json").read_text())
    assert summary["device"]["attention"]["flat"] is True and summary["device"]["attention"]["reason"]
    assert math.isfinite(result.metrics["train_loss"])

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), str(result.adapter_dir))
    tok = AutoTokenizer.from_pretrained(str(result.adapter_dir))
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is the warranty period?"}],
                                     add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**prompt, max_new_tokens=4, do_sample=False)
    assert out.shape[1] == prompt["input_ids"].shape[1] + 4


def _bitsandbytes_cpu() -> bool:
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        return False
    return True


# bitsandbytes >= 0.49 has CPU kernels for NF4: every architecture above is checked; where it is not installed
# there is nothing to check.
@pytest.mark.skipif(not _bitsandbytes_cpu(), reason="bitsandbytes is not installed")
@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_nf4_trains_on_cpu(name, saved_models, tmp_path):
    result = run_training(RunSpec(base_model_path=saved_models[name], train=chat_records(8),
                                  params=dict(FAST, quantization="nf4", max_steps=2), run_dir=tmp_path / "run",
                                  adapter_dir=tmp_path / "adapter", device="cpu"))
    assert result.status == "succeeded" and result.device_info["quantization"] == "nf4"
    assert (result.adapter_dir / "adapter_model.safetensors").is_file()


def _write_config(folder: Path, config: dict) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    return folder


def test_an_unknown_architecture_is_unsupported_not_missing(tmp_path):
    from ml.errors import TrainingError
    from ml.model import load_base_model

    folder = _write_config(tmp_path / "odd", {"model_type": "made_up_transformer", "hidden_size": 8})
    with pytest.raises(TrainingError) as info:
        load_base_model(folder, quantization="none", device="cpu")
    assert info.value.code == "unsupported_model" and "made_up_transformer" in info.value.message


def test_an_encoder_without_a_causal_head_is_unsupported(tmp_path):
    from transformers import DistilBertConfig

    from ml.errors import TrainingError
    from ml.model import load_base_model

    folder = tmp_path / "distilbert"
    DistilBertConfig(n_layers=1, dim=32, hidden_dim=64, n_heads=2).save_pretrained(folder)
    with pytest.raises(TrainingError) as info:
        load_base_model(folder, quantization="none", device="cpu")
    assert info.value.code == "unsupported_model" and "causal language-model head" in info.value.message
