"""The playground's feedback loop: a team's preference pairs become a preference dataset version (through the same
builder as a blind review's votes) with each pair's lineage, from the service, /api/, the command and the admin
action; ties and incomplete pairs are left out and counted; the version trains a DPO task."""

from __future__ import annotations

import shutil

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from accounts.visibility import Principal
from core.errors import ApplicationError, Conflict, NotFound
from datasets_app.models import DatasetVersion
from datasets_app.services import iter_records
from jobs import runtime
from jobs.models import JobStatus
from serving import services
from serving.models import PreferencePair
from training.models import Adapter

pytestmark = pytest.mark.django_db

QUESTIONS = ["What is the warranty period?", "How long is the return window?", "What is the hotline number?",
             "Is shipping free?", "Can I pay by invoice?", "Do you ship abroad?", "Where is my order?",
             "Can I change my address?", "How do I reset my password?", "Is there a student discount?",
             "Can I cancel my order?"]
GOOD = "Two years from the date of purchase, for every product we sell."
BAD = "I am not sure."


def conversation(question: str) -> list[dict]:
    return [{"role": "system", "content": "Be brief."}, {"role": "user", "content": question}]


@pytest.fixture
def world(make_team, make_user, tiny_base_model, tiny_adapters, data_dir):
    alpha, beta = make_team("alpha"), make_team("beta")
    faq = Adapter.objects.create(name="faq", model_name="faq", team=alpha, base_model=tiny_base_model,
                                 path=str(shutil.copytree(tiny_adapters[0], data_dir / "adapters" / "faq")))
    return {"alpha": alpha, "beta": beta, "faq": faq, "alice": make_user("alice", alpha, "member"),
            "viewer": make_user("vera", alpha, "viewer"), "bob": make_user("bob", beta, "member")}


@pytest.fixture
def pairs(world) -> list[PreferencePair]:
    """15 pairs of team alpha: 11 usable (the adapter's answer preferred), 1 tie, 1 cut off at max_tokens, 1 with
    an empty answer, 1 whose two models said the same thing."""
    alice = world["alice"]

    def pair(question, **kw):
        fields = {"chosen_model": "adapter:alpha/faq", "chosen": f"{GOOD} ({question})",
                  "rejected_model": "tiny-llama", "rejected": BAD, "chosen_finish_reason": "stop",
                  "rejected_finish_reason": "stop", **kw}
        return services.preference_pair_create(user=alice, messages=conversation(question),
                                               params={"temperature": 0, "max_tokens": 64}, **fields)

    made = [pair(q) for q in QUESTIONS]
    made.append(pair("Tie?", tie=True))
    made.append(pair("Cut off?", rejected_finish_reason="length"))
    made.append(pair("Empty?", rejected=""))
    made.append(pair("Same?", chosen="Same words.", rejected="Same words."))
    return made


def test_each_judged_pair_becomes_a_row_with_its_lineage_and_the_rest_is_counted(world, pairs):
    version = services.preference_pair_version_create(user=world["alice"], team="alpha")
    assert version.is_ready and version.format == "preference" and version.row_count == 11
    assert version.dataset.team == world["alpha"] and version.dataset.name == "playground-preferences"
    lineage = version.report["lineage"]
    assert lineage["source"] == "playground" and lineage["team"] == "alpha"
    assert lineage["counts"] == {"pairs": 15, "used": 11, "ties_left_out": 1, "incomplete_left_out": 2,
                                 "identical_left_out": 1}
    assert lineage["models"] == {"adapter:alpha/faq": {"chosen": 11, "rejected": 0},
                                 "tiny-llama": {"chosen": 0, "rejected": 11}}
    rows = list(iter_records(version))
    for row, origin, pair in zip(rows, lineage["pairs"], pairs[:11], strict=True):
        assert origin["pair"] == pair.pk and origin["chosen_by"] == "alice"
        assert (origin["chosen_model"], origin["rejected_model"]) == ("adapter:alpha/faq", "tiny-llama")
        assert origin["chosen_at"] == pair.created_at.isoformat() and origin["prompt"] == pair.prompt
        assert row["prompt"] == pair.messages  # the whole conversation, system prompt included
        assert row["chosen"] == [{"role": "assistant", "content": pair.chosen}]
        assert row["rejected"] == [{"role": "assistant", "content": BAD}]


