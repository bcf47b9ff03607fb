"""The bundled all-MiniLM-L6-v2 encoder trained on the shipped sample set through a real worker, then
predictions through the API; and the quality bar on a frozen split and seed."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.training.conftest import wait_for

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "samples" / "question_classification.jsonl"
# The frozen recipe of the quality bar: seed 42, val_ratio 0.2 (stratified), these hyperparameters.
QUALITY_PARAMS = {"n_epochs": 8, "batch_size": 8, "learning_rate": 3e-3, "seed": 42, "val_ratio": 0.2}

pytestmark = [pytest.mark.slow, pytest.mark.heavy]


@pytest.fixture
def minilm(db, minilm_dir):
    from training.model_scan import inspect_hf_dir
    from training.models import BaseModel

    info = inspect_hf_dir(minilm_dir)
    return BaseModel.objects.create(name="all-MiniLM-L6-v2", kind=BaseModel.Kind.ENCODER, path=str(minilm_dir),
                                    architecture=info.architecture, parameter_count=info.parameter_count,
                                    size_bytes=info.size_bytes, tokenizer_present=True, config=info.config)


@pytest.mark.django_db(transaction=True)
def test_minilm_trains_on_the_worker_and_predicts_through_the_api(make_team, make_user, token_for, bearer, minilm,
                                                                 make_cls_version, worker):
    import json

    from classifier import services
    from classifier.models import ClassifierTask

    team = make_team("alpha")
    alice = make_user("alice", team, "member")
    rows = [json.loads(line) for line in SAMPLE.read_text(encoding="utf-8").splitlines() if line.strip()]
    version = make_cls_version(team, rows)
    task = services.classifier_task_create(user=alice, name="questions", base_model=minilm, train_version=version,
                                           params={"n_epochs": 1, "batch_size": 16})
    worker.start()
    from training import jobs

    jobs.wake_worker()
    task = wait_for(lambda: (t := ClassifierTask.objects.get(pk=task.pk)).is_terminal and t, timeout=600,
                    message=f"classifier task to finish\n{worker.log()}")
    assert task.status == "succeeded", f"{task.error_code}: {task.error_message}\n{worker.log()[-3000:]}"
    assert task.adapter.kind == "classifier" and task.report["confusion_matrix"]
    client = bearer(token_for(alice, team))
    r = client.post(f"/api/classifier/{task.adapter_id}/predict",
                    {"texts": ["数据平台上怎么新建一张 Hive 表？", "你好呀！", "How do I bake bread?"]},
                    content_type="application/json")
    assert r.status_code == 200, r.content
    preds = r.json()["predictions"]
    assert len(preds) == 3 and all(set(p["probabilities"]) == {"data_platform", "general_chat", "unrelated"}
                                   for p in preds)


def test_minilm_reaches_the_quality_bar_on_the_frozen_split(minilm_dir, tmp_path):
    from classifier.recipe import ClassifierSpec, train_classifier

    result = train_classifier(ClassifierSpec(base_model_path=minilm_dir, train=SAMPLE, run_dir=tmp_path / "run",
                                             adapter_dir=tmp_path / "adapter", params=QUALITY_PARAMS))
    assert result.status == "succeeded"
    assert result.report["macro_f1"] >= 0.85, result.report
