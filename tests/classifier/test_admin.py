"""The classifier task admin: list columns, detail with report and confusion matrix, start form."""

from __future__ import annotations

import pytest
from django.urls import reverse

from classifier import services
from classifier.models import ClassifierTask

pytestmark = pytest.mark.django_db

REPORT = {"labels": ["chat", "data"], "confusion_matrix": [[3, 1], [0, 4]], "accuracy": 0.875, "macro_f1": 0.873,
          "per_class": {"chat": {"precision": 1.0, "recall": 0.75, "f1": 0.857, "support": 4},
                        "data": {"precision": 0.8, "recall": 1.0, "f1": 0.889, "support": 4}}}


@pytest.fixture
def admin_client_for(client, make_team, make_user, tiny_encoder, make_cls_version):
    team = make_team("alpha")
    alice = make_user("alice", team, "admin")
    version = make_cls_version(team)
    task = services.classifier_task_create(user=alice, name="intent", base_model=tiny_encoder,
                                           train_version=version)
    ClassifierTask.objects.filter(pk=task.pk).update(status="succeeded", report=REPORT,
                                                     metrics={"accuracy": 0.875, "macro_f1": 0.873})
    client.force_login(alice)
    return client, task


def test_list_shows_status_and_scores(admin_client_for):
    client, _task = admin_client_for
    html = client.get(reverse("admin:classifier_classifiertask_changelist")).content.decode()
    assert "intent" in html and 'data-status="succeeded"' in html and "0.873" in html
    assert "start-classifier" in html


def test_detail_has_per_class_table_confusion_matrix_and_start_form(admin_client_for):
    client, task = admin_client_for
    html = client.get(reverse("admin:classifier_classifiertask_change", args=[task.pk])).content.decode()
    assert "per-class" in html and "0.857" in html and "lp-confusion" in html
    png = client.get(reverse("admin:classifier_classifiertask_confusion", args=[task.pk]))
    assert png.status_code == 200 and png.content.startswith(b"\x89PNG")
    start = client.get(reverse("admin:classifier_classifiertask_start"))
    assert start.status_code == 200 and b"start-classifier-form" in start.content


def test_cancel_action_goes_through_the_service(admin_client_for, make_cls_version):
    client, task = admin_client_for
    ClassifierTask.objects.filter(pk=task.pk).update(status="queued")
    client.post(reverse("admin:classifier_classifiertask_control", args=[task.pk, "cancel"]))
    task.refresh_from_db()
    assert task.status == "cancelled"
