"""Preference tuning (DPO, ORPO, KTO) on the tiny Llama: data, the three methods, pause/resume, start adapters."""

from __future__ import annotations

import json

import pytest

from ml.errors import TrainingError
from ml.train import checkpoints as ckpt
from tests.training.tiny import RecordingHooks, build_tokenizer, chat_records, save_tiny_model

QA = [("What is the warranty period?", "The warranty lasts two years.", "No idea."),
      ("How long is the return window?", "You can return an item within thirty days.", "Never."),
      ("What is the hotline number?", "Call 800-555-0199.", "I don't know."),
      ("Is shipping free?", "Shipping is free above fifty dollars.", "No.")]
FAST = {"n_epochs": 2, "batch_size": 4, "learning_rate": 1e-3, "lora_r": 8, "lora_alpha": 16, "save_steps": 1000,
        "max_seq_length": 128}


def pairs(n: int = 16) -> list[dict]:
    return [{"prompt": [{"role": "user", "content": QA[i % 4][0]}],
             "chosen": [{"role": "assistant", "content": QA[i % 4][1]}],
             "rejected": [{"role": "assistant", "content": QA[i % 4][2]}]} for i in range(n)]


def kto_rows(n: int = 16) -> list[dict]:
    out = []
    for p in pairs(n // 2):
        out.append({"prompt": p["prompt"], "completion": p["chosen"], "label": True})
        out.append({"prompt": p["prompt"], "completion": p["rejected"], "label": False})
    return out


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("pref") / "tiny-llama")


def spec(base, tmp_path, method="dpo", records=None, **kw):
    from ml.train.preference import PreferenceSpec

    records = records if records is not None else (kto_rows() if method == "kto" else pairs())
    params = dict(FAST, **kw.pop("params", {}))
    return PreferenceSpec(base_model_path=base, train=records, params=params, run_dir=tmp_path / "run",
                          adapter_dir=tmp_path / "adapter", device="cpu", method=method, **kw)


def test_pairs_are_rendered_by_the_sft_template_with_the_prompt_masked():
    from ml.data import encode_record
    from ml.train.preference import encode_preference_rows

    tok = build_tokenizer()
    row = encode_preference_rows(tok, pairs(1), "dpo")[0]
    sft = encode_record(tok, {"messages": pairs(1)[0]["prompt"] + pairs(1)[0]["chosen"]})
    trained = [t for t, lab in zip(sft.input_ids, sft.labels, strict=True) if lab != -100]
    # the chosen answer is exactly what SFT trains on that conversation, the prompt exactly what it masks
    assert row["chosen_ids"] == trained
    assert sft.input_ids[:len(row["prompt_ids"])] == row["prompt_ids"]
    assert tok.decode(row["rejected_ids"]) == "No idea.<|im_end|>"


def test_earlier_assistant_turns_of_the_prompt_are_not_trained():
    from ml.train.preference import encode_preference_rows

    tok = build_tokenizer()
    record = {"prompt": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},
                         {"role": "user", "content": "Warranty?"}],
              "chosen": [{"role": "assistant", "content": "Two years."}],
              "rejected": [{"role": "assistant", "content": "No."}]}
    row = encode_preference_rows(tok, [record], "dpo")[0]
    assert "Hello." in tok.decode(row["prompt_ids"]) and tok.decode(row["chosen_ids"]) == "Two years.<|im_end|>"


def test_long_pairs_are_truncated_and_reported_and_prompt_filled_pairs_dropped(tiny_base, tmp_path):
    from ml.train.preference import run_preference

    long = pairs(12) + [{"prompt": [{"role": "user", "content": "warranty " * 80}],
                         "chosen": [{"role": "assistant", "content": "Yes."}],
                         "rejected": [{"role": "assistant", "content": "No."}]},
                        {"prompt": [{"role": "user", "content": "Warranty?"}],
                         "chosen": [{"role": "assistant", "content": "two years " * 60}],
                         "rejected": [{"role": "assistant", "content": "No."}]}]
    hooks = RecordingHooks()
    result = run_preference(spec(tiny_base, tmp_path, records=long, params={"max_seq_length": 64, "max_steps": 1}),
                            hooks)
    assert result.data_report["train"]["truncated"] == 1 and result.data_report["train"]["dropped_no_target"] == 1
    warnings = [m for level, m in hooks.messages if level == "warning"]
    assert any("truncated" in m for m in warnings) and any("skipped" in m for m in warnings)


