"""The recipe's compute dtype: the start-up probe, the ``bf16`` parameter, and where the choice is recorded."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")

from ml import probe as recipe  # noqa: E402  (the probe's module: its flags are patched)
from ml.errors import DEVICE_UNAVAILABLE, TrainingError  # noqa: E402
from ml.probe import cpu_precision_probe, precision_plan  # noqa: E402
from ml.train.sft import RunSpec, run_training  # noqa: E402
from tests.training.tiny import RecordingHooks, chat_records, save_tiny_model  # noqa: E402

FAST = {"n_epochs": 1, "max_steps": 2, "batch_size": 4, "learning_rate": 1e-2, "lora_r": 8, "lora_alpha": 16,
        "lora_dropout": 0.0, "save_steps": 100, "max_seq_length": 128}


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("models") / "tiny-llama")


def test_the_probe_times_bf16_against_fp32_where_the_cpu_has_native_bf16(monkeypatch):
    monkeypatch.setattr(recipe, "cpu_bf16_flags", lambda: ["AVX512-BF16"])
    probe = cpu_precision_probe({"hidden_size": 1024, "intermediate_size": 64}, seconds=0.01)
    assert probe["matmul"] == "512x1024x1536" and probe["fp32_gflops"] > 0 and probe["bf16_gflops"] > 0
    assert probe["bf16"] == (probe["bf16_time_ratio"] <= recipe.BF16_MAX_TIME_RATIO)
    assert "AVX512-BF16" in probe["reason"] and ("bf16" if probe["bf16"] else "fp32") in probe["reason"]


def test_without_native_bf16_the_probe_keeps_fp32_without_timing(monkeypatch):
    monkeypatch.setattr(recipe, "cpu_bf16_flags", lambda: [])
    probe = cpu_precision_probe(None)
    assert probe["bf16"] is False and "fp32_gflops" not in probe and "no native bf16" in probe["reason"]
    assert precision_plan("cpu", "auto")["dtype"] == "float32"


def test_the_bf16_parameter_forces_the_choice_on_cpu():
    assert precision_plan("cpu", True) == {"dtype": "bfloat16", "setting": True, "reason": "bf16=true (given)"}
    assert precision_plan("cpu", False)["dtype"] == "float32"


def test_bf16_true_is_refused_on_a_gpu_without_bf16(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    with pytest.raises(TrainingError) as info:
        precision_plan("cuda", True)
    assert info.value.code == DEVICE_UNAVAILABLE
    assert precision_plan("cuda", "auto")["dtype"] == "float16"


@pytest.mark.parametrize(("bf16", "dtype"), [(True, "bfloat16"), (False, "float32")])
def test_a_run_computes_in_the_chosen_dtype_and_records_why(tiny_base, tmp_path, bf16, dtype):
    hooks = RecordingHooks()
    result = run_training(RunSpec(base_model_path=tiny_base, train=chat_records(8), params=dict(FAST, bf16=bf16),
                                  run_dir=tmp_path / "run", adapter_dir=tmp_path / "adapter", device="cpu"), hooks)
    assert result.status == "succeeded" and result.device_info["compute_dtype"] == dtype
    assert result.device_info["precision"]["reason"].startswith(f"bf16={str(bf16).lower()}")
    assert any(m.startswith(f"Compute dtype: {dtype} (") for _, m in hooks.messages)
    summary = json.loads((result.adapter_dir / "training_summary.json").read_text())
    assert summary["device"]["precision"]["dtype"] == dtype
    # the adapter (what the optimizer trained) stays fp32 whatever the base computes in
    from safetensors.torch import load_file

    weights = load_file(str(result.adapter_dir / "adapter_model.safetensors"))
    assert {t.dtype for t in weights.values()} == {torch.float32}


def test_a_resumed_run_keeps_the_precision_it_was_trained_in(tiny_base, tmp_path, monkeypatch):
    """The probe, timed under other load, may choose otherwise on resume; the run continues in its own dtype."""
    from ml.train import sft

    answers = iter([{"dtype": "bfloat16", "setting": "auto", "reason": "CPU probe: bf16 (faked)"},
                    {"dtype": "float32", "setting": "auto", "reason": "CPU probe: fp32 (faked)"}])
    monkeypatch.setattr(sft, "precision_plan", lambda *a, **kw: next(answers))
    params = dict(FAST, max_steps=4, save_steps=100)

    def spec(**kw):
        return RunSpec(base_model_path=tiny_base, train=chat_records(16), params=params, run_dir=tmp_path / "run",
                       adapter_dir=tmp_path / "run" / "adapter", device="cpu", **kw)

    paused = run_training(spec(), RecordingHooks(stop_at=(2, "pause")))
    assert paused.status == "paused"
    hooks = RecordingHooks()
    resumed = run_training(spec(resume_from=paused.checkpoint), hooks)
    assert resumed.status == "succeeded"
    assert resumed.device_info["compute_dtype"] == "bfloat16"
    assert any("as the run it resumes: CPU probe: bf16 (faked)" in message for _level, message in hooks.messages)
    assert next(answers, None) is not None  # the probe was not asked again on resume
