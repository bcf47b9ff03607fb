"""Look and feel shared by the admins: badges, progress bars, durations, team breadcrumbs, filters that leak nothing."""

from __future__ import annotations

import pytest

from catalog.models import BaseModel
from core.admin_ui import format_duration
from jobs.models import JobStatus
from tests.training.conftest import make_version  # noqa: F401 - shared fixture
from training.models import TrainingTask


@pytest.fixture
def world(db, make_team, make_user, make_version):  # noqa: F811 - the imported fixture
    from evaluation import services as evaluation
    from evaluation.models import EvaluationRun, EvaluationSample
    from training.models import Adapter

    alpha, beta = make_team("alpha"), make_team("beta")
    alice, bob = make_user("alice", alpha, "member"), make_user("bob", beta, "member")
    base = BaseModel.objects.create(name="base-lm", kind=BaseModel.Kind.CAUSAL_LM, path="/nowhere")
    version = make_version(alpha)
    task = TrainingTask.objects.create(name="t1", team=alpha, base_model=base, train_version=version,
                                       status=JobStatus.RUNNING, step=2, total_steps=8, eta_seconds=3700)
    adapter = Adapter.objects.create(name="a1", team=alpha, base_model=base, task=task, path="/nowhere")
    run = EvaluationRun.objects.create(name="e1", team=alpha, adapter=adapter, dataset_version=version,
                                       status=JobStatus.SUCCEEDED)
    EvaluationSample.objects.create(run=run, index=0, prompt="q", base_answer="b", adapter_answer="a")
    review = evaluation.review_create(user=alice, run=run, seed=1)
    return {"alpha": alpha, "alice": alice, "bob": bob, "task": task, "version": version, "run": run,
            "review": review}


@pytest.mark.parametrize(("seconds", "text"), [(None, "—"), (0, "0s"), (42.9, "42s"), (185, "3m05s"),
                                               (3700, "1h01m"), (90061, "1d01h")])
def test_durations_read_like_an_eta(seconds, text):
    assert format_duration(seconds) == text


def test_object_pages_have_a_breadcrumb_to_their_team(world, client):
    client.force_login(world["alice"])
    team_url = f'href="/admin/accounts/team/{world["alpha"].pk}/change/"'
    pages = [f"/admin/training/trainingtask/{world['task'].pk}/change/",
             f"/admin/datasets_app/datasetversion/{world['version'].pk}/change/",
             f"/admin/datasets_app/datasetversion/{world['version'].pk}/report/",
             f"/admin/datasets_app/dataset/{world['version'].dataset_id}/change/",
             f"/admin/evaluation/evaluationrun/{world['run'].pk}/change/",
             f"/admin/evaluation/review/{world['review'].pk}/change/",
             f"/admin/evaluation/review/{world['review'].pk}/vote/"]
    for url in pages:
        html = client.get(url).content.decode()
        crumbs = html[html.index('class="breadcrumbs"'):]
        crumbs = crumbs[:crumbs.index("</div>")]
        assert 'class="team-crumb"' in crumbs and team_url in crumbs, url


def test_list_views_show_status_badges_and_progress_bars(world, client):
    client.force_login(world["alice"])
    tasks = client.get("/admin/training/trainingtask/").content.decode()
    assert 'data-status="running"' in tasks and 'data-percent="25.0"' in tasks and "ETA 1h01m" in tasks
    runs = client.get("/admin/evaluation/evaluationrun/").content.decode()
    assert 'class="job-status" data-status="succeeded"' in runs and "job-progress" in runs
    reviews = client.get("/admin/evaluation/review/").content.decode()
    assert 'data-status="open"' in reviews
    versions = client.get("/admin/datasets_app/datasetversion/").content.decode()
    assert 'class="job-status" data-status="ready"' in versions


def test_list_filters_offer_only_the_users_teams(world, client):
    client.force_login(world["bob"])
    for url in ["/admin/training/trainingtask/", "/admin/classifier/classifiertask/",
                "/admin/evaluation/evaluationrun/", "/admin/evaluation/review/", "/admin/datasets_app/dataset/",
                "/admin/datasets_app/datasetversion/"]:
        html = client.get(url).content.decode()
        assert "alpha" not in html and "base-lm" not in html, url
    # A hand-made filter value for another team's id shows nothing of it either.
    html = client.get(f"/admin/training/trainingtask/?team={world['alpha'].pk}").content.decode()
    assert "t1" not in html.split('id="result_list"')[-1][:2000]


def test_task_controls_post_their_own_forms_not_the_change_form(world, client):
    client.force_login(world["alice"])
    html = client.get(f"/admin/training/trainingtask/{world['task'].pk}/change/").content.decode()
    change_form_end = html.index("</form>", html.index('id="trainingtask_form"'))
    assert 'id="btn-cancel" form="control-cancel"' in html
    assert html.index('<form id="control-cancel"') > change_form_end  # not nested: browsers drop nested forms
