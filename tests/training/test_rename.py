"""Renaming an adapter or a base model: through a service with an audit record, from every door; the
``ft:<base>:<team>:<suffix>:<id>`` ids that clients saved keep resolving, or the rename is refused."""

from __future__ import annotations

import pytest
from django.contrib.admin.models import LogEntry
from django.utils import timezone

from catalog import services as catalog
from catalog.models import BaseModel
from core.errors import Conflict, PermissionDenied
from jobs.models import JobStatus
from training import lifecycle
from training.models import Adapter, AdapterEvent, TrainingTask

pytestmark = pytest.mark.django_db


@pytest.fixture
def world(make_team, make_user, tiny_base_model, make_version, data_dir, token_for, bearer, django_user_model):
    team = make_team("alpha")
    root = django_user_model.objects.create_superuser("root", password="x")
    member = make_user("mia", team, "member")
    viewer = make_user("vic", team, "viewer")
    version = make_version(team)
    task = TrainingTask.objects.create(name="faq-task", team=team, created_by=member, base_model=tiny_base_model,
                                       train_version=version, suffix="faq", status=JobStatus.SUCCEEDED,
                                       started_at=timezone.now(), finished_at=timezone.now())
    adapter = Adapter.objects.create(name="faq-bot", model_name="faq", team=team, created_by=member,
                                     base_model=tiny_base_model, task=task, path=str(data_dir / "adapters" / "x"))
    ft_id = f"ft:tiny-llama:alpha:faq:{task.pk}"
    client = bearer(token_for(member, team))
    return {"root": root, "team": team, "member": member, "viewer": viewer, "task": task, "adapter": adapter, "ft_id": ft_id,
            "client": client, "version": version}


def _resolves(client, model_id: str) -> bool:
    response = client.get(f"/v1/models/{model_id}")
    assert response.status_code in (200, 404), response.content
    return response.status_code == 200


# ------------------------------------------------------------------------------------------------ base models

def test_a_base_model_that_a_task_trained_on_keeps_its_name(world, tiny_base_model):
    assert _resolves(world["client"], world["ft_id"])
    with pytest.raises(Conflict) as exc:
        catalog.base_model_rename(user=world["root"], model=tiny_base_model, name="tiny-renamed")
    assert exc.value.code == "model_in_use" and "ft:tiny-llama:" in exc.value.message
    assert BaseModel.objects.get(pk=tiny_base_model.pk).name == "tiny-llama"
    assert _resolves(world["client"], world["ft_id"])


def test_the_admin_refuses_that_rename_with_the_services_message(world, tiny_base_model, client):
    client.force_login(world["root"])
    url = f"/admin/catalog/basemodel/{tiny_base_model.pk}/change/"
    response = client.post(url, {"name": "tiny-renamed"}, follow=True)
    assert response.status_code == 200
    assert "cannot be renamed" in response.content.decode()
    assert BaseModel.objects.get(pk=tiny_base_model.pk).name == "tiny-llama"
    assert _resolves(world["client"], world["ft_id"])


def test_an_unused_team_model_is_renamed_with_an_audit_entry_and_a_rescan_does_not_duplicate_it(
        world, tiny_model_dir):
    team, member = world["team"], world["member"]
    model = BaseModel.objects.create(name="team-llm", kind="causal-lm", path=str(tiny_model_dir.resolve()),
                                     team=team)
    renamed = catalog.base_model_rename(user=member, model=model, name="team-llm-v2")
    assert renamed.name == "team-llm-v2" and renamed.team_id == team.pk
    entry = LogEntry.objects.get(object_id=str(model.pk), user=member)
    assert "team-llm" in entry.get_change_message() and "team-llm-v2" in entry.get_change_message()
    assert _resolves(world["client"], "team-llm-v2") and not _resolves(world["client"], "team-llm")
    # The folder is still the same model: a scan updates the renamed row instead of adding a second one.
    catalog.base_models_scan(user=member, include_defaults=False, paths=[tiny_model_dir.parent])
    assert BaseModel.objects.filter(path=str(tiny_model_dir.resolve())).exclude(name="tiny-llama").count() == 1


