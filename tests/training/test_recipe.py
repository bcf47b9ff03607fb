"""The training recipe on a tiny Llama built in the test: masking, batching, training, stop/resume, output."""

from __future__ import annotations

import errno
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from ml.data import (  # noqa: E402
    IGNORE_INDEX,
    Collator,
    LengthGroupedSampler,
    encode_record,
    encode_records,
    install_template,
    pack_items,
    padding_fraction,
    to_item,
)
from ml.errors import TrainingError, classify  # noqa: E402
from ml.hparams import resolve_params  # noqa: E402
from ml.train import checkpoints as ckpt  # noqa: E402
from ml.train.sft import (  # noqa: E402
    VARLEN_ATTENTION,
    RunSpec,
    enable_flat_batches,
    run_training,
    token_loss_sums,
)
from tests.training.tiny import (  # noqa: E402
    RecordingHooks,
    build_model,
    build_tokenizer,
    chat_records,
    save_tiny_model,
    write_jsonl,
)

REPO = Path(__file__).resolve().parents[2]

FAST = {"n_epochs": 2, "batch_size": 4, "learning_rate": 1e-2, "lora_r": 8, "lora_alpha": 16, "lora_dropout": 0.0,
        "save_steps": 100, "max_seq_length": 128}


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("models") / "tiny-llama")


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


def trained_text(tokenizer, example) -> list[str]:
    """Decoded runs of consecutive trained tokens."""
    runs, current = [], []
    for tok, lab in zip(example.input_ids, example.labels, strict=True):
        if lab != IGNORE_INDEX:
            assert lab == tok
            current.append(tok)
        elif current:
            runs.append(tokenizer.decode(current))
            current = []
    if current:
        runs.append(tokenizer.decode(current))
    return runs


def spec_for(base: Path, tmp: Path, *, params=None, records=None, name="run", **kw) -> RunSpec:
    return RunSpec(base_model_path=base, train=records if records is not None else chat_records(16),
                   params=dict(FAST) if params is None else params, run_dir=tmp / name,
                   adapter_dir=tmp / name / "adapter", device="cpu", **kw)


# --- rendering and label masking ------------------------------------------------------------------------------


def test_only_assistant_tokens_are_trained(tokenizer):
    record = {"messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is the warranty period?"},
        {"role": "assistant", "content": "The warranty lasts two years."},
        {"role": "user", "content": "And the hotline?"},
        {"role": "assistant", "content": "Call 800-555-0199."},
    ]}
    ex = encode_record(tokenizer, record)
    assert tokenizer.decode(ex.input_ids) == tokenizer.apply_chat_template(record["messages"], tokenize=False)
    assert trained_text(tokenizer, ex) == ["The warranty lasts two years.<|im_end|>", "Call 800-555-0199.<|im_end|>"]


def test_assistant_turn_with_weight_zero_is_masked(tokenizer):
    record = {"messages": [
        {"role": "user", "content": "What is the warranty period?"},
        {"role": "assistant", "content": "Wrong answer.", "weight": 0},
        {"role": "user", "content": "Try again."},
        {"role": "assistant", "content": "Two years.", "weight": 1},
    ]}
    ex = encode_record(tokenizer, record)
    assert trained_text(tokenizer, ex) == ["Two years.<|im_end|>"]


def test_loss_on_all_trains_every_token(tokenizer):
    ex = encode_record(tokenizer, chat_records(1)[0], loss_on="all")
    assert ex.labels == ex.input_ids


def test_plain_text_records_train_every_token_and_end_with_eos(tokenizer):
    ex = encode_record(tokenizer, {"text": "Shipping is free."})
    assert ex.labels == ex.input_ids
    assert ex.input_ids[-1] == tokenizer.eos_token_id


def test_fallback_template_renders_and_masks_the_response():
    tok = build_tokenizer(with_chat_template=False)
    install_template(tok, "alpaca_zh")
    record = {"messages": [{"role": "user", "content": "保修期多久？"}, {"role": "assistant", "content": "兩年。"}]}
    ex = encode_record(tok, record)
    assert tok.decode(ex.input_ids) == "### 指令：\n保修期多久？\n\n### 回應：\n兩年。<|im_end|>\n\n"
    assert trained_text(tok, ex) == ["兩年。<|im_end|>"]


