"""The training plan before anything is queued: ``training_task_plan`` and the start form's live endpoints (what auto
picks and why, the memory verdict, the first example rendered), team-scoped, with field-named errors, never a 500;
and the task page's tracking links."""

from __future__ import annotations

import json

import pytest

from core.errors import ApplicationError, NotFound
from jobs import runtime
from tests.training.tiny import chat_records
from training import services
from training.models import TrainingTask

pytestmark = pytest.mark.django_db

PLAN = "/admin/training/trainingtask/start/plan.json"
PREVIEW = "/admin/training/trainingtask/start/preview.json"
START = "/admin/training/trainingtask/start/"


@pytest.fixture
def world(make_team, make_user, tiny_base_model, make_version, client):
    team = make_team("alpha")
    alice = make_user("alice", team, "member")
    small = make_version(team, chat_records(16), name="small")
    large = make_version(team, chat_records(600), name="large")
    client.force_login(alice)
    return {"team": team, "alice": alice, "small": small, "large": large, "model": tiny_base_model,
            "client": client}


def form(world, version=None, **fields) -> dict:
    return {"team": world["team"].pk, "base_model": world["model"].pk,
            "train_version": (version or world["small"]).pk, "priority": 0, "params": "", **fields}


def test_the_plan_follows_the_dataset_size_and_gives_reasons(world):
    small = services.training_task_plan(user=world["alice"], base_model=world["model"], train_version=world["small"])
    large = services.training_task_plan(user=world["alice"], base_model=world["model"], train_version=world["large"])
    s, big = small.to_dict(), large.to_dict()
    assert s["examples"] == 16 and big["examples"] == 600
    assert s["fields"]["n_epochs"]["value"] > big["fields"]["n_epochs"]["value"]
    assert s["fields"]["batch_size"]["value"] < big["fields"]["batch_size"]["value"]
    assert s["fields"]["learning_rate"]["value"] > big["fields"]["learning_rate"]["value"]
    assert "16 examples" in s["fields"]["learning_rate"]["reason"]
    assert s["fields"]["seed"] == {"value": 42, "given": False, "reason": "default", "auto_value": 42,
                                   "auto_reason": "default"}
    assert s["memory"]["fits"] and s["memory"]["total_bytes"] > 0 and s["memory"]["verdict"].startswith("Fits")


def test_a_given_value_still_shows_what_auto_would_pick(world):
    plan = services.training_task_plan(user=world["alice"], base_model=world["model"], train_version=world["small"],
                                       params={"batch_size": 1, "n_epochs": 2}).to_dict()
    epochs = plan["fields"]["n_epochs"]
    assert epochs["value"] == 2 and epochs["given"] and epochs["reason"] == "given"
    auto = services.training_task_plan(user=world["alice"], base_model=world["model"], train_version=world["small"],
                                       params={"batch_size": 1}).to_dict()["fields"]["n_epochs"]
    assert epochs["auto_value"] == auto["value"] and epochs["auto_reason"] == auto["reason"]
    # the other given value is kept when working out this one's auto value: accumulation follows batch size 1
    assert plan["fields"]["gradient_accumulation_steps"]["value"] == 4


def test_what_the_plan_refuses_for_memory_create_refuses_too(world, settings):
    settings.TRAINING_MEMORY_LIMIT_BYTES = 10 * 1024 * 1024
    plan = services.training_task_plan(user=world["alice"], base_model=world["model"], train_version=world["small"])
    memory = plan.to_dict()["memory"]
    assert not memory["fits"] and "only 0.0 GiB is available" in memory["verdict"]
    with pytest.raises(ApplicationError) as err:
        services.training_task_create(user=world["alice"], name="x", base_model=world["model"],
                                      train_version=world["small"])
    assert err.value.code == "insufficient_memory" and err.value.message == plan.refusal
    assert not TrainingTask.objects.exists()