def test_base_model_rename_rules(world, tiny_model_dir):
    team = world["team"]
    model = BaseModel.objects.create(name="team-llm", kind="causal-lm", path="/nowhere/a", team=team)
    BaseModel.objects.create(name="taken", kind="causal-lm", path="/nowhere/b", team=team)
    with pytest.raises(Conflict) as exc:
        catalog.base_model_rename(user=world["member"], model=model, name="taken")
    assert exc.value.code == "name_taken"
    with pytest.raises(PermissionDenied):
        catalog.base_model_rename(user=world["viewer"], model=model, name="other")
    with pytest.raises(Exception, match="without spaces"):
        catalog.base_model_rename(user=world["member"], model=model, name="a:b")
    glob = BaseModel.objects.create(name="global-llm", kind="causal-lm", path="/nowhere/g")
    with pytest.raises(PermissionDenied):  # global models: superusers only
        catalog.base_model_rename(user=world["member"], model=glob, name="mine")


def test_the_admin_cannot_move_a_global_model_into_a_team(world, client):
    glob = BaseModel.objects.create(name="global-llm", kind="causal-lm", path="/nowhere/g")
    client.force_login(world["root"])
    response = client.post(f"/admin/catalog/basemodel/{glob.pk}/change/",
                           {"name": "global-llm", "team": world["team"].pk})
    assert response.status_code == 302
    assert BaseModel.objects.get(pk=glob.pk).team_id is None


# ------------------------------------------------------------------------------------------------ adapters

def test_adapter_rename_records_an_event_and_keeps_the_ft_id(world):
    adapter, member = world["adapter"], world["member"]
    renamed = lifecycle.adapter_rename(user=member, adapter=adapter, name="faq-bot-v2", model_name="support")
    assert (renamed.name, renamed.model_name) == ("faq-bot-v2", "support")
    event = AdapterEvent.objects.get(adapter=adapter, action=AdapterEvent.Action.RENAMED)
    assert event.actor == member
    assert event.data == {"name": {"from": "faq-bot", "to": "faq-bot-v2"}, "model_name": {"from": "faq",
                                                                                           "to": "support"}}
    assert _resolves(world["client"], world["ft_id"])


def test_adapter_rename_conflicts_are_409(world, tiny_base_model, data_dir):
    team, member, first = world["team"], world["member"], world["adapter"]
    Adapter.objects.filter(pk=first.pk).update(stage=Adapter.Stage.PRODUCTION, production_slot=True)
    second = Adapter.objects.create(name="other-bot", model_name="other", team=team, base_model=tiny_base_model,
                                    path=str(data_dir / "adapters" / "y"), stage=Adapter.Stage.PRODUCTION,
                                    production_slot=True)
    with pytest.raises(Conflict) as exc:
        lifecycle.adapter_rename(user=member, adapter=second, name="faq-bot")
    assert exc.value.code == "name_taken"
    with pytest.raises(Conflict) as exc:  # the one-production-per-name constraint, as a 409
        lifecycle.adapter_rename(user=member, adapter=second, model_name="faq")
    assert exc.value.code == "production_conflict" and exc.value.status == 409
    assert Adapter.objects.get(pk=second.pk).model_name == "other"
    with pytest.raises(PermissionDenied):
        lifecycle.adapter_rename(user=world["viewer"], adapter=second, name="x")
    assert not AdapterEvent.objects.filter(action=AdapterEvent.Action.RENAMED).exists()


def test_the_adapter_admin_renames_through_the_service_and_writes_nothing_else(world, client):
    adapter, member = world["adapter"], world["member"]
    client.force_login(member)
    url = f"/admin/training/adapter/{adapter.pk}/change/"
    assert client.get(url).status_code == 200
    # What a lifecycle service writes meanwhile must survive the form's save.
    Adapter.objects.filter(pk=adapter.pk).update(stage=Adapter.Stage.CANDIDATE, size_bytes=1234)
    response = client.post(url, {"name": "faq-bot-admin", "model_name": "faq"})
    assert response.status_code == 302, response.content
    row = Adapter.objects.get(pk=adapter.pk)
    assert (row.name, row.model_name, row.stage, row.size_bytes) == ("faq-bot-admin", "faq", "candidate", 1234)
    assert AdapterEvent.objects.filter(adapter=adapter, action="renamed", actor=member).exists()
    clash = Adapter.objects.create(name="clash", team=world["team"], base_model=adapter.base_model, path="/x")
    response = client.post(f"/admin/training/adapter/{clash.pk}/change/", {"name": "faq-bot-admin",
                                                                           "model_name": "clash"}, follow=True)
    assert "is named" in response.content.decode()
    assert Adapter.objects.get(pk=clash.pk).name == "clash"
