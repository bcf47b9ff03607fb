"""Training task services and API: validation at creation, the state machine, control requests, visibility."""

from __future__ import annotations

import pytest

from core.errors import ApplicationError, Conflict, NotFound, PermissionDenied
from jobs import runtime
from jobs import services as job_services
from jobs.models import JobStatus
from training import services
from training.models import TrainingTask

pytestmark = pytest.mark.django_db


@pytest.fixture
def setup(make_team, make_user, tiny_base_model, make_version):
    team = make_team("alpha")
    alice = make_user("alice", team, "member")
    version = make_version(team)
    return team, alice, version


def create(user, version, model, **kwargs):
    return services.training_task_create(user=user, name=kwargs.pop("name", "faq-bot"), base_model=model,
                                         train_version=version, **kwargs)


def test_create_queues_the_task_with_resolved_parameters_and_an_event(setup, tiny_base_model):
    team, alice, version = setup
    task = create(alice, version, tiny_base_model, params={"n_epochs": 2})
    assert task.status == JobStatus.QUEUED and task.queued_at is not None
    assert task.resolved_params["n_epochs"] == 2
    assert task.resolved_params["quantization"] == "none"  # CPU
    assert task.auto_explanation  # every "auto" choice says why
    assert task.estimated_memory_bytes > 0
    assert task.events.filter(message__startswith="Created").exists()
    assert task.created_by == alice and task.team == team


@pytest.mark.parametrize("params, field", [
    ({"n_epochs": 0}, "n_epochs"),
    ({"learning_rate": -1}, "learning_rate"),
    ({"lora_r": "big"}, "lora_r"),
    ({"quantization": "fp8"}, "quantization"),
    ({"warmup_ratio": 0.9}, "warmup_ratio"),
    ({"epochs": 3}, "epochs"),
    ({"target_modules": []}, "target_modules"),
])
def test_bad_parameters_are_refused_naming_the_field(setup, tiny_base_model, params, field):
    _team, alice, version = setup
    with pytest.raises(ApplicationError) as err:
        create(alice, version, tiny_base_model, params=params)
    assert err.value.param == field and err.value.code == "invalid_parameter"
    assert not TrainingTask.objects.exists()


def test_memory_estimate_refuses_a_task_that_cannot_fit(setup, tiny_base_model, settings):
    _team, alice, version = setup
    settings.TRAINING_MEMORY_LIMIT_BYTES = 10 * 1024 * 1024
    with pytest.raises(ApplicationError) as err:
        create(alice, version, tiny_base_model, params={"batch_size": 64, "max_seq_length": 4096})
    assert err.value.code == "insufficient_memory"
    assert "Lower the batch size" in err.value.message and "nf4" in err.value.message


def test_failed_dataset_version_is_refused_with_its_line_numbers(setup, tiny_base_model, make_version):
    team, alice, _version = setup
    bad = make_version(team, [], name="broken", status="failed", report={"errors": [
        {"line": 3, "code": "missing_content", "message": "message 1 has no content"}]})
    with pytest.raises(ApplicationError) as err:
        create(alice, bad, tiny_base_model)
    assert "line 3: missing_content" in err.value.message and err.value.param == "train_version"


def test_openai_style_creation_records_a_failed_job_for_a_bad_file(setup, tiny_base_model, make_version):
    team, alice, _version = setup
    bad = make_version(team, [], name="broken", status="failed", report={"errors": [
        {"line": 1, "code": "invalid_json", "message": "not JSON"}]})
    task = create(alice, bad, tiny_base_model, fail_invalid_files=True)
    assert task.status == JobStatus.FAILED and task.error_param == "training_file"
    assert "line 1: invalid_json" in task.error_message


def test_classification_data_cannot_train_a_causal_lm(setup, tiny_base_model, make_version):
    team, alice, _version = setup
    clf = make_version(team, [{"text": "hi", "label": "chat"}] * 12, name="clf", fmt="classification")
    with pytest.raises(ApplicationError, match="trains a classifier"):
        create(alice, clf, tiny_base_model)


def test_an_encoder_cannot_be_the_base_of_a_causal_task(setup, tiny_base_model):
    from catalog.models import BaseModel

    _team, alice, version = setup
    enc = BaseModel.objects.create(name="enc", kind="encoder", path=tiny_base_model.path)
    with pytest.raises(ApplicationError) as err:
        create(alice, version, enc)
    assert err.value.code == "wrong_model_kind"


