"""Admin pages: runs list/detail with samples, the blind voting page, results after closing."""

from __future__ import annotations

import pytest

from evaluation import services
from tests.evaluation.test_reviews import done_run  # noqa: F401 - shared fixture


@pytest.fixture
def logged_in(client, done_run):  # noqa: F811 - the imported fixture
    team, alice, run = done_run
    client.force_login(alice)
    return client, alice, run


def test_run_list_and_detail_show_samples_side_by_side(logged_in):
    client, alice, run = logged_in
    run.results = {"perplexity": {"base": 9.0, "adapter": 3.0, "tokens": 10, "baseline": "base"}}
    run.save(update_fields=["results"])
    assert "9 → 3" in client.get("/admin/evaluation/evaluationrun/").content.decode()
    page = client.get(f"/admin/evaluation/evaluationrun/{run.pk}/change/").content.decode()
    assert "BASE0" in page and "ADAPTER0" in page and "ref0" in page
    assert 'id="word-frequencies"' not in page


def test_run_detail_draws_the_word_frequency_comparison(logged_in):
    client, alice, run = logged_in
    run.results = {"word_frequencies": [{"word": "保修", "reference": 0.2, "base": 0.05, "adapter": 0.1},
                                        {"word": "two", "reference": 0.1, "base": 0.0, "adapter": 0.1}]}
    run.save(update_fields=["results"])
    page = client.get(f"/admin/evaluation/evaluationrun/{run.pk}/change/").content.decode()
    chart = page[page.index('id="word-frequencies"'):]
    chart = chart[:chart.index("</table>")]
    assert "保修" in chart and "20.0%" in chart and "5.0%" in chart
    # bars are proportional to the largest frequency on the chart
    assert 'style="width:100.0%"' in chart and 'style="width:25.0%"' in chart and 'style="width:0.0%"' in chart


def test_voting_page_shows_one_pair_without_the_side_and_records_the_vote(logged_in):
    client, alice, run = logged_in
    review = services.review_create(user=alice, run=run, n_pairs=2, seed=5)
    url = f"/admin/evaluation/review/{review.pk}/vote/"
    page = client.get(url).content.decode()
    first = review.pairs.get(order=0)
    assert first.answer_a in page and "adapter_side" not in page and "ADAPTER" in page
    client.post(url, {"pair": first.pk, "choice": "tie"})
    client.post(url, {"pair": review.pairs.get(order=1).pk, "choice": "a"})
    assert 'id="done"' in client.get(url).content.decode()
    services.review_close(user=alice, review=review)
    assert "Adapter win rate" in client.get(f"/admin/evaluation/review/{review.pk}/results/").content.decode()
    assert client.get(f"/admin/evaluation/review/{review.pk}/votes.csv").status_code == 200


def test_compare_action_lists_runs_of_one_dataset(logged_in):
    client, alice, run = logged_in
    r = client.post("/admin/evaluation/evaluationrun/", {"action": "compare_runs", "_selected_action": [run.pk]})
    assert r.status_code == 200 and 'id="compare"' in r.content.decode()