def test_chosen_pairs_only_and_the_review_builders_refusal_below_ten(world, pairs):
    version = services.preference_pair_version_create(user=world["alice"], pairs=[p.pk for p in pairs[:11]],
                                                      name="picked")
    assert version.row_count == 11 and version.report["lineage"]["counts"]["pairs"] == 11
    with pytest.raises(Conflict) as err:
        services.preference_pair_version_create(user=world["alice"], pairs=[p.pk for p in pairs[8:]])
    assert err.value.code == "too_few_pairs" and err.value.param == "pairs"
    assert "3 of the 7 pairs of team 'alpha' are usable (1 tie(s), 2 incomplete, 1 with identical answers)" \
        in err.value.message and "at least 10" in err.value.message


def test_no_usable_pairs_is_refused_with_a_clear_message(world):
    with pytest.raises(Conflict) as err:
        services.preference_pair_version_create(user=world["alice"], team="alpha")
    assert "Team 'alpha' has no preference pairs" in err.value.message
    services.preference_pair_create(user=world["alice"], messages=conversation("Tie?"), tie=True,
                                    chosen_model="adapter:alpha/faq", chosen="A", rejected_model="tiny-llama",
                                    rejected="B")
    with pytest.raises(Conflict) as err:
        services.preference_pair_version_create(user=world["alice"], team="alpha")
    assert "0 of the 1 pairs" in err.value.message and "1 tie(s)" in err.value.message
    assert not DatasetVersion.objects.exists()


def test_pairs_are_team_scoped(world, pairs):
    bob = Principal(user=world["bob"], team=world["beta"])
    with pytest.raises(NotFound) as err:
        services.preference_pair_version_create(user=bob, pairs=[pairs[0].pk])
    assert err.value.param == "pairs" and str(pairs[0].pk) in err.value.message
    with pytest.raises(NotFound):
        services.preference_pair_version_create(user=bob, team="alpha")
    with pytest.raises(ApplicationError) as err:  # a viewer reads the pairs but builds nothing
        services.preference_pair_version_create(user=world["viewer"], team="alpha")
    assert err.value.status == 403


def test_a_bad_finish_reason_is_refused_by_name(world):
    with pytest.raises(ApplicationError) as err:
        services.preference_pair_create(user=world["alice"], messages=conversation("Hi?"), chosen="a", rejected="b",
                                        chosen_model="adapter:alpha/faq", rejected_model="tiny-llama",
                                        chosen_finish_reason="tired")
    assert err.value.param == "chosen_finish_reason"


def test_the_version_queues_dpo_on_the_judged_adapter_and_trains(world, pairs):
    version, task = services.preference_pair_dataset_create(
        user=world["alice"], team="alpha", train="adapter",
        params={"n_epochs": 2, "batch_size": 4, "learning_rate": 1e-3, "max_seq_length": 128, "save_steps": 1000})
    assert task.method == "dpo" and task.train_version == version and task.start_adapter == world["faq"]
    assert task.metadata == {"source": "playground", "trained": "adapter:alpha/faq"}
    assert runtime.run_foreground(task) == JobStatus.SUCCEEDED, list(task.events.values_list("message", flat=True))
    trained = task.adapters.get()
    assert trained.status == Adapter.Status.READY and trained.base_model == world["faq"].base_model