def test_truncation_is_reported_and_examples_without_targets_dropped(tokenizer):
    long_answer = {"messages": [{"role": "user", "content": "Hi"},
                                {"role": "assistant", "content": "word " * 200}]}
    long_prompt = {"messages": [{"role": "user", "content": "word " * 200},
                                {"role": "assistant", "content": "ok"}]}
    examples, report = encode_records(tokenizer, chat_records(3) + [long_answer, long_prompt], max_seq_length=64)
    assert report.truncated == 2
    assert report.dropped_no_target == 1  # the long prompt left no answer tokens
    assert report.examples == 4
    assert max(len(e) for e in examples) == 64


@pytest.mark.parametrize("bad", [{"messages": []}, {"messages": [{"role": "robot", "content": "x"}]},
                                 {"messages": [{"role": "assistant", "content": "x", "weight": 2}]}, {"prompt": "x"}])
def test_malformed_record_is_a_dataset_error(tokenizer, bad):
    with pytest.raises(TrainingError) as info:
        encode_records(tokenizer, chat_records(2) + [bad])
    assert info.value.code == "dataset_error"
    assert "record 3" in info.value.message


def test_jsonl_with_invalid_line_is_a_dataset_error(tokenizer, tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps(chat_records(1)[0]) + "\n{oops\n")
    with pytest.raises(TrainingError) as info:
        encode_records(tokenizer, path)
    assert info.value.code == "dataset_error" and "line 2" in info.value.message


# --- batching (issue 9) -----------------------------------------------------------------------------------------


def _padded_standard_loss(model, tokenizer, examples, width: int) -> float:
    return _padded_standard_loss_tensor(model, tokenizer, examples, width).item()


def _padded_standard_loss_tensor(model, tokenizer, examples, width: int):
    """transformers' own loss (shifted mean cross-entropy over the labels) on a batch padded to ``width``."""
    ids = torch.full((len(examples), width), tokenizer.pad_token_id)
    labels = torch.full((len(examples), width), IGNORE_INDEX)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, ex in enumerate(examples):
        n = len(ex)
        ids[i, :n] = torch.tensor(ex.input_ids)
        labels[i, :n] = torch.tensor(ex.labels)
        mask[i, :n] = 1
    return model(input_ids=ids, attention_mask=mask, labels=labels).loss


def _varied_records():
    records = chat_records(6)
    records[1]["messages"][0]["content"] += " Please answer in one short sentence, thanks a lot."
    records[4]["messages"][1]["content"] += " Shipping is free for orders above fifty dollars."
    return records


@pytest.mark.parametrize("direct", [True, False])
def test_padding_free_batch_loss_equals_padded_standard_loss(tokenizer, direct):
    model = build_model(tokenizer)
    examples, _ = encode_records(tokenizer, _varied_records())
    with torch.no_grad():
        standard = _padded_standard_loss(model, tokenizer, examples, width=128)
        batch = Collator(tokenizer.pad_token_id)([to_item(e) for e in examples])
        assert batch["input_ids"].shape[1] == max(len(e) for e in examples) < 128
        loss_sum, n, _ = token_loss_sums(model, batch, direct=direct, packed=False)
    assert n == sum(e.n_targets for e in examples)
    assert (loss_sum / n).item() == pytest.approx(standard, rel=1e-5)


def test_packed_rows_do_not_attend_across_examples(tokenizer):
    model = build_model(tokenizer)
    examples, _ = encode_records(tokenizer, _varied_records())
    rows = pack_items(examples, max_len=200)
    assert len(rows) < len(examples)  # several examples share a row
    with torch.no_grad():
        standard = _padded_standard_loss(model, tokenizer, examples, width=128)
        loss_sum, n, _ = token_loss_sums(model, Collator(tokenizer.pad_token_id)(rows), direct=True, packed=True)
    assert (loss_sum / n).item() == pytest.approx(standard, rel=1e-5)


def _grads(model) -> dict[str, torch.Tensor]:
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    return grads