def test_viewer_cannot_create_and_other_team_cannot_see(setup, tiny_base_model, make_user, make_team):
    team, _alice, version = setup
    viewer = make_user("victor", team, "viewer")
    with pytest.raises(PermissionDenied):
        create(viewer, version, tiny_base_model)
    beta = make_team("beta")
    bob = make_user("bob", beta, "member")
    with pytest.raises(NotFound):
        create(bob, version, tiny_base_model, team=beta)


def test_duplicate_names_get_a_suffix(setup, tiny_base_model):
    _team, alice, version = setup
    first = create(alice, version, tiny_base_model)
    second = create(alice, version, tiny_base_model)
    assert (first.name, second.name) == ("faq-bot", "faq-bot-2")


def test_cancel_queued_task_is_immediate_and_cancel_twice_is_a_conflict(setup, tiny_base_model):
    _team, alice, version = setup
    task = create(alice, version, tiny_base_model)
    task = job_services.job_cancel(user=alice, job=task)
    assert task.status == JobStatus.CANCELLED and task.finished_at
    with pytest.raises(Conflict):
        job_services.job_cancel(user=alice, job=task)


def test_claim_is_atomic_and_a_redelivered_message_does_not_run_twice(setup, tiny_base_model):
    _team, alice, version = setup
    task = create(alice, version, tiny_base_model)
    token = runtime.claim(task)
    assert token
    assert runtime.claim(task) is None  # second worker / re-delivered message
    task.refresh_from_db()
    assert task.status == JobStatus.RUNNING and task.run_token == token and task.attempts == 1


def test_team_running_limit_and_priority_order(setup, tiny_base_model, make_version, make_team, make_user, settings):
    team, alice, version = setup
    settings.TEAM_MAX_RUNNING = 1
    low = create(alice, version, tiny_base_model, name="low")
    high = create(alice, version, tiny_base_model, name="high", priority=5)
    beta = make_team("beta")
    bob = make_user("bob", beta, "member")
    other = create(bob, make_version(beta), tiny_base_model, name="other")
    job, _token = runtime.claim_next()
    assert job.pk == high.pk  # priority first
    job2, _ = runtime.claim_next()
    assert job2.pk == other.pk  # alpha is at its limit: beta's task goes next
    assert runtime.claim_next() is None
    low.refresh_from_db()
    assert low.status == JobStatus.QUEUED


def test_stale_running_task_is_recovered_once_then_failed(setup, tiny_base_model, settings):
    from datetime import timedelta

    from django.utils import timezone

    _team, alice, version = setup
    settings.JOB_MAX_RECOVERIES = 1
    task = create(alice, version, tiny_base_model)
    runtime.claim(task)
    TrainingTask.objects.filter(pk=task.pk).update(heartbeat_at=timezone.now() - timedelta(minutes=10))
    assert runtime.recover_stale() == 1
    task.refresh_from_db()
    assert task.status == JobStatus.QUEUED and task.recoveries == 1
    assert task.events.filter(message__contains="no heartbeat").exists()
    runtime.claim(task)
    TrainingTask.objects.filter(pk=task.pk).update(heartbeat_at=timezone.now() - timedelta(minutes=10))
    runtime.recover_stale()
    task.refresh_from_db()
    assert task.status == JobStatus.FAILED and task.error_code == "worker_crashed"


def test_a_run_that_lost_its_claim_cannot_write(setup, tiny_base_model):
    _team, alice, version = setup
    task = create(alice, version, tiny_base_model)
    token = runtime.claim(task)
    task.refresh_from_db()
    ctx = runtime.JobContext(task, token)
    ctx.update(step=1)
    TrainingTask.objects.filter(pk=task.pk).update(run_token="someone-else")
    with pytest.raises(runtime.LostClaim):
        ctx.update(step=2)
    with pytest.raises(runtime.LostClaim):
        ctx.finish(JobStatus.SUCCEEDED)


def test_pause_resume_and_retry_rules(setup, tiny_base_model):
    _team, alice, version = setup
    task = create(alice, version, tiny_base_model)
    with pytest.raises(Conflict):
        job_services.job_resume(user=alice, job=task)
    task = job_services.job_pause(user=alice, job=task)
    assert task.status == JobStatus.PAUSED
    task = job_services.job_resume(user=alice, job=task)
    assert task.status == JobStatus.QUEUED
    with pytest.raises(Conflict):
        job_services.job_retry(user=alice, job=task)
    job_services.job_cancel(user=alice, job=task)
    task = job_services.job_retry(user=alice, job=task)
    assert task.status == JobStatus.QUEUED and not task.error_code