@pytest.mark.parametrize("rows, method, shape", [
    (chat_records(12), "dpo", "a chat example"),
    (kto_rows(12), "dpo", "a kto row"),
    (pairs(12), "kto", "a preference row"),
])
def test_rows_of_another_shape_are_refused_naming_it(tiny_base, tmp_path, rows, method, shape):
    from ml.train.preference import run_preference

    with pytest.raises(TrainingError) as err:
        run_preference(spec(tiny_base, tmp_path, method=method, records=rows))
    assert err.value.code == "dataset_error" and "record 1" in err.value.message and shape in err.value.message


@pytest.mark.parametrize("method", ["dpo", "orpo", "kto"])
def test_each_method_trains_and_writes_a_plain_peft_adapter(tiny_base, tmp_path, method):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from ml.train.preference import run_preference

    hooks = RecordingHooks()
    result = run_preference(spec(tiny_base, tmp_path, method=method, validation=(kto_rows(4) if method == "kto"
                                                                                 else pairs(4))), hooks)
    assert result.status == "succeeded" and result.global_step == 8
    steps = [m for _s, m in hooks.metrics if "train_loss" in m]
    assert steps and all("train_rewards_chosen" in m and "train_reward_margin" in m for m in steps)
    valid = [m for _s, m in hooks.metrics if "valid_loss" in m]
    assert valid and "valid_reward_margin" in valid[-1]
    if method != "kto":  # KTO's answers are unpaired: TRL logs no reward accuracy for it
        assert "valid_reward_accuracy" in valid[-1] and "train_reward_accuracy" in steps[-1]
    folder = result.adapter_dir
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tiny_base.resolve()) and config["r"] == 8
    assert not (folder / "ref").exists() and ckpt.checkpoint_problem(folder) != "not a folder"
    summary = json.loads((folder / "training_summary.json").read_text())
    assert summary["method"] == method and summary["params"]["method"] == method
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_base), folder)
    with torch.no_grad():
        assert torch.isfinite(model(input_ids=torch.tensor([[5, 6, 7]])).logits).all()


def test_dpo_learns_to_prefer_the_chosen_answers(tiny_base, tmp_path):
    from ml.train.preference import run_preference

    hooks = RecordingHooks()
    result = run_preference(spec(tiny_base, tmp_path, validation=pairs(4)), hooks)
    first = next(m for _s, m in hooks.metrics if "train_loss" in m)
    assert first["train_reward_margin"] == pytest.approx(0.0)  # the reference is the policy at step 0
    assert result.metrics["valid_reward_accuracy"] == 1.0 and result.metrics["valid_reward_margin"] > 0.1
    assert result.metrics["valid_loss"] < first["train_loss"]


@pytest.fixture(scope="module")
def uninterrupted(tiny_base, tmp_path_factory):
    from ml.train.preference import run_preference

    tmp = tmp_path_factory.mktemp("dpo-full")
    hooks = RecordingHooks()
    result = run_preference(spec(tiny_base, tmp, params={"n_epochs": 3}, records=pairs(12)), hooks)
    return result, hooks


