"""Blind A/B reviews: seeded balanced sides, hidden from reviewers, one vote per reviewer and pair."""

from __future__ import annotations

import pytest

from evaluation import services
from evaluation.models import EvaluationRun, EvaluationSample, ReviewPair
from jobs.models import JobStatus


@pytest.fixture
def done_run(db, make_team, make_user, make_version, tiny_base_model):  # noqa: F811 - shared fixtures
    from training.models import Adapter

    team = make_team("alpha")
    alice = make_user("alice", team, "member")
    version = make_version(team)
    adapter = Adapter.objects.create(name="a1", team=team, base_model=tiny_base_model, path="/nowhere")
    run = EvaluationRun.objects.create(name="r", team=team, created_by=alice, adapter=adapter,
                                       dataset_version=version, metric_names=["samples"],
                                       status=JobStatus.SUCCEEDED)
    EvaluationSample.objects.bulk_create([
        EvaluationSample(run=run, index=i, prompt=f"q{i}", reference=f"ref{i}", base_answer=f"BASE{i}",
                         adapter_answer=f"ADAPTER{i}") for i in range(10)])
    return team, alice, run


def _sides(review):
    return [p.adapter_side for p in review.pairs.order_by("order")]


def test_sides_are_balanced_and_reproducible_from_the_seed(done_run):
    team, alice, run = done_run
    one = services.review_create(user=alice, run=run, seed=7)
    two = services.review_create(user=alice, run=run, seed=7)
    assert _sides(one) == _sides(two)
    assert _sides(one).count("a") == 5
    assert [p.prompt for p in one.pairs.order_by("order")] == [p.prompt for p in two.pairs.order_by("order")]
    for pair in one.pairs.all():
        adapter_answer = pair.answer_a if pair.adapter_side == "a" else pair.answer_b
        assert adapter_answer.startswith("ADAPTER")
    assert services.review_create(user=alice, run=run, n_pairs=4, seed=1).pairs.count() == 4


def test_pairs_api_hides_the_adapter_side_until_closed(done_run, token_for, bearer):
    team, alice, run = done_run
    review = services.review_create(user=alice, run=run, seed=3)
    client = bearer(token_for(alice, team))
    body = client.get(f"/api/evaluation/reviews/{review.pk}/pairs").content.decode()
    assert "adapter_side" not in body and "ADAPTER0" in body
    results = client.get(f"/api/evaluation/reviews/{review.pk}/results").json()
    assert results["revealed"] is False and "adapter" not in results
    pair = review.pairs.get(order=0)
    adapter_choice = pair.adapter_side
    r = client.post(f"/api/evaluation/reviews/{review.pk}/pairs/{pair.pk}/vote", {"choice": adapter_choice},
                    content_type="application/json")
    assert r.status_code == 201
    assert client.post(f"/api/evaluation/reviews/{review.pk}/close").status_code == 200
    results = client.get(f"/api/evaluation/reviews/{review.pk}/results").json()
    assert results["revealed"] is True and results["adapter"]["wins"] == 1
    assert "adapter_side" in client.get(f"/api/evaluation/reviews/{review.pk}/votes.csv").content.decode()


def test_a_reviewer_votes_once_per_pair(done_run, token_for, bearer):
    team, alice, run = done_run
    review = services.review_create(user=alice, run=run, seed=3)
    pair = review.pairs.first()
    client = bearer(token_for(alice, team))
    url = f"/api/evaluation/reviews/{review.pk}/pairs/{pair.pk}/vote"
    assert client.post(url, {"choice": "a"}, content_type="application/json").status_code == 201
    r = client.post(url, {"choice": "b"}, content_type="application/json")
    assert r.status_code == 409 and r.json()["code"] == "already_voted"
    assert services.review_next_pair(user=alice, review=review) != pair


def test_non_members_cannot_see_or_vote(done_run, make_team, make_user, token_for, bearer):
    team, alice, run = done_run
    review = services.review_create(user=alice, run=run, seed=3)
    pair = review.pairs.first()
    other = make_team("beta")
    bob = make_user("bob", other, "member")
    client = bearer(token_for(bob, other))
    assert client.get(f"/api/evaluation/reviews/{review.pk}/pairs").status_code == 404
    r = client.post(f"/api/evaluation/reviews/{review.pk}/pairs/{pair.pk}/vote", {"choice": "a"},
                    content_type="application/json")
    assert r.status_code == 404
    from core.errors import NotFound

    with pytest.raises(NotFound):
        services.vote_cast(user=bob, pair=pair, choice="a")
    assert not ReviewPair.objects.filter(votes__reviewer=bob).exists()
