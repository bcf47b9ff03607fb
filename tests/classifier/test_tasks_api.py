"""Classifier tasks and predictions through the services and /api/classifier/: rules, visibility, the real
job machinery (claimed and run in-process here; the slow test uses a real worker)."""

from __future__ import annotations

import pytest

from classifier import predict, services
from classifier.models import ClassifierTask
from core.errors import ApplicationError
from jobs import runtime
from jobs.models import JobStatus
from training.models import Adapter

pytestmark = pytest.mark.django_db


@pytest.fixture
def setup(make_team, make_user, tiny_encoder, make_cls_version, token_for, bearer):
    team = make_team("alpha")
    alice = make_user("alice", team, "member")
    version = make_cls_version(team)
    return team, alice, version, bearer(token_for(alice, team))


def create(user, version, model, **kwargs):
    return services.classifier_task_create(user=user, name=kwargs.pop("name", "questions"), base_model=model,
                                           train_version=version, **kwargs)


def run_in_process(task) -> ClassifierTask:
    """The worker's path without the process: atomic claim, then the registered kind's child body."""
    token = runtime.claim(task)
    assert token
    assert runtime.run_child("classifier", task.pk, token) == 0
    task.refresh_from_db()
    return task


def test_create_queues_a_task_with_the_label_map_and_an_event(setup, tiny_encoder):
    team, alice, version, _ = setup
    task = create(alice, version, tiny_encoder, params={"n_epochs": 2, "batch_size": 8})
    assert task.status == JobStatus.QUEUED and task.queued_at
    assert task.label_map == {"0": "chat", "1": "data", "2": "other"}
    assert task.resolved_params["lora_r"] == 8 and task.total_steps > 0
    assert task.events.filter(message__startswith="Created").exists()
    assert runtime.kind_of(task).name == "classifier"


def test_bad_params_are_a_400_naming_the_field(setup, tiny_encoder):
    _team, _alice, version, client = setup
    r = client.post("/api/classifier/tasks", {"base_model": "tiny-bert", "train_version": version.pk,
                                              "params": {"lora_r": 0}}, content_type="application/json")
    assert r.status_code == 400
    assert r.json()["param"] == "lora_r" and r.json()["code"] == "invalid_parameter"
    assert not ClassifierTask.objects.exists()


def test_a_chat_dataset_or_a_causal_lm_is_refused(setup, tiny_encoder, make_version):
    team, alice, _version, _ = setup
    chat = make_version(team, name="faq")
    with pytest.raises(ApplicationError) as err:
        create(alice, chat, tiny_encoder)
    assert err.value.param == "train_version" and err.value.code == "invalid_dataset"
    tiny_encoder.kind = "causal-lm"
    tiny_encoder.save()
    with pytest.raises(ApplicationError) as err:
        create(alice, _version, tiny_encoder)
    assert err.value.code == "wrong_model_kind"


def test_cancel_of_a_queued_task_through_the_api(setup, tiny_encoder):
    _team, alice, version, client = setup
    task = create(alice, version, tiny_encoder)
    r = client.post(f"/api/classifier/tasks/{task.pk}/cancel")
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    assert client.post(f"/api/classifier/tasks/{task.pk}/cancel").status_code == 409


def test_cancel_requested_while_running_stops_the_run(setup, tiny_encoder, fast_params):
    _team, alice, version, _ = setup
    task = create(alice, version, tiny_encoder, params=fast_params)
    token = runtime.claim(task)
    ClassifierTask.objects.filter(pk=task.pk).update(cancel_requested=True)
    assert runtime.run_child("classifier", task.pk, token) == 0
    task.refresh_from_db()
    assert task.status == JobStatus.CANCELLED and task.adapter_id is None