def test_the_plan_sees_only_the_users_teams(world, make_team, make_user, make_version):
    beta = make_team("beta")
    bob = make_user("bob", beta, "member")
    with pytest.raises(NotFound) as err:
        services.training_task_plan(user=bob, base_model=world["model"], train_version=world["small"].pk)
    assert err.value.param == "train_version"
    # Through the endpoint: alice's version is not among bob's choices, and nothing leaks.
    world["client"].force_login(bob)
    response = world["client"].post(PLAN, form(world, team=beta.pk))
    assert response.status_code == 400
    body = response.json()
    assert "train_version" in body["errors"] and "small" not in json.dumps(body)
    assert world["client"].get(f"{PREVIEW}?base_model={world['model'].pk}&train_version={world['small'].pk}"
                               ).status_code == 400


def test_the_endpoint_answers_the_form_as_it_stands(world):
    client = world["client"]
    small = client.post(PLAN, form(world)).json()
    large = client.post(PLAN, form(world, world["large"])).json()
    assert small["examples"] == 16 and large["examples"] == 600
    assert small["fields"]["n_epochs"]["auto_value"] != large["fields"]["n_epochs"]["auto_value"]
    given = client.post(PLAN, form(world, n_epochs="3", learning_rate="5e-4", target_modules="q_proj, v_proj",
                                   packing="false", params='{"max_steps": 7}')).json()
    assert given["params"] == {"n_epochs": 3, "learning_rate": 0.0005, "target_modules": ["q_proj", "v_proj"],
                               "packing": False, "max_steps": 7}
    assert given["total_steps"] == 7 and given["fields"]["target_modules"]["value"] == ["q_proj", "v_proj"]
    # fields left at their defaults are not sent: the task records them as auto, not as given
    assert client.post(PLAN, form(world, n_epochs="auto", seed="42", loss_on="assistant")).json()["params"] == {}
    assert client.post(PLAN, {"team": world["team"].pk, "priority": 0}).json() == {
        "incomplete": "Choose a base model and the training data: the values auto picks depend on them."}
    assert client.get(PLAN).status_code == 405


@pytest.mark.parametrize(("fields", "field"), [
    ({"lora_r": "0"}, "lora_r"),
    ({"learning_rate": "fast"}, "learning_rate"),
    ({"warmup_ratio": "0.9"}, "warmup_ratio"),
    ({"target_modules": "q-proj"}, "target_modules"),
    ({"params": "{not json"}, "params"),
    ({"params": "[1, 2]"}, "params"),
    ({"params": '{"n_epochs": 5}', "n_epochs": "3"}, "n_epochs"),
    ({"params": '{"no_such_knob": 1}'}, "params"),
    ({"method": "dpo"}, "train_version"),
])
def test_bad_values_are_refused_on_their_field(world, fields, field):
    response = world["client"].post(PLAN, form(world, **fields))
    assert response.status_code == 400, response.content
    body = response.json()
    assert field in body["errors"], body
    assert all(isinstance(m, str) and m for m in body["errors"][field])


def test_a_raw_key_that_has_a_field_counts_once(world):
    plan = world["client"].post(PLAN, form(world, params='{"n_epochs": 3}', n_epochs="3")).json()
    assert plan["params"] == {"n_epochs": 3}


def test_the_preview_marks_the_trained_tokens_of_the_first_example(world):
    response = world["client"].get(f"{PREVIEW}?base_model={world['model'].pk}&train_version={world['small'].pk}")
    assert response.status_code == 200
    preview = response.json()
    [example] = preview["examples"]
    trained = "".join(s["text"] for s in example["segments"] if s["trained"])
    answer = chat_records(1)[0]["messages"][1]["content"]
    assert answer in trained and example["trained_tokens"] > 0
    assert chat_records(1)[0]["messages"][0]["content"] not in trained
    assert world["client"].get(PREVIEW).json() == {}


