"""The classifier recipe without Django: data split, metrics, training a tiny BERT, plain-PEFT loading."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ml import classifier_data as data
from ml.train import classifier as recipe
from ml.train.hooks import NullHooks
from tests.classifier.tiny import records


def test_stratified_split_is_reproducible_by_seed_and_keeps_each_class():
    rows = records(10, imbalance={"other": 5})
    a = data.stratified_split(rows, val_ratio=0.2, seed=7)
    b = data.stratified_split(list(rows), val_ratio=0.2, seed=7)
    c = data.stratified_split(rows, val_ratio=0.2, seed=8)
    assert a == b
    assert a[1] != c[1]
    train, val = a
    assert len(train) + len(val) == len(rows)
    per_class = {label: sum(r["label"] == label for r in val) for label in ("data", "chat", "other")}
    assert per_class == {"data": 2, "chat": 2, "other": 1}


def test_stratified_split_does_not_depend_on_how_the_classes_are_interleaved():
    rows = records(10)  # grouped by label
    interleaved = [rows[i + 10 * k] for i in range(10) for k in range(3)]
    key = lambda r: (r["label"], r["text"])  # noqa: E731
    _, val = data.stratified_split(rows, val_ratio=0.3, seed=1)
    _, val2 = data.stratified_split(interleaved, val_ratio=0.3, seed=1)
    assert sorted(map(key, val)) == sorted(map(key, val2))


def test_metrics_from_a_hand_made_confusion_matrix():
    labels = ["a", "b", "c"]
    # true a: 3 right, 1 as b; true b: 2 right; true c: 1 as a, 1 right, 1 as b
    y_true = [0, 0, 0, 0, 1, 1, 2, 2, 2]
    y_pred = [0, 0, 0, 1, 1, 1, 0, 2, 1]
    m = data.classification_metrics(y_true, y_pred, labels)
    assert m["confusion_matrix"] == [[3, 1, 0], [0, 2, 0], [1, 1, 1]]
    assert m["accuracy"] == pytest.approx(6 / 9)
    assert m["per_class"]["a"] == pytest.approx({"precision": 3 / 4, "recall": 3 / 4, "f1": 3 / 4, "support": 4})
    assert m["per_class"]["b"]["precision"] == pytest.approx(2 / 4)
    assert m["per_class"]["b"]["recall"] == pytest.approx(1.0)
    assert m["per_class"]["c"] == pytest.approx({"precision": 1.0, "recall": 1 / 3, "f1": 0.5, "support": 3})
    b_f1 = 2 * 0.5 * 1.0 / 1.5
    assert m["macro_f1"] == pytest.approx((0.75 + b_f1 + 0.5) / 3)


def test_a_class_never_predicted_scores_zero_not_an_error():
    m = data.classification_metrics([0, 1], [0, 0], ["a", "b"])
    assert m["per_class"]["b"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}


def test_class_weights_only_when_imbalanced_in_auto_mode():
    assert data.class_weights({0: 10, 1: 9}, 2, "auto") is None
    weights = data.class_weights({0: 30, 1: 10}, 2, "auto")
    assert weights == pytest.approx([40 / 60, 40 / 20])
    assert data.class_weights({0: 10, 1: 10}, 2, "balanced") == pytest.approx([1.0, 1.0])
    assert data.class_weights({0: 30, 1: 10}, 2, "none") is None


def test_label_map_round_trips_through_json():
    id2label = data.label_map_from(records(2))
    assert id2label == {0: "chat", 1: "data", 2: "other"}
    assert data.label_map_from_json(json.loads(json.dumps(data.label_map_to_json(id2label)))) == id2label


class StopAt(NullHooks):
    def __init__(self, step: int, what: str) -> None:
        self.step, self.what, self.now = step, what, 0
        self.checkpoints: list[Path] = []

    def on_progress(self, step, *args) -> None:
        self.now = step

    def on_checkpoint(self, step, path, metrics) -> None:
        self.checkpoints.append(path)

    def should_stop(self):
        return self.what if self.now >= self.step else None


def spec(tmp_path: Path, base: Path, **params) -> recipe.ClassifierSpec:
    return recipe.ClassifierSpec(base_model_path=base, train=records(12), run_dir=tmp_path / "run",
                                 adapter_dir=tmp_path / "adapter",
                                 params={"n_epochs": 2, "batch_size": 8, "learning_rate": 0.02, **params})


@pytest.fixture(scope="module")
def trained(tiny_bert_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("trained")
    return recipe.train_classifier(spec(tmp, tiny_bert_dir))


def test_training_writes_a_plain_peft_adapter_with_report_and_label_map(trained, tiny_bert_dir):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    assert trained.status == "succeeded" and trained.best_epoch in (1, 2)
    folder = trained.adapter_dir
    report = json.loads((folder / recipe.REPORT_FILE).read_text())
    assert set(report["per_class"]) == {"chat", "data", "other"}
    assert len(report["confusion_matrix"]) == 3 and report["best_epoch"] == trained.best_epoch
    assert 0 < report["trainable_parameters"] < report["total_parameters"]
    labels = json.loads((folder / data.LABEL_MAP_FILE).read_text())
    assert labels["id2label"] == {"0": "chat", "1": "data", "2": "other"}
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["task_type"] == "SEQ_CLS" and "classifier" in config["modules_to_save"]
    # plain PEFT, as a user outside the studio would load it
    id2label = {0: "chat", 1: "data", 2: "other"}
    base = AutoModelForSequenceClassification.from_pretrained(
        str(tiny_bert_dir), num_labels=3, id2label=id2label, label2id={v: k for k, v in id2label.items()})
    model = PeftModel.from_pretrained(base, str(folder)).eval()
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder))
    train, val = data.stratified_split(records(12), val_ratio=0.2, seed=42)
    preds = data.predict_texts(model, tok, id2label, [r["text"] for r in val])
    accuracy = sum(p["label"] == r["label"] for p, r in zip(preds, val, strict=True)) / len(val)
    # the reloaded head reproduces the best epoch's validation accuracy
    assert accuracy == pytest.approx(report["accuracy"])


def test_batch_predictions_equal_one_by_one(trained):
    model, tok, id2label = data.load_for_inference(trained.adapter_dir)
    texts = ["hello how are you", "hive table sql query failed in the data platform", "天 气", "movie"]
    batch = data.predict_texts(model, tok, id2label, texts)
    single = [data.predict_texts(model, tok, id2label, [t])[0] for t in texts]
    assert [p["label"] for p in batch] == [p["label"] for p in single]
    for a, b in zip(batch, single, strict=True):
        assert a["probabilities"] == pytest.approx(b["probabilities"], abs=1e-5)
        assert sum(a["probabilities"].values()) == pytest.approx(1.0)
        assert a["confidence"] == max(a["probabilities"].values())


def test_cancel_stops_within_a_step_and_saves_nothing(tmp_path, tiny_bert_dir):
    hooks = StopAt(2, "cancel")
    result = recipe.train_classifier(spec(tmp_path, tiny_bert_dir), hooks)
    assert result.status == "cancelled" and result.global_step == 2
    assert not (tmp_path / "adapter").exists()
    # neither a checkpoint nor the epoch's validation: the Trainer's end-of-epoch save is switched off too
    assert not list((tmp_path / "run" / "checkpoints").glob("step-*")) and not hooks.checkpoints
    assert result.history == []


def _weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "adapter_model.safetensors"))


@pytest.mark.parametrize("pause_at", [3, 4], ids=["inside-an-epoch", "at-an-epochs-end"])
def test_a_paused_and_resumed_run_ends_exactly_as_an_uninterrupted_one(pause_at, trained, tmp_path, tiny_bert_dir):
    import torch

    paused = recipe.train_classifier(spec(tmp_path, tiny_bert_dir), StopAt(pause_at, "pause"))
    from ml.train.checkpoints import checkpoint_problem

    assert paused.status == "paused" and paused.global_step == pause_at == int(paused.checkpoint.name[5:])
    assert checkpoint_problem(paused.checkpoint) is None
    resumed = recipe.train_classifier(
        recipe.ClassifierSpec(**{**vars(spec(tmp_path, tiny_bert_dir)), "resume_from": paused.checkpoint}))
    assert resumed.status == "succeeded" and resumed.best_epoch == trained.best_epoch
    assert resumed.global_step == resumed.total_steps == paused.total_steps == 8
    # every epoch's losses and validation scores, the adapter's report and its weights: the same run
    assert len(resumed.history) == len(trained.history) == 2
    for got, want in zip(resumed.history, trained.history, strict=True):
        assert got == pytest.approx(want, rel=1e-5)
    assert resumed.report["confusion_matrix"] == trained.report["confusion_matrix"]
    for key in ("accuracy", "macro_f1", "loss"):
        assert resumed.report[key] == pytest.approx(trained.report[key], rel=1e-5)
    got, want = _weights(resumed.adapter_dir), _weights(trained.adapter_dir)
    assert set(got) == set(want)
    for name, tensor in want.items():
        torch.testing.assert_close(got[name], tensor, rtol=1e-5, atol=1e-6)


def test_the_adapter_holds_the_best_epoch_and_early_stopping_ends_the_run(tmp_path, tiny_bert_dir):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    # A learning rate this high keeps macro-F1 level (one class predicted) while the validation loss is lowest after
    # epoch 2: the tie goes to that epoch, and two epochs without a better one end the run.
    result = recipe.train_classifier(spec(tmp_path, tiny_bert_dir, n_epochs=8, learning_rate=0.08,
                                          early_stopping_patience=2))
    f1 = [h["macro_f1"] for h in result.history]
    losses = [h["valid_loss"] for h in result.history]
    assert len(set(f1)) == 1 and min(losses) == losses[1] < losses[-1]
    assert result.best_epoch == 2 and result.report["stopped_early_after_epoch"] == 4 and len(f1) == 4
    assert result.global_step == result.total_steps == 4 * 4  # 30 examples, batch 8: 4 steps an epoch
    best = result.history[1]
    assert result.report["loss"] == pytest.approx(best["valid_loss"], rel=1e-5)
    assert result.metrics["macro_f1"] == pytest.approx(best["macro_f1"])
    # the best epoch's checkpoint outlived the rotation (two newest kept) until the end
    assert (tmp_path / "run" / "checkpoints" / "step-8").is_dir()

    id2label = {0: "chat", 1: "data", 2: "other"}
    base = AutoModelForSequenceClassification.from_pretrained(
        str(tiny_bert_dir), num_labels=3, id2label=id2label, label2id={v: k for k, v in id2label.items()})
    model = PeftModel.from_pretrained(base, str(result.adapter_dir)).eval()
    _, val = data.stratified_split(records(12), val_ratio=0.2, seed=42)
    preds = data.predict_texts(model, AutoTokenizer.from_pretrained(str(result.adapter_dir)), id2label,
                                    [r["text"] for r in val])
    accuracy = sum(p["label"] == r["label"] for p, r in zip(preds, val, strict=True)) / len(val)
    assert accuracy == pytest.approx(best["accuracy"])


def test_resuming_with_other_parameters_is_refused(tmp_path, tiny_bert_dir):
    from ml.errors import TrainingError

    paused = recipe.train_classifier(spec(tmp_path, tiny_bert_dir), StopAt(2, "pause"))
    changed = recipe.ClassifierSpec(**{**vars(spec(tmp_path, tiny_bert_dir, learning_rate=0.01)),
                                       "resume_from": paused.checkpoint})
    with pytest.raises(TrainingError) as err:
        recipe.train_classifier(changed)
    assert err.value.code == "checkpoint_invalid" and "learning_rate" in err.value.message


def test_unknown_validation_labels_fail_with_a_dataset_error(tmp_path, tiny_bert_dir):
    from ml.errors import TrainingError

    s = spec(tmp_path, tiny_bert_dir)
    s.validation = [{"text": "hello", "label": "greeting"}]
    with pytest.raises(TrainingError) as err:
        recipe.train_classifier(s)
    assert err.value.code == "dataset_error" and "greeting" in err.value.message


def test_the_recipe_modules_import_no_django_and_the_web_side_no_torch():
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    code = ("import sys; import ml.train.classifier, ml.classifier_data, ml.classifier_params, ml.train.common; "
            "assert not [m for m in sys.modules if m == 'django' or m.startswith('django.')], 'django imported'")
    subprocess.run([sys.executable, "-c", code], cwd=root, check=True, timeout=120)
    code = ("import sys; import ml.classifier_data, ml.classifier_params; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], cwd=root, check=True, timeout=120)
