"""The page every job kind shares: what it opens with, the controls valid in the job's state, the parameters as
a readable table with the reason of each automatic value, and every event by level."""

from __future__ import annotations

import re

import pytest

from jobs import runtime
from jobs.models import JobStatus
from tests.training.conftest import make_version, tiny_base_model, tiny_model_dir  # noqa: F401 - fixtures
from training import services
from training.models import TrainingTask

pytestmark = pytest.mark.django_db


@pytest.fixture
def task_page(make_team, make_user, tiny_base_model, make_version, client):  # noqa: F811 - fixtures
    team = make_team("alpha")
    alice = make_user("alice", team, "member")
    task = services.training_task_create(user=alice, name="page", base_model=tiny_base_model,
                                         train_version=make_version(team), params={"n_epochs": 2})
    client.force_login(alice)
    return task, client


def visible_buttons(html: str) -> set[str]:
    return {m.group(1) for m in re.finditer(r'<button class="button" id="btn-(\w+)"[^>]*?data-statuses="[^"]*"(?! hidden)>',
                                            html)}


def test_the_page_opens_with_progress_then_readable_parameters(task_page):
    task, client = task_page
    html = client.get(f"/admin/training/trainingtask/{task.pk}/change/").content.decode()
    assert html.index('id="live-progress"') < html.index("job-params") < html.index("Run details")
    table = html[html.index('class="job-params"'):html.index("</table>", html.index('class="job-params"'))]
    assert re.search(r"<th[^>]*>n_epochs</th><td>2</td><td>given</td>", table)
    reason = task.auto_explanation["learning_rate"]
    assert "learning_rate" in table and reason.split(" ")[0] in table
    assert "Estimated memory" in html  # the headline beside the bar


def test_only_the_actions_valid_in_the_state_are_shown(task_page):
    task, client = task_page
    queued = client.get(f"/admin/training/trainingtask/{task.pk}/change/").content.decode()
    assert visible_buttons(queued) == {"cancel", "pause", "clone"}
    TrainingTask.objects.filter(pk=task.pk).update(status=JobStatus.SUCCEEDED)
    done = client.get(f"/admin/training/trainingtask/{task.pk}/change/").content.decode()
    assert visible_buttons(done) == {"clone"}
    TrainingTask.objects.filter(pk=task.pk).update(status=JobStatus.FAILED)
    failed = client.get(f"/admin/training/trainingtask/{task.pk}/change/").content.decode()
    assert visible_buttons(failed) == {"retry", "clone"}


def test_every_event_is_listed_by_level_a_page_at_a_time(task_page):
    task, client = task_page
    for i in range(120):
        runtime.add_event(task, f"line {i}")
    runtime.add_event(task, "disk nearly full", level="warn")
    page = client.get(f"/admin/training/trainingtask/{task.pk}/events/").content.decode()
    assert "disk nearly full" in page and "line 119" in page and "page 1 of 2" in page
    warnings = client.get(f"/admin/training/trainingtask/{task.pk}/events/?level=warn").content.decode()
    assert "disk nearly full" in warnings and "line 1" not in warnings
    older = client.get(f"/admin/training/trainingtask/{task.pk}/events/?page=2").content.decode()
    assert "line 0<" in older
