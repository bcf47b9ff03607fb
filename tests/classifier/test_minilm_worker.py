"""The bundled all-MiniLM-L6-v2 encoder trained on the shipped sample set through a real worker, then
predictions through the API; and the quality bar on a frozen split and seed."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.training.conftest import wait_for

ROOT = Path(__file__).resolve().parents[2]
# The frozen split of the quality bar: 240 training and 60 held-out questions (stratified by label and
# language when the sample set was written), trained with the default hyperparameters and seed 42.
TRAIN = ROOT / "samples" / "question_classification_train.jsonl"
HELD_OUT = ROOT / "samples" / "question_classification_val.jsonl"
QUALITY_PARAMS = {"seed": 42}

pytestmark = [pytest.mark.slow, pytest.mark.heavy]


@pytest.fixture
def minilm(db, minilm_dir):
    from catalog.model_scan import inspect_hf_dir
    from catalog.models import BaseModel

    info = inspect_hf_dir(minilm_dir)
    return BaseModel.objects.create(name="all-MiniLM-L6-v2", kind=BaseModel.Kind.ENCODER, path=str(minilm_dir),
                                    architecture=info.architecture, parameter_count=info.parameter_count,
                                    size_bytes=info.size_bytes, tokenizer_present=True, config=info.config)


def _rows(path: Path) -> list[dict]:
    import json

    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.mark.django_db(transaction=True)
def test_minilm_reaches_the_quality_bar_through_the_worker_and_predicts(make_team, make_user, token_for, bearer,
                                                                      minilm, make_cls_version, worker):
    from classifier import services
    from classifier.models import ClassifierTask

    team = make_team("alpha")
    alice = make_user("alice", team, "member")
    train = make_cls_version(team, _rows(TRAIN), name="questions")
    held_out = make_cls_version(team, _rows(HELD_OUT), name="questions-held-out")
    task = services.classifier_task_create(user=alice, name="questions", base_model=minilm, train_version=train,
                                           validation_version=held_out, params=QUALITY_PARAMS)
    worker.start()
    from jobs import runtime
    runtime.wake_worker()
    task = wait_for(lambda: (t := ClassifierTask.objects.get(pk=task.pk)).is_terminal and t, timeout=600,
                    message=f"classifier task to finish\n{worker.log()}")
    assert task.status == "succeeded", f"{task.error_code}: {task.error_message}\n{worker.log()[-3000:]}"
    report = task.report
    assert task.adapter.kind == "classifier" and report["confusion_matrix"]
    assert report["macro_f1"] >= 0.85, report
    assert sum(map(sum, report["confusion_matrix"])) == 60
    # Trainable parameters (LoRA + head) are reported next to the full count.
    trainable, total = task.trainable_parameters, task.total_parameters
    assert 0 < trainable < total / 10, (trainable, total)

    client = bearer(token_for(alice, team))
    r = client.post(f"/api/classifier/{task.adapter_id}/predict",
                    {"texts": ["数据平台上的 Hive 表怎么加一个分区？", "你好呀，今天开心吗？", "How do I bake bread?"]},
                    content_type="application/json")
    assert r.status_code == 200, r.content
    preds = r.json()["predictions"]
    assert all(set(p["probabilities"]) == {"data_platform", "general_chat", "unrelated"} for p in preds)
    assert [p["label"] for p in preds] == ["data_platform", "general_chat", "unrelated"], preds
