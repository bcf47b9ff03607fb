"""Evaluation runs through the services, the shared job machinery (foreground) and /api/evaluation/runs."""

from __future__ import annotations

import math

import pytest

from evaluation import services
from evaluation.models import EvaluationRun

pytestmark = pytest.mark.django_db(transaction=True)


def _run(setup, **kwargs) -> EvaluationRun:
    from jobs import runtime
    team, alice, version, adapter = setup
    run = services.evaluation_run_create(user=alice, adapter=adapter.name, dataset=version.pk,
                                         generation={"max_new_tokens": 6, "n_samples": 3}, **kwargs)
    assert runtime.run_foreground(run) == "succeeded", run.events.all()
    run.refresh_from_db()
    return run


def test_run_lowers_perplexity_and_stores_side_by_side_samples(setup):
    run = _run(setup)
    ppl = run.results["perplexity"]
    assert ppl["adapter"] < ppl["base"] and ppl["relative_change"] < 0 and ppl["tokens"] > 0
    assert math.exp(ppl["adapter_loss"]) == pytest.approx(ppl["adapter"])
    assert run.samples.count() == 3 and run.progress_percent == 100
    sample = run.samples.first()
    assert sample.reference and sample.adapter_answer is not None and "adapter" in sample.metrics
    assert set(run.results["style"]) == {"reference", "base", "adapter"}
    assert set(run.results["overlap"]["adapter"]) >= {"exact_match", "char_f1", "rouge_l"}
    assert run.metrics["ppl_base"] == ppl["base"]
    from jobs import runtime
    assert (runtime.run_dir(run) / "results.json").is_file() and (runtime.run_dir(run) / "samples.jsonl").is_file()


def test_run_perplexity_equals_an_independent_computation(setup):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from datasets_app.services import iter_records
    from evaluation import metrics as m

    team, alice, version, adapter = setup
    run = _run(setup, metrics=["perplexity"])
    tok = AutoTokenizer.from_pretrained(adapter.path)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(adapter.base_model.path), adapter.path)
    examples, _ = m.encode_for_loss(tok, list(iter_records(version)), max_seq_length=128)
    with torch.no_grad():
        losses = [model(input_ids=torch.tensor([ex.input_ids]), labels=torch.tensor([ex.labels])).loss.item()
                  * ex.n_targets for ex in examples]
    expected = math.exp(sum(losses) / sum(ex.n_targets for ex in examples))
    assert run.results["perplexity"]["adapter"] == pytest.approx(expected, rel=1e-4)
    assert run.samples.count() == 0


def test_unknown_metric_is_refused(setup):
    from core.errors import ApplicationError

    team, alice, version, adapter = setup
    with pytest.raises(ApplicationError) as exc:
        services.evaluation_run_create(user=alice, adapter=adapter.pk, dataset=version.pk, metrics=["bleu"])
    assert exc.value.param == "metrics"


def test_api_create_list_detail_and_team_isolation(setup, make_team, make_user, token_for, bearer):
    team, alice, version, adapter = setup
    client = bearer(token_for(alice, team))
    r = client.post("/api/evaluation/runs", {"adapter": adapter.name, "dataset": str(version.pk),
                                         "metrics": ["ppl", "samples"]}, content_type="application/json")
    assert r.status_code == 201, r.content
    run_id = r.json()["id"]
    assert r.json()["metrics"] == ["perplexity", "samples"] and r.json()["status"] == "queued"
    assert client.get("/api/evaluation/runs").json()["count"] == 1
    assert client.get(f"/api/evaluation/runs/{run_id}").status_code == 200

    other_team = make_team("beta")
    bob = make_user("bob", other_team, "member")
    outsider = bearer(token_for(bob, other_team))
    assert outsider.get(f"/api/evaluation/runs/{run_id}").status_code == 404
    assert outsider.get(f"/api/evaluation/runs/{run_id}/samples").status_code == 404
    assert outsider.get("/api/evaluation/runs").json()["count"] == 0
    r = outsider.post("/api/evaluation/runs", {"adapter": adapter.name}, content_type="application/json")
    assert r.status_code == 404
    assert client.post(f"/api/evaluation/runs/{run_id}/cancel").json()["status"] == "cancelled"


def test_evaluate_command_prints_json_results(setup):
    import io
    import json

    from django.core.management import call_command

    team, alice, version, adapter = setup
    out = io.StringIO()
    call_command("evaluate", adapter.name, "--dataset", str(version.pk), "--metrics", "ppl", "--foreground",
                 "--json", "--user", "alice", stdout=out, stderr=io.StringIO())
    result = json.loads(out.getvalue())
    assert result["status"] == "succeeded"
    assert result["perplexity"]["adapter"] < result["perplexity"]["base"]


def test_training_task_asking_for_an_evaluation_gets_one_queued_on_success(setup, tiny_base_model):
    from core.errors import ApplicationError
    from jobs import runtime
    from training.services import training_task_clone, training_task_create

    team, alice, version, _adapter = setup
    params = {"n_epochs": 1, "batch_size": 4, "lora_r": 4, "save_steps": 1000}
    with pytest.raises(ApplicationError) as err:
        training_task_create(user=alice, name="t", base_model=tiny_base_model.pk, train_version=version.pk,
                             params=params, evaluate=True, evaluation_metrics=["ppl", "bleu"])
    assert err.value.param == "evaluation_metrics" and "bleu" in err.value.message
    with pytest.raises(ApplicationError) as err:
        training_task_create(user=alice, name="t", base_model=tiny_base_model.pk, train_version=version.pk,
                             params=params, evaluation_metrics=["ppl"])
    assert err.value.param == "evaluation_metrics"

    task = training_task_create(user=alice, name="with-eval", base_model=tiny_base_model.pk,
                                train_version=version.pk, params=params, evaluate=True,
                                evaluation_metrics="ppl,samples")
    assert task.evaluate_on_success and task.evaluation_metrics == ["perplexity", "samples"]
    assert runtime.run_foreground(task) == "succeeded"
    adapter = task.adapters.get()
    run = EvaluationRun.objects.get(adapter=adapter)
    assert run.status == "queued" and run.metric_names == ["perplexity", "samples"]
    assert run.dataset_version == version and run.created_by == alice and run.team == team
    assert task.events.filter(message__startswith=f"Evaluation run {run.pk} queued").exists()
    # a clone asks for the same evaluation; a task without the flag gets none
    assert training_task_clone(user=alice, task=task).evaluation_metrics == ["perplexity", "samples"]
    plain = training_task_create(user=alice, name="no-eval", base_model=tiny_base_model.pk,
                                 train_version=version.pk, params=params)
    assert runtime.run_foreground(plain) == "succeeded"
    assert not EvaluationRun.objects.filter(adapter__task=plain).exists()


def test_api_creates_a_training_task_with_an_evaluation_request(setup, tiny_base_model, token_for, bearer):
    team, alice, version, _adapter = setup
    client = bearer(token_for(alice, team))
    body = {"base_model": tiny_base_model.name, "train_version": version.pk, "params": {"n_epochs": 1},
            "evaluate": True, "evaluation_metrics": ["perplexity"]}
    r = client.post("/api/training/tasks", body, content_type="application/json")
    assert r.status_code == 201, r.content
    assert r.json()["evaluate_on_success"] is True and r.json()["evaluation_metrics"] == ["perplexity"]
    r = client.post("/api/training/tasks", {**body, "evaluation_metrics": ["nope"]}, content_type="application/json")
    assert r.status_code == 400 and r.json()["param"] == "evaluation_metrics"
