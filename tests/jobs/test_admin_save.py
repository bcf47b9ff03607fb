"""The admin's save of a job row the worker is writing: only what a person edits (name, priority) is written,
with an UPDATE of those columns; what the worker wrote between loading the form and posting it survives."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from jobs.models import JobStatus
from tests.training.conftest import make_version, tiny_base_model, tiny_model_dir  # noqa: F401 - fixtures
from training.models import TrainingTask

pytestmark = pytest.mark.django_db


def _post_data(response) -> dict:
    """The change form as the browser would post it: the main form's values and every inline's forms."""
    form = response.context["adminform"].form
    data = {}
    for name in form.fields:
        value = form[name].value()
        if value is not None:
            data[name] = value
    for inline in response.context["inline_admin_formsets"]:
        formset = inline.formset
        for name in formset.management_form.fields:
            data[f"{formset.prefix}-{name}"] = formset.management_form[name].value()
        for sub in formset.forms:
            for name in sub.fields:
                value = sub[name].value()
                if value is not None:
                    data[sub.add_prefix(name)] = value
    return data


@pytest.fixture
def running(make_team, make_user, tiny_base_model, make_version):  # noqa: F811 - fixtures
    team = make_team("alpha")
    member = make_user("mia", team, "member")
    started = timezone.now() - timedelta(minutes=5)
    task = TrainingTask.objects.create(name="long-run", team=team, created_by=member, base_model=tiny_base_model,
                                       train_version=make_version(team), status=JobStatus.RUNNING, step=3,
                                       total_steps=100, started_at=started, heartbeat_at=started, priority=0)
    return task, member


def test_a_priority_change_keeps_what_the_worker_wrote_meanwhile(running, client):
    task, member = running
    client.force_login(member)
    url = f"/admin/training/trainingtask/{task.pk}/change/"
    page = client.get(url)
    assert page.status_code == 200
    data = _post_data(page)
    assert set(data) >= {"name", "priority"}

    # The worker reports progress while the form is open.
    beat = timezone.now()
    TrainingTask.objects.filter(pk=task.pk).update(step=42, heartbeat_at=beat, tokens_seen=12345,
                                                   metrics={"train_loss": 1.5}, status=JobStatus.RUNNING)
    data["priority"] = 7
    response = client.post(url, data)
    assert response.status_code == 302, response.content.decode()[:2000]

    row = TrainingTask.objects.get(pk=task.pk)
    assert row.priority == 7
    assert (row.step, row.heartbeat_at, row.tokens_seen, row.metrics, row.status) == (
        42, beat, 12345, {"train_loss": 1.5}, JobStatus.RUNNING)
    event = row.events.order_by("-id").first()
    assert "priority" in event.message and "7" in event.message and "mia" in event.message


def test_fields_the_worker_owns_cannot_be_posted(running, client):
    task, member = running
    client.force_login(member)
    url = f"/admin/training/trainingtask/{task.pk}/change/"
    data = _post_data(client.get(url))
    data.update(step=999, status=JobStatus.SUCCEEDED, name="renamed-run")
    assert client.post(url, data).status_code == 302
    row = TrainingTask.objects.get(pk=task.pk)
    assert (row.name, row.step, row.status) == ("renamed-run", 3, JobStatus.RUNNING)


def test_an_invalid_priority_is_refused_and_nothing_changes(running, client):
    task, member = running
    client.force_login(member)
    url = f"/admin/training/trainingtask/{task.pk}/change/"
    data = _post_data(client.get(url))
    data["priority"] = 1000
    client.post(url, data)
    assert TrainingTask.objects.get(pk=task.pk).priority == 0
