"""The feedback loop: a closed blind A/B review becomes a preference dataset version with lineage, which trains a
DPO task on the adapter, which the ``preference`` metric then scores."""

from __future__ import annotations

import pytest
from django.core.management import call_command

from core.errors import ApplicationError, Conflict
from datasets_app.services import iter_records
from evaluation import services
from evaluation.models import EvaluationRun, EvaluationSample, Vote
from jobs import runtime
from jobs.models import JobStatus
from tests.training.tiny import chat_records

pytestmark = pytest.mark.django_db


@pytest.fixture
def reviewed(setup, make_user, make_version):
    """A closed review of 12 pairs: alice prefers the adapter 9 times, the baseline twice, one tie."""
    team, alice, _version, adapter = setup
    bob = make_user("bob", team, "member")
    version = make_version(team, chat_records(12), name="eval-set")
    run = EvaluationRun.objects.create(name="r", team=team, created_by=alice, adapter=adapter,
                                       dataset_version=version, metric_names=["samples"],
                                       status=JobStatus.SUCCEEDED)
    records = chat_records(12)
    EvaluationSample.objects.bulk_create([
        EvaluationSample(run=run, index=i, prompt=records[i]["messages"][0]["content"],
                         reference=records[i]["messages"][1]["content"], base_answer=f"I am not sure ({i}).",
                         adapter_answer=records[i]["messages"][1]["content"]) for i in range(12)])
    review = services.review_create(user=alice, run=run, seed=5)
    for pair in review.pairs.order_by("order"):
        baseline = "b" if pair.adapter_side == "a" else "a"
        choice = pair.adapter_side if pair.order < 9 else baseline if pair.order < 11 else "tie"
        services.vote_cast(user=alice, pair=pair, choice=choice)
    services.vote_cast(user=bob, pair=review.pairs.get(order=0), choice="tie")
    services.review_close(user=alice, review=review)
    return team, alice, run, review


def test_each_vote_becomes_a_pair_winner_chosen_and_ties_left_out(reviewed):
    _team, alice, run, review = reviewed
    version = services.review_preference_version_create(user=alice, review=review)
    assert version.is_ready and version.format == "preference" and version.row_count == 11
    rows = list(iter_records(version))
    lineage = version.report["lineage"]
    assert lineage["review"] == review.pk and lineage["run"] == run.pk
    assert lineage["models"]["adapter"]["name"] == "tiny-faq"
    assert lineage["models"]["baseline"]["name"] == "tiny-llama"  # the base model: the run had no other adapter
    assert lineage["counts"] == {"adapter_won": 9, "baseline_won": 2, "ties_left_out": 2}
    for row, origin in zip(rows, lineage["pairs"], strict=True):
        vote = Vote.objects.select_related("pair__sample").get(pk=origin["vote"])
        pair = vote.pair
        winner = pair.answer_a if vote.choice == "a" else pair.answer_b
        loser = pair.answer_b if vote.choice == "a" else pair.answer_a
        assert row["chosen"] == [{"role": "assistant", "content": winner}]
        assert row["rejected"] == [{"role": "assistant", "content": loser}]
        # the prompt is the evaluation set's own conversation up to the answer (not only the shown text)
        assert row["prompt"] == chat_records(12)[pair.sample.index]["messages"][:1]
        assert origin["chosen"] == ("adapter" if vote.choice == pair.adapter_side else "baseline")
        assert origin["reviewer"] == "alice" and origin["prompt"] == pair.prompt


def test_an_open_review_or_too_few_decided_votes_is_refused(setup, reviewed, make_version):
    _team, alice, run, review = reviewed
    open_review = services.review_create(user=alice, run=run, seed=1)
    with pytest.raises(Conflict) as err:
        services.review_preference_version_create(user=alice, review=open_review)
    assert "Close the review" in err.value.message
    for pair in open_review.pairs.order_by("order")[:3]:
        services.vote_cast(user=alice, pair=pair, choice="a")
    services.review_close(user=alice, review=open_review)
    with pytest.raises(Conflict) as err:
        services.review_preference_version_create(user=alice, review=open_review)
    assert err.value.code == "too_few_pairs" and "3 decided votes" in err.value.message


def test_the_version_trains_a_dpo_task_on_the_adapter_and_is_scored_by_the_preference_metric(reviewed):
    _team, alice, run, review = reviewed
    version, task = services.review_to_preferences(
        user=alice, review=review, train="adapter",
        params={"n_epochs": 2, "batch_size": 4, "learning_rate": 1e-3, "max_seq_length": 128, "save_steps": 1000})
    assert task.method == "dpo" and task.start_adapter == run.adapter and task.train_version == version
    assert task.metadata["review"] == str(review.pk)
    assert runtime.run_foreground(task) == JobStatus.SUCCEEDED, list(task.events.values_list("message", flat=True))
    trained = task.adapters.get()
    evaluation = services.evaluation_run_create(user=alice, adapter=trained, dataset=version.pk)
    assert evaluation.metric_names == ["preference"]  # the default on preference data
    assert runtime.run_foreground(evaluation) == JobStatus.SUCCEEDED, \
        list(evaluation.events.values_list("message", flat=True))
    evaluation.refresh_from_db()
    pref = evaluation.results["preference"]
    assert pref["pairs"] == 11 and pref["reference"] == "tiny-faq"  # the adapter it started from
    assert pref["reward_accuracy"] > 0.5 and pref["reward_margin"] > 0
    assert evaluation.metrics["reward_accuracy"] == pref["reward_accuracy"]


def test_chat_metrics_on_preference_data_are_refused(reviewed):
    _team, alice, run, review = reviewed
    version = services.review_preference_version_create(user=alice, review=review)
    with pytest.raises(ApplicationError) as err:
        services.evaluation_run_create(user=alice, adapter=run.adapter, dataset=version.pk, metrics=["perplexity"])
    assert err.value.param == "metrics" and "preference" in err.value.message


def test_api_route_builds_the_version_and_queues_dpo(reviewed, token_for, bearer):
    team, alice, _run, review = reviewed
    client = bearer(token_for(alice, team))
    r = client.post(f"/api/evaluation/reviews/{review.pk}/preferences", {"train": "adapter"},
                    content_type="application/json")
    assert r.status_code == 201, r.content
    body = r.json()
    assert body["pairs"] == 11 and body["lineage"]["review"] == review.pk and body["task_id"]
    assert client.post(f"/api/evaluation/reviews/{review.pk}/preferences", {"train": "nobody"},
                       content_type="application/json").status_code == 400


def test_command_and_admin_show_where_every_pair_came_from(reviewed, capsys):
    from django.contrib.admin.sites import site

    from datasets_app.models import DatasetVersion

    _team, _alice, _run, review = reviewed
    call_command("review_preferences", str(review.pk), "--user", "alice", "--name", "from-review")
    out = capsys.readouterr().out
    assert "from-review@1: 11 pairs" in out
    version = DatasetVersion.objects.get(dataset__name="from-review")
    html = site._registry[DatasetVersion].lineage(version)
    assert f"Review {review.pk}" in html and "tiny-faq" in html and html.count("<tr>") == 12  # header + 11 rows