def test_a_run_registers_a_classifier_adapter_that_predicts_through_the_api(setup, tiny_encoder, fast_params,
                                                                           settings):
    team, alice, version, client = setup
    task = run_in_process(create(alice, version, tiny_encoder, params=fast_params))
    assert task.status == JobStatus.SUCCEEDED, task.error_message
    adapter = task.adapter
    assert adapter.kind == Adapter.Kind.CLASSIFIER and adapter.name == "questions"
    assert adapter.label_map == {"0": "chat", "1": "data", "2": "other"}
    assert adapter.metrics["classifier_task_id"] == task.pk and "macro_f1" in adapter.metrics
    assert task.report["confusion_matrix"] and task.metrics["best_epoch"] >= 1
    assert 0 < task.trainable_parameters < task.total_parameters
    assert task.events.filter(type="metrics").count() == 2  # one per epoch

    detail = client.get(f"/api/classifier/tasks/{task.pk}").json()
    assert detail["adapter_id"] == adapter.pk and detail["status"] == "succeeded"
    events = client.get(f"/api/classifier/tasks/{task.pk}/events").json()
    assert any(e["message"].startswith("Epoch 2/2") for e in events["items"])

    predict.clear_cache()
    one = client.post(f"/api/classifier/{adapter.pk}/predict", {"text": "hello how are you"},
                      content_type="application/json")
    assert one.status_code == 200, one.content
    body = one.json()
    assert len(body["predictions"]) == 1
    assert set(body["predictions"][0]["probabilities"]) == {"chat", "data", "other"}
    batch = client.post(f"/api/classifier/{adapter.name}/predict", {"texts": ["hello how are you", "sql query"]},
                        content_type="application/json").json()
    assert batch["predictions"][0]["label"] == body["predictions"][0]["label"]
    assert len(predict.cached_keys()) == 1  # loaded once, reused

    # bad inputs are clear 4xx errors
    settings.CLASSIFIER_MAX_BATCH = 2
    r = client.post(f"/api/classifier/{adapter.pk}/predict", {"texts": ["a", "b", "c"]},
                    content_type="application/json")
    assert r.status_code == 400 and r.json()["code"] == "batch_too_large"
    r = client.post(f"/api/classifier/{adapter.pk}/predict", {"text": "  "}, content_type="application/json")
    assert r.status_code == 400 and r.json()["code"] == "empty_text"
    r = client.post(f"/api/classifier/{adapter.pk}/predict", {}, content_type="application/json")
    assert r.status_code == 400
    r = client.post("/api/classifier/999999/predict", {"text": "hi"}, content_type="application/json")
    assert r.status_code == 404


def test_another_team_cannot_predict_with_the_adapter(setup, tiny_encoder, make_team, make_user, token_for, bearer):
    team, alice, _version, _ = setup
    adapter = Adapter.objects.create(name="questions", team=team, kind=Adapter.Kind.CLASSIFIER,
                                     base_model=tiny_encoder, path="/nonexistent", label_map={"0": "a", "1": "b"})
    beta = make_team("beta")
    bob = make_user("bob", beta, "admin")
    r = bearer(token_for(bob, beta)).post(f"/api/classifier/{adapter.pk}/predict", {"text": "hi"},
                                          content_type="application/json")
    assert r.status_code == 404
    with pytest.raises(ApplicationError) as err:
        services.classifier_predict(user=bob, adapter=adapter.pk, texts=["hi"])
    assert err.value.status == 404


def test_a_causal_lm_adapter_is_not_a_classifier(setup, tiny_encoder):
    team, alice, _version, client = setup
    adapter = Adapter.objects.create(name="chatty", team=team, kind=Adapter.Kind.CAUSAL_LM, base_model=tiny_encoder,
                                     path="/nonexistent")
    r = client.post(f"/api/classifier/{adapter.pk}/predict", {"text": "hi"}, content_type="application/json")
    assert r.status_code == 400 and r.json()["code"] == "wrong_adapter_kind"


def test_the_task_list_shows_only_the_callers_teams(setup, tiny_encoder, make_team, make_user, token_for, bearer):
    _team, alice, version, client = setup
    create(alice, version, tiny_encoder)
    beta = make_team("beta")
    bob = make_user("bob", beta, "admin")
    assert client.get("/api/classifier/tasks").json()["count"] == 1
    assert bearer(token_for(bob, beta)).get("/api/classifier/tasks").json()["count"] == 0


def test_an_evaluation_run_of_a_classifier_adapter_reports_its_classification_metrics(setup, tiny_encoder,
                                                                                     fast_params):
    from evaluation.services import evaluation_run_create

    team, alice, version, _client = setup
    task = run_in_process(create(alice, version, tiny_encoder, params=fast_params))
    run = evaluation_run_create(user=alice, adapter=task.adapter, dataset=version.pk, metrics=["perplexity"])
    assert run.metric_names == ["classifier"]  # a classifier is judged by its labels, whatever was asked
    assert runtime.run_foreground(run) == JobStatus.SUCCEEDED
    run.refresh_from_db()
    result = run.results["classifier"]
    # the same numbers as predicting every row through the serving path
    from datasets_app.services import iter_records

    rows = list(iter_records(version))
    preds = services.classifier_predict(user=alice, adapter=task.adapter, texts=[r["text"] for r in rows])
    correct = sum(p["label"] == r["label"] for p, r in zip(preds, rows, strict=True))
    assert result["accuracy"] == pytest.approx(correct / len(rows))
    assert sum(map(sum, result["confusion_matrix"])) == len(rows)
    assert set(result["per_class"]) == {"chat", "data", "other"}