def test_train_names_a_model_or_the_one_adapter_judged(world, pairs, tiny_adapters, data_dir):
    version = services.preference_pair_version_create(user=world["alice"], team="alpha")
    fresh = services.preference_pair_task_create(user=world["alice"], version=version, train="tiny-llama")
    assert fresh.start_adapter is None and fresh.base_model.name == "tiny-llama"
    Adapter.objects.create(name="other", model_name="other", team=world["alpha"], base_model=world["faq"].base_model,
                           path=str(shutil.copytree(tiny_adapters[1], data_dir / "adapters" / "other")))
    services.preference_pair_create(user=world["alice"], messages=conversation("Which?"), chosen="x", rejected="y",
                                    chosen_model="adapter:alpha/other", rejected_model="adapter:alpha/faq")
    both = services.preference_pair_version_create(user=world["alice"], team="alpha", name="both")
    with pytest.raises(ApplicationError) as err:
        services.preference_pair_task_create(user=world["alice"], version=both, train="adapter")
    assert err.value.param == "train" and "adapter:alpha/faq, adapter:alpha/other" in err.value.message
    with pytest.raises(NotFound):
        services.preference_pair_task_create(user=world["alice"], version=both, train="adapter:beta/nothing")


def test_api_lists_pairs_and_builds_the_version_and_queues_dpo(world, pairs, token_for, bearer):
    client = bearer(token_for(world["alice"], world["alpha"]))
    listed = client.get("/api/serving/preference-pairs?limit=100").json()
    assert listed["count"] == 15 and {p["tie"] for p in listed["items"]} == {True, False}
    r = client.post("/api/serving/preference-pairs/preferences", {"train": "adapter"},
                    content_type="application/json")
    assert r.status_code == 201, r.content
    body = r.json()
    assert body["pairs"] == 11 and body["counts"]["ties_left_out"] == 1 and body["task_id"]
    assert body["lineage"]["pairs"][0]["pair"] == pairs[0].pk
    other = bearer(token_for(world["bob"], world["beta"]))
    r = other.post("/api/serving/preference-pairs/preferences", {}, content_type="application/json")
    assert r.status_code == 409 and "no preference pairs" in r.json()["detail"]
    r = other.post("/api/serving/preference-pairs/preferences", {"pairs": [pairs[0].pk]},
                   content_type="application/json")
    assert r.status_code == 404 and r.json()["param"] == "pairs"


def test_command_builds_the_version_and_says_what_was_left_out(world, pairs, capsys):
    call_command("playground_preferences", "--team", "alpha", "--user", "alice", "--name", "from-playground")
    out = capsys.readouterr().out
    assert "from-playground@1: 11 pairs" in out and '"ties_left_out": 1' in out
    with pytest.raises(CommandError, match="has no preference pairs"):
        call_command("playground_preferences", "--team", "beta", "--user", "bob")
    with pytest.raises(CommandError, match="--pairs must be comma-separated ids"):
        call_command("playground_preferences", "--team", "alpha", "--pairs", "1,x")


def test_admin_action_builds_the_version_whose_page_shows_every_pairs_origin(world, pairs, client):
    client.force_login(world["alice"])
    r = client.post("/admin/serving/preferencepair/", {"action": "build_preferences_and_train",
                                                        "_selected_action": [p.pk for p in pairs]}, follow=True)
    text = r.content.decode()
    assert "11 of 15 pairs (1 ties, 2 incomplete, 1 identical left out)" in text and "DPO task" in text
    version = DatasetVersion.objects.get(dataset__name="playground-preferences")
    page = client.get(f"/admin/datasets_app/datasetversion/{version.pk}/change/").content.decode()
    assert "Chat-playground pairs of team alpha: 11 of 15 pairs used" in page
    for pair in pairs[:11]:
        assert f'/admin/serving/preferencepair/{pair.pk}/change/' in page
    r = client.post("/admin/serving/preferencepair/", {"action": "build_preferences",
                                                        "_selected_action": [pairs[11].pk]}, follow=True)
    assert "0 of the 1 pairs of team &#x27;alpha&#x27; are usable" in r.content.decode()