def _assert_same_grads(fast: dict, standard: dict) -> None:
    assert fast.keys() == standard.keys() and fast
    scale = max(float(g.abs().max()) for g in standard.values())
    for name, g in standard.items():
        torch.testing.assert_close(fast[name], g, rtol=1e-4, atol=1e-5 * scale, msg=name)


def test_flat_collator_concatenates_examples_and_marks_their_boundaries(tokenizer):
    examples, _ = encode_records(tokenizer, _varied_records())
    items = [to_item(e) for e in examples[:3]]
    rows = pack_items(examples[3:], max_len=200)
    batch = Collator(tokenizer.pad_token_id, flat=True)(items + rows)
    lengths = [len(e) for e in examples[:3]]
    total = sum(len(e) for e in examples)
    assert batch["input_ids"].shape == batch["position_ids"].shape == batch["shift_labels"].shape == (1, total)
    bounds = batch["cu_seq_lens_q"].tolist()
    assert bounds[0] == 0 and bounds[-1] == total and len(bounds) == len(examples) + 1  # packed rows split apart
    assert bounds[1:4] == [sum(lengths[:k]) for k in range(1, 4)]
    pos = batch["position_ids"][0].tolist()
    assert [pos[b] for b in bounds[:-1]] == [0] * len(examples)
    assert int(batch["attention_mask"].sum()) == total  # every position is a real token


@pytest.mark.parametrize("direct", [True, False])
def test_flat_batch_loss_and_gradients_equal_padded_standard(tokenizer, direct):
    """Issue 9: a flat row with per-example attention computes what the padded batch's standard loss does."""
    model = build_model(tokenizer)
    model.set_attn_implementation("sdpa")
    examples, _ = encode_records(tokenizer, _varied_records())
    loss = _padded_standard_loss_tensor(model, tokenizer, examples, width=128)
    loss.backward()
    standard = _grads(model)

    enable_flat_batches(model)
    assert model.config._attn_implementation == VARLEN_ATTENTION
    batch = Collator(tokenizer.pad_token_id, flat=True)([to_item(e) for e in examples])
    loss_sum, n, _ = token_loss_sums(model, batch, direct=direct, packed=False)
    (loss_sum / n).backward()
    assert n == sum(e.n_targets for e in examples)
    assert (loss_sum / n).item() == pytest.approx(loss.item(), rel=1e-5)
    _assert_same_grads(_grads(model), standard)


def test_flat_batches_of_packed_rows_equal_padded_standard(tokenizer):
    model = build_model(tokenizer)
    model.set_attn_implementation("sdpa")
    examples, _ = encode_records(tokenizer, _varied_records())
    loss = _padded_standard_loss_tensor(model, tokenizer, examples, width=128)
    loss.backward()
    standard = _grads(model)

    enable_flat_batches(model)
    batch = Collator(tokenizer.pad_token_id, flat=True)(pack_items(examples, max_len=200))
    loss_sum, n, _ = token_loss_sums(model, batch, direct=True, packed=True)
    (loss_sum / n).backward()
    assert (loss_sum / n).item() == pytest.approx(loss.item(), rel=1e-5)
    _assert_same_grads(_grads(model), standard)


def test_varlen_attention_leaves_padded_batches_to_plain_sdpa(tokenizer):
    model = build_model(tokenizer)
    model.set_attn_implementation("sdpa")
    examples, _ = encode_records(tokenizer, _varied_records())
    batch = Collator(tokenizer.pad_token_id)([to_item(e) for e in examples])
    with torch.no_grad():
        before = token_loss_sums(model, batch, direct=True, packed=False)[0]
        enable_flat_batches(model)
        after = token_loss_sums(model, batch, direct=True, packed=False)[0]
    assert after.item() == pytest.approx(before.item(), rel=1e-6)


def test_cpu_runs_train_on_flat_batches(tiny_base, tmp_path):
    result = run_training(spec_for(tiny_base, tmp_path, params=dict(FAST, n_epochs=1)))
    assert result.device_info["flat_batches"] is True and result.device_info["direct_head"] is True


