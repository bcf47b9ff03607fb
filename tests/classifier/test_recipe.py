"""The classifier recipe without Django: data split, metrics, training a tiny BERT, plain-PEFT loading."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from classifier import recipe
from ml.train.hooks import NullHooks
from tests.classifier.tiny import records


def test_stratified_split_is_reproducible_by_seed_and_keeps_each_class():
    rows = records(10, imbalance={"other": 5})
    a = recipe.stratified_split(rows, val_ratio=0.2, seed=7)
    b = recipe.stratified_split(list(rows), val_ratio=0.2, seed=7)
    c = recipe.stratified_split(rows, val_ratio=0.2, seed=8)
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
    _, val = recipe.stratified_split(rows, val_ratio=0.3, seed=1)
    _, val2 = recipe.stratified_split(interleaved, val_ratio=0.3, seed=1)
    assert sorted(map(key, val)) == sorted(map(key, val2))


def test_metrics_from_a_hand_made_confusion_matrix():
    labels = ["a", "b", "c"]
    # true a: 3 right, 1 as b; true b: 2 right; true c: 1 as a, 1 right, 1 as b
    y_true = [0, 0, 0, 0, 1, 1, 2, 2, 2]
    y_pred = [0, 0, 0, 1, 1, 1, 0, 2, 1]
    m = recipe.classification_metrics(y_true, y_pred, labels)
    assert m["confusion_matrix"] == [[3, 1, 0], [0, 2, 0], [1, 1, 1]]
    assert m["accuracy"] == pytest.approx(6 / 9)
    assert m["per_class"]["a"] == pytest.approx({"precision": 3 / 4, "recall": 3 / 4, "f1": 3 / 4, "support": 4})
    assert m["per_class"]["b"]["precision"] == pytest.approx(2 / 4)
    assert m["per_class"]["b"]["recall"] == pytest.approx(1.0)
    assert m["per_class"]["c"] == pytest.approx({"precision": 1.0, "recall": 1 / 3, "f1": 0.5, "support": 3})
    b_f1 = 2 * 0.5 * 1.0 / 1.5
    assert m["macro_f1"] == pytest.approx((0.75 + b_f1 + 0.5) / 3)


def test_a_class_never_predicted_scores_zero_not_an_error():
    m = recipe.classification_metrics([0, 1], [0, 0], ["a", "b"])
    assert m["per_class"]["b"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}


def test_class_weights_only_when_imbalanced_in_auto_mode():
    assert recipe.class_weights({0: 10, 1: 9}, 2, "auto") is None
    weights = recipe.class_weights({0: 30, 1: 10}, 2, "auto")
    assert weights == pytest.approx([40 / 60, 40 / 20])
    assert recipe.class_weights({0: 10, 1: 10}, 2, "balanced") == pytest.approx([1.0, 1.0])
    assert recipe.class_weights({0: 30, 1: 10}, 2, "none") is None


def test_label_map_round_trips_through_json():
    id2label = recipe.label_map_from(records(2))
    assert id2label == {0: "chat", 1: "data", 2: "other"}
    assert recipe.label_map_from_json(json.loads(json.dumps(recipe.label_map_to_json(id2label)))) == id2label


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
    labels = json.loads((folder / recipe.LABEL_MAP_FILE).read_text())
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
    train, val = recipe.stratified_split(records(12), val_ratio=0.2, seed=42)
    preds = recipe.predict_texts(model, tok, id2label, [r["text"] for r in val])
    accuracy = sum(p["label"] == r["label"] for p, r in zip(preds, val, strict=True)) / len(val)
    # the reloaded head reproduces the best epoch's validation accuracy
    assert accuracy == pytest.approx(report["accuracy"])


def test_batch_predictions_equal_one_by_one(trained):
    model, tok, id2label = recipe.load_for_inference(trained.adapter_dir)
    texts = ["hello how are you", "hive table sql query failed in the data platform", "天 气", "movie"]
    batch = recipe.predict_texts(model, tok, id2label, texts)
    single = [recipe.predict_texts(model, tok, id2label, [t])[0] for t in texts]
    assert [p["label"] for p in batch] == [p["label"] for p in single]
    for a, b in zip(batch, single, strict=True):
        assert a["probabilities"] == pytest.approx(b["probabilities"], abs=1e-5)
        assert sum(a["probabilities"].values()) == pytest.approx(1.0)
        assert a["confidence"] == max(a["probabilities"].values())


def test_cancel_stops_without_an_adapter(tmp_path, tiny_bert_dir):
    hooks = StopAt(2, "cancel")
    result = recipe.train_classifier(spec(tmp_path, tiny_bert_dir), hooks)
    assert result.status == "cancelled" and result.global_step == 2
    assert not (tmp_path / "adapter").exists()


def test_pause_saves_a_checkpoint_and_resume_finishes_the_schedule(tmp_path, tiny_bert_dir):
    from ml.train.checkpoints import checkpoint_problem

    paused = recipe.train_classifier(spec(tmp_path, tiny_bert_dir), StopAt(3, "pause"))
    assert paused.status == "paused" and paused.global_step == 3
    assert checkpoint_problem(paused.checkpoint) is None
    resumed = recipe.train_classifier(
        recipe.ClassifierSpec(**{**vars(spec(tmp_path, tiny_bert_dir)), "resume_from": paused.checkpoint}))
    assert resumed.status == "succeeded"
    assert resumed.global_step == resumed.total_steps == paused.total_steps
    assert [h["epoch"] for h in resumed.history] == [1, 2]


def test_unknown_validation_labels_fail_with_a_dataset_error(tmp_path, tiny_bert_dir):
    from ml.errors import TrainingError

    s = spec(tmp_path, tiny_bert_dir)
    s.validation = [{"text": "hello", "label": "greeting"}]
    with pytest.raises(TrainingError) as err:
        recipe.train_classifier(s)
    assert err.value.code == "dataset_error" and "greeting" in err.value.message