@pytest.mark.parametrize("pause_at", [2, 3], ids=["mid-epoch", "epoch-end"])
def test_pause_then_resume_continues_a_dpo_run_exactly(tiny_base, tmp_path, uninterrupted, pause_at):
    from safetensors.torch import load_file

    from ml.train.preference import run_preference

    full, full_hooks = uninterrupted
    first = RecordingHooks(stop_at=(pause_at, "pause"))
    paused = run_preference(spec(tiny_base, tmp_path, params={"n_epochs": 3}, records=pairs(12)), first)
    assert paused.status == "paused" and paused.global_step == pause_at and paused.adapter_dir is None
    assert paused.checkpoint == tmp_path / f"run/checkpoints/step-{pause_at}"
    assert ckpt.checkpoint_problem(paused.checkpoint) is None
    second = RecordingHooks()
    resumed = run_preference(spec(tiny_base, tmp_path, params={"n_epochs": 3}, records=pairs(12),
                                  resume_from=paused.checkpoint), second)
    assert resumed.status == "succeeded" and resumed.global_step == full.global_step == 9
    assert second.progress[0]["step"] == pause_at + 1
    expected = {s: m["train_loss"] for s, m in full_hooks.metrics if "train_loss" in m and s > pause_at}
    got = {s: m["train_loss"] for s, m in second.metrics if "train_loss" in m}
    assert got.keys() == expected.keys() and all(got[s] == pytest.approx(expected[s], abs=1e-5) for s in got)
    a = load_file(full.adapter_dir / "adapter_model.safetensors")
    b = load_file(resumed.adapter_dir / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all((a[k] - b[k]).abs().max() < 1e-5 for k in a)


def test_resume_with_another_beta_is_refused(tiny_base, tmp_path):
    from ml.train.preference import run_preference

    paused = run_preference(spec(tiny_base, tmp_path), RecordingHooks(stop_at=(1, "pause")))
    with pytest.raises(TrainingError) as err:
        run_preference(spec(tiny_base, tmp_path, params={"beta": 0.5}, resume_from=paused.checkpoint))
    assert err.value.code == "checkpoint_invalid" and "beta" in err.value.message


def test_cancel_stops_and_saves_nothing(tiny_base, tmp_path):
    from ml.train.preference import run_preference

    result = run_preference(spec(tiny_base, tmp_path), RecordingHooks(stop_at=(2, "cancel")))
    assert result.status == "cancelled" and result.adapter_dir is None and not (tmp_path / "adapter").exists()


def test_dpo_from_an_sft_adapter_uses_it_as_reference_and_keeps_its_shape(tiny_base, tmp_path):
    from ml.train.preference import run_preference
    from ml.train.sft import RunSpec, run_training

    sft = run_training(RunSpec(base_model_path=tiny_base, train=chat_records(8),
                               params={"n_epochs": 2, "batch_size": 4, "learning_rate": 1e-2, "lora_r": 4,
                                       "lora_alpha": 8, "max_seq_length": 128},
                               run_dir=tmp_path / "sft-run", adapter_dir=tmp_path / "sft", device="cpu"))
    hooks = RecordingHooks()
    result = run_preference(spec(tiny_base, tmp_path, start_adapter=sft.adapter_dir), hooks)
    assert result.status == "succeeded"
    assert any("starting from the adapter sft" in m and "frozen copy" in m for _l, m in hooks.messages)
    first = next(m for _s, m in hooks.metrics if "train_loss" in m)
    assert first["train_reward_margin"] == pytest.approx(0.0, abs=1e-6)  # reference = the SFT policy at step 0
    config = json.loads((result.adapter_dir / "adapter_config.json").read_text())
    assert config["r"] == 4 and result.params.lora_r == 4  # the adapter keeps the SFT adapter's shape
    assert not (result.adapter_dir / "ref").exists()
    summary = json.loads((result.adapter_dir / "training_summary.json").read_text())
    assert summary["start_adapter"] == str(sft.adapter_dir)


def test_preference_scores_follow_dpo_implicit_rewards():
    from ml.train.preference import preference_scores

    scores = preference_scores([(-1.0, -3.0), (-2.0, -1.0)], [(-2.0, -2.0), (-2.0, -2.0)], beta=0.1)
    assert scores["reward_accuracy"] == 0.5 and scores["pairs"] == 2
    assert scores["reward_margin"] == pytest.approx(((0.1 + 0.1) + (0.0 - 0.1)) / 2)


def test_the_loss_chart_draws_reward_accuracy_of_preference_runs():
    from training.charts import loss_chart_png

    rows = [{"step": s, "train_loss": 0.7 - s / 20, "train_reward_accuracy": min(1.0, s / 4)} for s in range(1, 6)]
    rows.append({"step": 5, "valid_loss": 0.5, "valid_reward_accuracy": 1.0})
    png = loss_chart_png(rows, title="dpo")
    assert png.startswith(b"\x89PNG") and len(png) > 1000