def test_flat_batches_take_trainers_seeded_order(tiny_base, tmp_path, monkeypatch):
    """The order TRL and LLaMA-Factory train in for the same seed: accelerate's permutation of (seed, epoch)."""
    from ml.train import sft as recipe

    seen: list[list[int]] = []
    real = recipe.RecipeTrainer.compute_loss

    def record(self, model, inputs, *args, **kwargs):
        seen.append(inputs["input_ids"][0].tolist())
        return real(self, model, inputs, *args, **kwargs)

    monkeypatch.setattr(recipe.RecipeTrainer, "compute_loss", record)
    records = chat_records(12)
    run_training(spec_for(tiny_base, tmp_path, params=dict(FAST, n_epochs=1, batch_size=1, seed=5), records=records))
    tokenizer = build_tokenizer()
    ids = [encode_record(tokenizer, r).input_ids for r in records]
    order = torch.randperm(len(records), generator=torch.Generator().manual_seed(5)).tolist()
    assert seen == [ids[i] for i in order]


def test_length_grouped_batches_are_replayable_and_cut_padding():
    lengths = [(i * 37) % 300 + 20 for i in range(200)]
    sampler = LengthGroupedSampler(lengths, batch_size=8, seed=3)
    sampler.set_epoch(1)
    first = list(sampler)
    again = LengthGroupedSampler(lengths, batch_size=8, seed=3)
    again.set_epoch(1)
    assert list(again) == first and sorted(first) == list(range(200))
    again.set_epoch(2)
    assert list(again) != first
    grouped = [first[k:k + 8] for k in range(0, 200, 8)]
    shuffled = [list(range(200))[k:k + 8] for k in range(0, 200, 8)]
    assert padding_fraction(lengths, grouped) < 0.1 < padding_fraction(lengths, shuffled)


# --- training ---------------------------------------------------------------------------------------------------


def test_short_run_learns_and_writes_a_plain_peft_adapter(tiny_base, tmp_path):
    hooks = RecordingHooks()
    result = run_training(spec_for(tiny_base, tmp_path, params=dict(FAST, n_epochs=6),
                                   validation=chat_records(4)), hooks)
    assert result.status == "succeeded"
    assert result.global_step == result.total_steps == 24
    losses = hooks.train_losses()
    first, last = sum(list(losses.values())[:3]) / 3, sum(list(losses.values())[-3:]) / 3
    assert last < first * 0.8
    assert hooks.started == [24]
    assert [p["step"] for p in hooks.progress] == list(range(1, 25))
    assert hooks.progress[-1]["tokens_seen"] == result.trained_tokens > 0
    assert {"train_loss", "learning_rate", "train_mean_token_accuracy"} <= set(hooks.metrics[0][1])
    assert "valid_loss" in result.metrics and "valid_mean_token_accuracy" in result.metrics

    adapter = result.adapter_dir
    for name in ("adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "training_summary.json"):
        assert (adapter / name).is_file(), name
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tiny_base.resolve())
    summary = json.loads((adapter / "training_summary.json").read_text())
    assert summary["params"]["n_epochs"] == 6 and summary["versions"]["peft"]


def test_adapter_loads_with_plain_peft_and_generates(tiny_base, tmp_path):
    from peft import PeftConfig, PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    result = run_training(spec_for(tiny_base, tmp_path, params=dict(FAST, n_epochs=1)))
    config = PeftConfig.from_pretrained(str(result.adapter_dir))
    base = AutoModelForCausalLM.from_pretrained(config.base_model_name_or_path)
    model = PeftModel.from_pretrained(base, str(result.adapter_dir))
    tok = AutoTokenizer.from_pretrained(str(result.adapter_dir))
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is the warranty period?"}],
                                     add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**prompt, max_new_tokens=5, do_sample=False)
    assert out.shape[1] == prompt["input_ids"].shape[1] + 5


