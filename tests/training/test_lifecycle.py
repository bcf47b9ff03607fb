"""Adapter lifecycle: promotion and approval rules with their audit trail, production resolution by name,
archive/delete rules, export with a model card, lineage, reproduce, and the adapter admin page."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import pytest
from django.db import IntegrityError, transaction
from django.urls import reverse
from django.utils import timezone

from core.errors import Conflict, PermissionDenied
from jobs.models import JobStatus
from serving.services import chat_model_resolve
from tests.training.lifecycle_helpers import copy_adapter, save_tiny_adapter
from training import lifecycle
from training.models import Adapter, AdapterEvent, TrainingTask

pytestmark = pytest.mark.django_db


@pytest.fixture(scope="session")
def tiny_adapter_dir(tiny_model_dir, tmp_path_factory) -> Path:
    return save_tiny_adapter(tiny_model_dir, tmp_path_factory.mktemp("lora") / "tiny-lora")


@pytest.fixture
def world(make_team, make_user):
    team = make_team("alpha")
    return {"team": team, "author": make_user("author", team, "member"), "admin": make_user("boss", team, "admin"),
            "viewer": make_user("viewer", team, "viewer"), "member": make_user("other", team, "member")}


@pytest.fixture
def make_adapter(world, tiny_base_model, tiny_adapter_dir, make_version, data_dir):
    """make_adapter(name, model_name=None, stage="draft", author=world author) -> an adapter trained by a task."""
    counter = {"n": 0}

    def make(name: str = "faq-bot", *, model_name: str | None = None, stage: str = "draft", author=None,
             kind: str = Adapter.Kind.CAUSAL_LM) -> Adapter:
        counter["n"] += 1
        author = author or world["author"]
        team = world["team"]
        version = make_version(team)
        task = TrainingTask.objects.create(
            name=f"{name}-task", team=team, created_by=author, base_model=tiny_base_model, train_version=version,
            params={"n_epochs": 2}, resolved_params={"n_epochs": 2, "lora_r": 4, "max_seq_length": 256}, seed=7,
            device="cpu", library_versions={"torch": "x", "peft": "y"}, status=JobStatus.SUCCEEDED,
            started_at=timezone.now(), finished_at=timezone.now())
        folder = copy_adapter(tiny_adapter_dir, data_dir / "adapters" / f"{name}_{counter['n']}")
        return Adapter.objects.create(
            name=name, model_name=model_name or name, team=team, created_by=author, kind=kind,
            base_model=tiny_base_model, task=task if kind == Adapter.Kind.CAUSAL_LM else None, path=str(folder),
            lora_config={"r": 4}, metrics={"train_loss": 1.25}, stage=stage,
            production_slot=True if stage == "production" else None)

    return make


def assert_error(response, status: int, code: str | None = None):
    assert response.status_code == status, response.content
    body = response.json()
    assert set(body) >= {"detail", "code", "param"}
    if code:
        assert body["code"] == code, body


# ------------------------------------------------------------------------------------------------ promotion

def test_viewer_cannot_promote(world, make_adapter, token_for, bearer):
    adapter = make_adapter()
    with pytest.raises(PermissionDenied):
        lifecycle.adapter_promote(user=world["viewer"], adapter=adapter, stage="candidate")
    client = bearer(token_for(world["viewer"], world["team"]))
    assert_error(client.post(f"/api/adapters/{adapter.pk}/promote", {"stage": "candidate"},
                             content_type="application/json"), 403)
    assert_error(client.post(f"/api/adapters/{adapter.pk}/approve", {}, content_type="application/json"), 403,
                 "approval_required")
    assert Adapter.objects.get(pk=adapter.pk).stage == "draft"


def test_other_team_sees_nothing(world, make_adapter, make_team, make_user, token_for, bearer):
    adapter = make_adapter()
    beta = make_team("beta")
    stranger = make_user("stranger", beta, "admin")
    client = bearer(token_for(stranger, beta))
    for url in (f"/api/adapters/{adapter.pk}/lineage", f"/api/adapters/{adapter.pk}/export",
                f"/api/adapters/{adapter.pk}/ollama"):
        assert_error(client.get(url), 404)
    assert_error(client.post(f"/api/adapters/{adapter.pk}/approve", {}, content_type="application/json"), 404)


def test_author_cannot_self_approve(world, make_adapter, make_user):
    boss_author = world["admin"]
    adapter = make_adapter(author=boss_author, stage="candidate")
    with pytest.raises(PermissionDenied) as exc:
        lifecycle.adapter_approve(user=boss_author, adapter=adapter)
    assert exc.value.code == "self_approval"
    # The author's own "promote to production" is only a request, even for a team admin.
    adapter = lifecycle.adapter_promote(user=boss_author, adapter=adapter, stage="production")
    assert adapter.stage == "candidate" and adapter.approval_requested_by == boss_author
    # Whoever created the adapter row and whoever created its task both count as its authors.
    second_admin = make_user("second", world["team"], "admin")
    Adapter.objects.filter(pk=adapter.pk).update(created_by=second_admin)
    adapter = Adapter.objects.get(pk=adapter.pk)
    for who in (second_admin, boss_author):
        with pytest.raises(PermissionDenied):
            lifecycle.adapter_approve(user=who, adapter=adapter)
    third_admin = make_user("third", world["team"], "admin")
    assert lifecycle.adapter_approve(user=third_admin, adapter=adapter).stage == "production"


def test_member_cannot_approve_but_requests_and_an_admin_approves(world, make_adapter, token_for, bearer):
    adapter = make_adapter()
    author = bearer(token_for(world["author"], world["team"]))
    assert author.post(f"/api/adapters/{adapter.pk}/promote", {"stage": "production"},
                       content_type="application/json").json()["code"] == "invalid_transition"
    body = author.post(f"/api/adapters/{adapter.pk}/promote", {"stage": "candidate", "note": "looks good"},
                       content_type="application/json").json()
    assert body["stage"] == "candidate"
    body = author.post(f"/api/adapters/{adapter.pk}/promote", {"stage": "production"},
                       content_type="application/json").json()
    assert body["stage"] == "candidate" and body["approval_requested_by"] == "author"
    member = bearer(token_for(world["member"], world["team"]))
    assert_error(member.post(f"/api/adapters/{adapter.pk}/approve", {}, content_type="application/json"), 403,
                 "approval_required")
    boss = bearer(token_for(world["admin"], world["team"]))
    body = boss.post(f"/api/adapters/{adapter.pk}/approve", {"note": "ship it"},
                     content_type="application/json").json()
    assert body["stage"] == "production" and body["approval_requested_by"] is None
    assert body["serving_name"] == "alpha/faq-bot:production"
    trail = [(e.action, e.actor.username, e.from_stage, e.to_stage) for e in
             AdapterEvent.objects.filter(adapter=adapter).order_by("id")]
    assert trail == [("promoted", "author", "draft", "candidate"), ("requested", "author", "candidate", "production"),
                     ("approved", "boss", "candidate", "production")]
    approved = AdapterEvent.objects.get(adapter=adapter, action="approved")
    assert approved.note == "ship it" and approved.data["requested_by"] == "author" and approved.created_at
    events = boss.get(f"/api/adapters/{adapter.pk}/events").json()
    assert events[0]["action"] == "approved" and events[0]["actor"] == "boss"


def test_only_one_production_adapter_per_name(world, make_adapter):
    first = make_adapter("faq-v1", model_name="faq", stage="candidate")
    second = make_adapter("faq-v2", model_name="faq", stage="candidate")
    other = make_adapter("other", stage="candidate")
    boss = world["admin"]
    lifecycle.adapter_approve(user=boss, adapter=first)
    lifecycle.adapter_approve(user=boss, adapter=other)  # another name: both stay in production
    lifecycle.adapter_approve(user=boss, adapter=second)
    stages = dict(Adapter.objects.values_list("name", "stage"))
    assert stages == {"faq-v1": "candidate", "faq-v2": "production", "other": "production"}
    demoted = AdapterEvent.objects.get(adapter=first, action="demoted")
    assert demoted.actor == boss and demoted.data["replaced_by"] == second.pk
    # The database itself refuses a second production row of one name (whatever the code path).
    with pytest.raises(IntegrityError), transaction.atomic():
        Adapter.objects.filter(pk=first.pk).update(stage="production", production_slot=True)


def test_leaving_production_needs_a_team_admin(world, make_adapter):
    adapter = make_adapter(stage="production")
    with pytest.raises(PermissionDenied):
        lifecycle.adapter_promote(user=world["member"], adapter=adapter, stage="candidate")
    adapter = lifecycle.adapter_promote(user=world["admin"], adapter=adapter, stage="candidate")
    assert adapter.stage == "candidate" and adapter.production_slot is None


def test_production_name_resolves_in_chat_completions(world, make_adapter, token_for, bearer):
    first = make_adapter("faq-v1", model_name="faq", stage="candidate")
    second = make_adapter("faq-v2", model_name="faq", stage="candidate")
    client = bearer(token_for(world["viewer"], world["team"]))
    message = {"role": "user", "content": "What is the warranty period?"}
    missing = client.post("/v1/chat/completions", {"model": "alpha/faq:production", "messages": [message],
                                                   "max_tokens": 3}, content_type="application/json")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"
    lifecycle.adapter_approve(user=world["admin"], adapter=first)
    assert chat_model_resolve(user=world["viewer"], name="alpha/faq:production").adapter_path == first.path
    lifecycle.adapter_approve(user=world["admin"], adapter=second)
    resolved = chat_model_resolve(user=world["viewer"], name="alpha/faq:production")
    assert resolved.adapter_path == second.path and resolved.key == f"adapter-{second.pk}"
    response = client.post("/v1/chat/completions", {"model": "alpha/faq:production", "messages": [message],
                                                    "max_tokens": 3}, content_type="application/json")
    assert response.status_code == 200, response.content
    assert response.json()["model"] == "alpha/faq:production"
    assert "alpha/faq:production" in [m["id"] for m in client.get("/v1/models").json()["data"]]


def test_production_name_of_another_team_is_not_found(world, make_adapter, make_team, make_user, token_for, bearer):
    lifecycle.adapter_approve(user=world["admin"], adapter=make_adapter(stage="candidate"))
    beta = make_team("beta")
    client = bearer(token_for(make_user("eve", beta, "admin"), beta))
    response = client.post("/v1/chat/completions", {"model": "alpha/faq-bot:production",
                                                    "messages": [{"role": "user", "content": "hi"}]},
                           content_type="application/json")
    assert response.status_code == 404


# ------------------------------------------------------------------------------------------------ archive / delete

def test_archive_and_delete_are_refused_while_a_job_uses_the_adapter(world, make_adapter, token_for, bearer):
    from evaluation.models import EvaluationRun

    adapter = make_adapter()
    run = EvaluationRun.objects.create(name="eval", team=world["team"], adapter=adapter,
                                       dataset_version=adapter.task.train_version, status=JobStatus.RUNNING)
    client = bearer(token_for(world["author"], world["team"]))
    assert_error(client.post(f"/api/adapters/{adapter.pk}/archive"), 409, "adapter_in_use")
    assert_error(client.delete(f"/api/adapters/{adapter.pk}"), 409, "adapter_in_use")
    assert Path(adapter.path).is_dir()
    run.status = JobStatus.SUCCEEDED
    run.save(update_fields=["status"])
    body = client.delete(f"/api/adapters/{adapter.pk}").json()
    assert body["status"] == "archived" and body["files_deleted_at"]
    assert not Path(adapter.path).exists() and Adapter.objects.filter(pk=adapter.pk).exists()
    deleted = AdapterEvent.objects.get(adapter=adapter, action="deleted")
    assert deleted.data["freed_bytes"] > 0 and deleted.actor == world["author"]
    assert_error(client.get(f"/api/adapters/{adapter.pk}/export"), 404, "adapter_files_missing")
    assert_error(client.post(f"/api/adapters/{adapter.pk}/restore"), 409)


def test_production_adapter_cannot_be_archived(world, make_adapter):
    adapter = make_adapter(stage="production")
    with pytest.raises(Conflict) as exc:
        lifecycle.adapter_archive(user=world["admin"], adapter=adapter)
    assert exc.value.code == "adapter_in_production"


def test_merge_job_in_flight_blocks_delete_and_archive_restore_round_trip(world, make_adapter):
    from training.models import MergeJob

    adapter = make_adapter()
    MergeJob.objects.create(name="m", team=world["team"], adapter=adapter, output_name="x", status=JobStatus.QUEUED)
    with pytest.raises(Conflict):
        lifecycle.adapter_delete(user=world["author"], adapter=adapter)
    MergeJob.objects.update(status=JobStatus.CANCELLED)
    adapter = lifecycle.adapter_archive(user=world["author"], adapter=adapter)
    assert adapter.status == "archived"
    with pytest.raises(Conflict):
        lifecycle.adapter_promote(user=world["author"], adapter=adapter, stage="candidate")
    assert lifecycle.adapter_restore(user=world["author"], adapter=adapter).status == "ready"


# ------------------------------------------------------------------------------------------------ export / lineage

def test_export_zip_carries_a_model_card(world, make_adapter, token_for, bearer):
    adapter = make_adapter()
    client = bearer(token_for(world["viewer"], world["team"]))
    for url in (f"/api/adapters/{adapter.pk}/export", f"/api/adapters/{adapter.pk}/download"):
        response = client.get(url)
        assert response.status_code == 200 and response["Content-Type"] == "application/zip"
        archive = zipfile.ZipFile(io.BytesIO(b"".join(response.streaming_content)))
        names = set(archive.namelist())
        assert {"faq-bot/README.md", "faq-bot/adapter_config.json", "faq-bot/adapter_model.safetensors"} <= names
        card = archive.read("faq-bot/README.md").decode()
        version = adapter.task.train_version
        for expected in ("tiny-llama", version.sha256, version.ref, "n_epochs", "train_loss", "1.25", "peft",
                         "transformers", "PeftModel.from_pretrained"):
            assert expected in card, expected
    assert AdapterEvent.objects.filter(adapter=adapter, action="exported").count() == 2


def test_lineage_from_data_to_exports(world, make_adapter, token_for, bearer):
    from evaluation.models import EvaluationRun, Review

    adapter = make_adapter()
    run = EvaluationRun.objects.create(name="eval-1", team=world["team"], adapter=adapter,
                                       dataset_version=adapter.task.train_version, status=JobStatus.SUCCEEDED,
                                       results={"perplexity": {"base": 20.0, "adapter": 5.0}})
    Review.objects.create(run=run, created_by=world["admin"])
    client = bearer(token_for(world["viewer"], world["team"]))
    client.get(f"/api/adapters/{adapter.pk}/export")
    body = client.get(f"/api/adapters/{adapter.pk}/lineage").json()
    assert body["dataset"]["sha256"] == adapter.task.train_version.sha256
    task = body["task"]
    assert task["kind"] == "training" and task["seed"] == 7 and task["device"] == "cpu"
    assert task["params"] == {"n_epochs": 2} and task["library_versions"] == {"torch": "x", "peft": "y"}
    assert body["evaluations"][0]["name"] == "eval-1" and body["evaluations"][0]["summary"] == "20 → 5"
    assert len(body["evaluations"][0]["reviews"]) == 1
    assert body["exports"][0]["format"] == "zip" and body["exports"][0]["by"] == "viewer"


def test_reproduce_clones_the_task_with_identical_inputs(world, make_adapter, token_for, bearer):
    adapter = make_adapter()
    client = bearer(token_for(world["author"], world["team"]))
    response = client.post(f"/api/adapters/{adapter.pk}/reproduce", {}, content_type="application/json")
    assert response.status_code == 201, response.content
    body = response.json()
    clone = TrainingTask.objects.get(pk=body["id"])
    original = adapter.task
    assert body["kind"] == "training" and clone.cloned_from == original and clone.status == "queued"
    assert clone.train_version == original.train_version and clone.base_model == original.base_model
    assert clone.params == {"n_epochs": 2, "seed": 7} and clone.seed == 7
    assert lifecycle.default_model_name(clone) == original.name
    viewer = bearer(token_for(world["viewer"], world["team"]))
    assert_error(viewer.post(f"/api/adapters/{adapter.pk}/reproduce", {}, content_type="application/json"), 403)


# ------------------------------------------------------------------------------------------------ admin

def test_adapter_admin_page_shows_lineage_and_buttons(world, make_adapter, client):
    adapter = make_adapter(stage="candidate")
    client.force_login(world["admin"])
    page = client.get(f"/admin/training/adapter/{adapter.pk}/change/").content.decode()
    for expected in ("Lineage", adapter.task.train_version.sha256, "faq-bot-task", "Audit trail", "btn-approve",
                     "btn-ollama", "btn-merge", "btn-reproduce", "btn-export", "alpha/faq-bot:production"):
        assert expected in page, expected
    listing = client.get("/admin/training/adapter/?stage=candidate").content.decode()
    assert 'data-status="candidate"' in listing and "faq-bot" in listing
    job = lifecycle.adapter_merge(user=world["admin"], adapter=adapter)
    assert client.get(f"/admin/training/mergejob/{job.pk}/change/").status_code == 200
    assert f"/admin/training/mergejob/{job.pk}/change/" in \
        client.get(f"/admin/training/adapter/{adapter.pk}/change/").content.decode()
    version_page = client.get(f"/admin/datasets_app/datasetversion/{adapter.task.train_version_id}/change/")
    assert f"/admin/training/adapter/{adapter.pk}/change/" in version_page.content.decode()


def test_admin_approval_writes_our_event_and_a_log_entry(world, make_adapter, client):
    from django.contrib.admin.models import LogEntry

    adapter = make_adapter(stage="candidate")
    client.force_login(world["admin"])
    response = client.post(f"/admin/training/adapter/{adapter.pk}/lifecycle/approve/", {"note": "approved in admin"})
    assert response.status_code == 302
    assert Adapter.objects.get(pk=adapter.pk).stage == "production"
    entry = LogEntry.objects.get(object_id=str(adapter.pk), user=world["admin"])
    assert "approve" in entry.get_change_message()
    event = AdapterEvent.objects.get(adapter=adapter, action="approved")
    assert event.actor == world["admin"] and event.note == "approved in admin"
    page = client.get(f"/admin/training/adapter/{adapter.pk}/change/").content.decode()
    assert "approved in admin" in page and "Approved for production by boss" in page


def test_admin_self_approval_is_an_error_message(world, make_adapter, client):
    adapter = make_adapter(stage="candidate", author=world["admin"])
    client.force_login(world["admin"])
    response = client.post(f"/admin/training/adapter/{adapter.pk}/lifecycle/approve/", follow=True)
    assert "another team admin must approve" in response.content.decode()
    assert Adapter.objects.get(pk=adapter.pk).stage == "candidate"


def test_admin_viewer_gets_no_buttons_and_cannot_post(world, make_adapter, client):
    adapter = make_adapter()
    client.force_login(world["viewer"])
    page = client.get(f"/admin/training/adapter/{adapter.pk}/change/").content.decode()
    assert "Lineage" in page and "btn-candidate" not in page and "btn-merge" not in page
    client.post(f"/admin/training/adapter/{adapter.pk}/lifecycle/candidate/")
    assert Adapter.objects.get(pk=adapter.pk).stage == "draft"


def test_admin_downloads_export_and_ollama_bundle(world, make_adapter, client):
    adapter = make_adapter()
    client.force_login(world["viewer"])
    response = client.get(f"/admin/training/adapter/{adapter.pk}/download/")
    assert "faq-bot/README.md" in zipfile.ZipFile(io.BytesIO(b"".join(response.streaming_content))).namelist()
    response = client.get(f"/admin/training/adapter/{adapter.pk}/ollama/", {"from": "smollm2:135m", "name": "faq"})
    names = zipfile.ZipFile(io.BytesIO(b"".join(response.streaming_content))).namelist()
    assert "faq-bot-ollama/Modelfile" in names


def test_classifier_adapter_page_has_the_try_it_box(world, tiny_base_model, data_dir, client, monkeypatch):
    from classifier import predict

    folder = data_dir / "adapters" / "clf"
    folder.mkdir(parents=True)
    adapter = Adapter.objects.create(name="clf", team=world["team"], kind=Adapter.Kind.CLASSIFIER,
                                     base_model=tiny_base_model, path=str(folder), label_map={"0": "a", "1": "b"})
    monkeypatch.setattr(predict, "classify", lambda adapter, texts: [
        {"label": "b", "confidence": 0.9, "probabilities": {"a": 0.1, "b": 0.9}} for _ in texts])
    client.force_login(world["viewer"])
    page = client.get(f"/admin/training/adapter/{adapter.pk}/change/").content.decode()
    assert 'id="try-it"' in page and "btn-ollama" not in page
    # The box posts to the classifier app's view (training's adapter page only shows it).
    url = reverse("admin:classifier_try_adapter", args=[adapter.pk])
    assert f'data-url="{url}"' in page
    response = client.post(url, {"text": "a question"})
    assert response.status_code == 200 and response.json()["label"] == "b"
    empty = client.post(url, {"text": " "})
    assert empty.status_code == 400 and empty.json()["code"] == "empty_text"


# ------------------------------------------------------------------------------------------------ commands

def test_adapter_command_promotes_exports_and_archives(world, make_adapter, tmp_path):
    from django.core.management import CommandError, call_command

    adapter = make_adapter()
    out = io.StringIO()
    call_command("adapter", "promote", str(adapter.pk), "candidate", "--user", "author", stdout=out)
    assert "stage candidate" in out.getvalue()
    with pytest.raises(CommandError, match="team admin"):
        call_command("adapter", "approve", str(adapter.pk), "--user", "author", stdout=out)
    call_command("adapter", "approve", "faq-bot", "--user", "boss", stdout=out)
    assert Adapter.objects.get(pk=adapter.pk).stage == "production"
    target = tmp_path / "bundle.zip"
    call_command("adapter", "ollama", "faq-bot", "--team", "alpha", "--from", "smollm2:135m", "-o", str(target),
                 stdout=out)
    assert "ollama create faq-bot -f Modelfile" in out.getvalue()
    assert "faq-bot-ollama/Modelfile" in zipfile.ZipFile(target).namelist()
    call_command("adapter", "export", "faq-bot", "--team", "alpha", "-o", str(tmp_path / "a.zip"), stdout=out)
    assert "faq-bot/README.md" in zipfile.ZipFile(tmp_path / "a.zip").namelist()
    with pytest.raises(CommandError, match="in production"):
        call_command("adapter", "archive", "faq-bot", "--team", "alpha", stdout=out)
    out = io.StringIO()
    call_command("adapter", "lineage", "faq-bot", "--team", "alpha", stdout=out)
    assert json.loads(out.getvalue())["task"]["name"] == "faq-bot-task"