def test_the_preview_renders_with_the_template_and_loss_the_form_chose(world):
    base = f"{PREVIEW}?base_model={world['model'].pk}&train_version={world['small'].pk}"
    question, answer = (m["content"] for m in chat_records(1)[0]["messages"])
    alpaca = world["client"].get(base + "&template=alpaca").json()
    [example] = alpaca["examples"]
    assert alpaca["chat_template"] == "alpaca (chosen)" and example["template"] == "alpaca"
    assert "### Response:" in example["text"]
    everything = world["client"].get(base + "&loss_on=all").json()["examples"][0]
    trained = "".join(s["text"] for s in everything["segments"] if s["trained"])
    assert question in trained and answer in trained
    bad = world["client"].get(base + "&template=jinja-of-my-own")
    assert bad.status_code == 400 and bad.json()["param"] == "template"


def test_the_form_queues_what_it_planned(world):
    client = world["client"]
    planned = client.post(PLAN, form(world, name="planned", n_epochs="2", lora_r="4")).json()
    response = client.post(START, {**form(world, name="planned", n_epochs="2", lora_r="4"), "_start": "1"})
    assert response.status_code == 302, response.content.decode()[:2000]
    task = TrainingTask.objects.get(name="planned")
    assert task.params == planned["params"] == {"n_epochs": 2, "lora_r": 4}
    assert task.total_steps == planned["total_steps"]
    assert task.estimated_memory_bytes == planned["memory"]["total_bytes"]


def test_without_javascript_show_the_plan_renders_it_and_queues_nothing(world):
    html = world["client"].post(START, {**form(world, n_epochs="2"), "_plan": "1"}).content.decode()
    assert not TrainingTask.objects.exists()
    row = html[html.index('data-param="n_epochs"'):]
    row = row[:row.index("</tr>")]
    assert 'class="given"' in html[html.index('data-param="n_epochs"') - 5:html.index('data-param="n_epochs"') + 40]
    assert "steps per epoch" in row  # the reason auto would give
    assert 'class="fits"' in html and "Fits: about" in html
    assert '<mark class="trained">' in html
    assert '"n_epochs": 2' in html.replace("&quot;", '"')


def test_a_refused_field_is_shown_on_the_form(world):
    response = world["client"].post(START, {**form(world, lora_r="0"), "_start": "1"})
    assert response.status_code == 200 and not TrainingTask.objects.exists()
    row = response.content.decode()
    row = row[row.index('data-param="lora_r"'):]
    assert "greater than or equal to 1" in row[:row.index("</tr>")]


def test_the_task_page_links_tensorboard_and_mlflow(world, settings):
    task = services.training_task_create(user=world["alice"], name="tracked", base_model=world["model"],
                                         train_version=world["small"])
    page = world["client"].get(f"/admin/training/trainingtask/{task.pk}/change/").content.decode()
    folder = runtime.run_dir(task)
    assert f"tensorboard --logdir {folder / 'tensorboard'}" in page and "written once the run starts" in page
    assert "not logged" in page and 'id="tensorboard-link"' not in page

    settings.TENSORBOARD_URL = "http://tb.internal:6006"
    (folder / "tensorboard").mkdir(parents=True)
    (folder / "mlflow_run.json").write_text(json.dumps({"run_id": "abc123", "experiment_id": "7",
                                                        "tracking_uri": "http://mlflow.internal:5000/"}))
    page = world["client"].get(f"/admin/training/trainingtask/{task.pk}/change/").content.decode()
    assert 'href="http://tb.internal:6006/"' in page and "written once" not in page
    assert 'href="http://mlflow.internal:5000/#/experiments/7/runs/abc123"' in page

    (folder / "mlflow_run.json").write_text(json.dumps({"run_id": "abc123", "experiment_id": "7",
                                                        "tracking_uri": "file:///srv/mlruns"}))
    page = world["client"].get(f"/admin/training/trainingtask/{task.pk}/change/").content.decode()
    assert 'id="mlflow-link"' not in page and "abc123" in page and "file:///srv/mlruns" in page