def test_jsonl_paths_are_accepted(tiny_base, tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", chat_records(8))
    result = run_training(spec_for(tiny_base, tmp_path, records=train, params=dict(FAST, n_epochs=1)))
    assert result.status == "succeeded" and result.global_step == 2


def test_auto_params_resolve_from_the_data(tiny_base, tmp_path):
    result = run_training(spec_for(tiny_base, tmp_path, records=chat_records(8), params={"max_steps": 2}))
    assert result.params.auto["n_epochs"]
    assert result.params.quantization == "none"
    assert result.global_step == 2


def test_base_model_without_chat_template_trains_with_the_fallback_and_saves_it(tmp_path):
    base = save_tiny_model(tmp_path / "plain-llama", with_chat_template=False)
    result = run_training(spec_for(base, tmp_path, params=dict(FAST, n_epochs=1)))
    assert result.params.template == "alpaca"
    from transformers import AutoTokenizer

    saved = AutoTokenizer.from_pretrained(str(result.adapter_dir))
    text = saved.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    assert text == "### Instruction:\nHi\n\n### Response:\n"


def test_cancel_stops_within_one_step_and_saves_nothing(tiny_base, tmp_path):
    hooks = RecordingHooks(stop_at=(2, "cancel"))
    result = run_training(spec_for(tiny_base, tmp_path, params=dict(FAST, save_steps=1, n_epochs=4)), hooks)
    assert result.status == "cancelled"
    assert result.global_step == 2
    assert result.adapter_dir is None and not (tmp_path / "run" / "adapter").exists()
    assert [s for s, _ in hooks.checkpoints] == [1]  # step 2's scheduled save was skipped


def test_cancel_before_training_starts(tiny_base, tmp_path):
    result = run_training(spec_for(tiny_base, tmp_path), RecordingHooks(stop_at=(0, "cancel")))
    assert result.status == "cancelled" and result.global_step == 0


@pytest.fixture(scope="module")
def uninterrupted(tiny_base, tmp_path_factory) -> RecordingHooks:
    hooks = RecordingHooks()
    run_training(spec_for(tiny_base, tmp_path_factory.mktemp("full"), params=RESUME_PARAMS, records=chat_records(12)),
                 hooks)
    return hooks


# lora_dropout > 0 so that the RNG state matters; 3 optimizer steps per epoch; fp32 given, since the two runs
# compared are two runs (each would probe the CPU for "auto", and a probe under the suite's load may choose fp32)
RESUME_PARAMS = dict(FAST, n_epochs=3, batch_size=2, gradient_accumulation_steps=2, lora_dropout=0.1, save_steps=100,
                     bf16=False)


@pytest.mark.parametrize("pause_at", [5, 6], ids=["mid-epoch", "epoch-end"])
def test_pause_then_resume_continues_the_uninterrupted_curve(tiny_base, tmp_path, uninterrupted, pause_at):
    records = chat_records(12)
    first = RecordingHooks(stop_at=(pause_at, "pause"))
    paused = run_training(spec_for(tiny_base, tmp_path, params=RESUME_PARAMS, records=records), first)
    assert paused.status == "paused" and paused.global_step == pause_at
    assert paused.checkpoint == tmp_path / f"run/checkpoints/step-{pause_at}"
    assert ckpt.latest_good_checkpoint(tmp_path / "run") == paused.checkpoint

    second = RecordingHooks()
    resumed = run_training(spec_for(tiny_base, tmp_path, params=RESUME_PARAMS, records=records,
                                    resume_from=paused.checkpoint), second)
    assert resumed.status == "succeeded" and resumed.global_step == 9
    assert second.progress[0]["step"] == pause_at + 1
    assert resumed.trained_tokens == uninterrupted.progress[-1]["tokens_seen"]
    expected = {s: v for s, v in uninterrupted.train_losses().items() if s > pause_at}
    got = second.train_losses()
    assert sorted(got) == sorted(expected)
    for step, value in expected.items():
        assert got[step] == pytest.approx(value, rel=1e-4, abs=1e-5), step


def test_resume_with_other_parameters_is_refused(tiny_base, tmp_path):
    paused = run_training(spec_for(tiny_base, tmp_path), RecordingHooks(stop_at=(1, "pause")))
    with pytest.raises(TrainingError) as info:
        run_training(spec_for(tiny_base, tmp_path, params=dict(FAST, batch_size=2), resume_from=paused.checkpoint))
    assert info.value.code == "checkpoint_invalid" and "batch_size" in info.value.message


def test_latest_good_checkpoint_skips_damaged_and_incomplete_ones(tiny_base, tmp_path):
    hooks = RecordingHooks()
    run_training(spec_for(tiny_base, tmp_path, params=dict(FAST, save_steps=2), records=chat_records(12)), hooks)
    run_dir = tmp_path / "run"
    steps = [s for s, _ in ckpt.list_checkpoints(run_dir)]
    assert steps == [4, 6]  # keep_checkpoints=2
    assert ckpt.latest_good_checkpoint(run_dir).name == "step-6"

    weights = run_dir / "checkpoints/step-6/adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # cut short, like a full disk
    assert ckpt.latest_good_checkpoint(run_dir).name == "step-4"

    half = run_dir / "checkpoints/step-8"  # a folder without a manifest: never completed
    shutil.copytree(run_dir / "checkpoints/step-4", half)
    (half / ckpt.MANIFEST).unlink()
    assert ckpt.latest_good_checkpoint(run_dir).name == "step-4"

    with pytest.raises(TrainingError) as info:
        run_training(spec_for(tiny_base, tmp_path, resume_from=run_dir / "checkpoints/step-6"))
    assert info.value.code == "checkpoint_invalid"


def test_nf4_quantization_trains_on_cpu(tiny_base, tmp_path):
    pytest.importorskip("bitsandbytes")
    hooks = RecordingHooks()
    result = run_training(spec_for(tiny_base, tmp_path, params=dict(FAST, quantization="nf4", n_epochs=4)), hooks)
    assert result.status == "succeeded" and result.device_info["quantization"] == "nf4"
    losses = list(hooks.train_losses().values())
    assert losses[-1] < losses[0]
    assert (result.adapter_dir / "adapter_model.safetensors").is_file()


def test_nan_loss_is_a_classified_error(tiny_base, tmp_path, monkeypatch):
    import ml.train.sft as recipe

    real = recipe.token_loss_sums

    def poisoned(*args, **kwargs):
        loss_sum, n, correct = real(*args, **kwargs)
        return loss_sum * float("nan"), n, correct

    monkeypatch.setattr(recipe, "token_loss_sums", poisoned)
    with pytest.raises(TrainingError) as info:
        run_training(spec_for(tiny_base, tmp_path))
    assert info.value.code == "nan_loss"
    assert "learning rate" in info.value.message


def test_missing_base_model_is_classified(tmp_path):
    with pytest.raises(TrainingError) as info:
        run_training(spec_for(tmp_path / "nowhere", tmp_path))
    assert info.value.code == "model_missing"


def test_failures_are_classified():
    oom = classify(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert oom.code == "out_of_memory"
    assert "batch size" in oom.message and "nf4" in oom.message
    assert classify(MemoryError()).code == "out_of_memory"
    assert classify(OSError(errno.ENOSPC, "No space left on device")).code == "disk_full"
    torch_save_error = RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 64 vs 0: "
                                    "PytorchStreamWriter failed writing file data/0: file write failed")
    assert classify(torch_save_error).code == "disk_full"
    assert classify(ValueError("boom")).code == "internal"


def test_adapter_folder_is_written_atomically(tmp_path):
    class Broken:
        def save_pretrained(self, path, **kw):
            (Path(path) / "adapter_model.safetensors").write_bytes(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError):
        ckpt.save_adapter(Broken(), None, tmp_path / "adapters/a", {})
    assert list((tmp_path / "adapters").iterdir()) == []


def test_recipe_modules_do_not_import_django():
    code = ("import sys; import ml.train.sft, ml.hparams, ml.train.checkpoints, ml.data; "
            "assert not [m for m in sys.modules if m == 'django' or m.startswith('django.')], 'django imported'")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=120)


def test_resolved_steps_match_the_trainer(tiny_base, tmp_path):
    resolved = resolve_params(dict(FAST, gradient_accumulation_steps=2, batch_size=3), n_examples=13, device="cpu")
    result = run_training(spec_for(tiny_base, tmp_path, params=resolved, records=chat_records(13)))
    assert result.total_steps == resolved.total_steps == 2 * math.ceil(math.ceil(13 / 3) / 2)


# The bundled SmolLM2 is trained through the real worker in test_smollm2_worker.py (nf4 and none), and the
# learning-quality bar is test_learning_quality.py: both use the session-wide converted model, never var/.