def test_foreground_run_trains_registers_an_adapter_that_loads_with_plain_peft(setup, tiny_base_model, data_dir):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    _team, alice, version = setup
    task = create(alice, version, tiny_base_model, params={"n_epochs": 2, "batch_size": 4, "save_steps": 4,
                                                           "lora_r": 4})
    status = runtime.run_foreground(task)
    task.refresh_from_db()
    assert status == JobStatus.SUCCEEDED, (task.error_code, task.error_message)
    assert task.step == task.total_steps > 0 and task.progress_percent == 100.0
    assert task.trained_tokens > 0 and task.metrics.get("train_loss") is not None
    assert task.library_versions.get("torch") and task.device.startswith("cpu") and task.device.endswith(" compute")
    assert task.events.filter(message__startswith="Compute dtype: ").exists()  # and why
    metrics = list(task.events.filter(type="metrics").values_list("data", flat=True))
    assert metrics and all("step" in m and "total_steps" in m for m in metrics)
    assert task.checkpoints.exists()
    adapter = task.adapters.get()
    assert adapter.name == task.name and adapter.trainable_parameters > 0 and adapter.size_bytes > 0
    assert adapter.path.startswith(str(data_dir / "adapters"))
    base = AutoModelForCausalLM.from_pretrained(tiny_base_model.path)
    model = PeftModel.from_pretrained(base, adapter.path)
    out = model.generate(input_ids=torch.tensor([[1, 2, 3]]), max_new_tokens=3, min_new_tokens=3, do_sample=False)
    assert out.shape[1] == 6


# ------------------------------------------------------------------------------------------------------ API

def test_api_create_with_a_bad_parameter_is_400_naming_the_field(setup, tiny_base_model, token_for, bearer):
    team, alice, version = setup
    c = bearer(token_for(alice, team))
    response = c.post("/api/training/tasks", {"base_model": "tiny-llama", "train_version": version.pk,
                                              "params": {"lora_alpha": -3}}, content_type="application/json")
    assert response.status_code == 400
    assert response.json()["param"] == "lora_alpha"


def test_api_lifecycle_and_isolation(setup, tiny_base_model, token_for, bearer, make_team, make_user):
    team, alice, version = setup
    c = bearer(token_for(alice, team))
    created = c.post("/api/training/tasks", {"name": "api-task", "base_model": "tiny-llama",
                                             "train_version": version.pk, "params": {"n_epochs": 1}},
                     content_type="application/json")
    assert created.status_code == 201, created.content
    body = created.json()
    assert body["status"] == "queued" and body["progress"]["percent"] == 0
    tid = body["id"]
    assert c.get("/api/training/tasks").json()["count"] == 1
    assert c.get(f"/api/training/tasks/{tid}").json()["name"] == "api-task"
    events = c.get(f"/api/training/tasks/{tid}/events?limit=1").json()
    assert len(events["items"]) == 1 and events["next_after"] == events["items"][0]["id"]

    beta = make_team("beta")
    other = bearer(token_for(make_user("bob", beta, "member"), beta))
    assert other.get(f"/api/training/tasks/{tid}").status_code == 404
    assert other.post(f"/api/training/tasks/{tid}/cancel").status_code == 404
    assert other.get("/api/training/tasks").json()["count"] == 0

    cancelled = c.post(f"/api/training/tasks/{tid}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    again = c.post(f"/api/training/tasks/{tid}/cancel")
    assert again.status_code == 409 and again.json()["code"] == "invalid_state"


def test_events_keyset_pagination(setup, tiny_base_model):
    _team, alice, version = setup
    task = create(alice, version, tiny_base_model)
    for i in range(25):
        runtime.add_event(task, f"line {i}")
    seen, after = [], None
    while True:
        rows, more = job_services.job_events_page(job=task, after=after, limit=10)
        seen += [r.message for r in rows]
        if not more:
            break
        after = rows[-1].id
    assert seen[0].startswith("Created") and seen[1:] == [f"line {i}" for i in range(25)]
