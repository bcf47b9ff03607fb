"""Parameters are resolved once, at creation, from the data's real token lengths; the run uses exactly those and
checks the admitted memory estimate again on its tokenised data before it loads the model."""

from __future__ import annotations

import io
import json

import pytest
from django.urls import reverse

from datasets_app import services as dataset_services
from datasets_app.models import DatasetVersion
from jobs import runtime
from jobs.models import JobStatus
from ml.hparams import MemoryEstimate
from tests.training.tiny import chat_records
from training import services
from training.models import TrainingTask

pytestmark = pytest.mark.django_db

LONG_ANSWER = "The warranty lasts two years from the date of purchase. " * 6


def records() -> list[dict]:
    """Short Q&A and one long answer: the longest example decides max_seq_length, the mean the batch size."""
    return chat_records(15) + [{"messages": [{"role": "user", "content": "Tell me about the warranty."},
                                             {"role": "assistant", "content": LONG_ANSWER}]}]


def upload(user, name: str, base_model=None) -> DatasetVersion:
    body = "".join(json.dumps(r) + "\n" for r in records()).encode()
    return dataset_services.dataset_upload(user=user, team="alpha", name=name, fileobj=io.BytesIO(body),
                                           filename=f"{name}.jsonl", base_model=base_model)


@pytest.fixture
def alice(make_team, make_user, data_dir):
    return make_user("alice", make_team("alpha"), "member")


def create(user, version, model, **kwargs) -> TrainingTask:
    return services.training_task_create(user=user, name=kwargs.pop("name", "faq-bot"), base_model=model,
                                         train_version=version, **kwargs)


def test_creation_resolves_the_same_with_token_stats_from_the_upload_or_counted_then(alice, tiny_base_model):
    counted_at_upload = upload(alice, "with-stats", base_model=tiny_base_model)
    without = upload(alice, "without-stats")
    assert tiny_base_model.name in counted_at_upload.stats["tokens"] and "tokens" not in without.stats

    first = create(alice, counted_at_upload, tiny_base_model, name="a")
    second = create(alice, without, tiny_base_model, name="b")

    # the statistics were counted at creation and kept on the version
    longest = DatasetVersion.objects.get(pk=without.pk).stats["tokens"][tiny_base_model.name]["max"]
    assert longest == counted_at_upload.stats["tokens"][tiny_base_model.name]["max"] > 64
    assert first.resolved_params == second.resolved_params
    # (the free memory it was checked against is measured at each creation)
    assert {k: v for k, v in first.memory_estimate.items() if k != "available_bytes"} == \
        {k: v for k, v in second.memory_estimate.items() if k != "available_bytes"}
    # the real lengths, not the device's default of 1024 tokens
    assert first.resolved_params["max_seq_length"] == -(-longest // 64) * 64
    assert f"longest example has {longest} tokens" in first.auto_explanation["max_seq_length"]
    assert first.memory_estimate["tokens_per_sequence"] == longest
    assert first.memory_estimate["sequences_per_batch"] == first.resolved_params["batch_size"]
    assert first.memory_estimate["gradient_accumulation_steps"] == \
        first.resolved_params["gradient_accumulation_steps"]
    assert first.memory_estimate["total_bytes"] == first.estimated_memory_bytes > 0


def test_the_queued_task_shows_the_stored_estimate_on_the_api_and_the_admin(alice, tiny_base_model, make_version,
                                                                          token_for, bearer, client):
    task = create(alice, make_version(alice.memberships.get().team), tiny_base_model)
    stored = TrainingTask.objects.get(pk=task.pk).memory_estimate
    described = MemoryEstimate.from_dict(stored).describe()
    assert task.status == JobStatus.QUEUED and "sequences x" in described

    body = bearer(token_for(alice, task.team)).get(f"/api/training/tasks/{task.pk}").json()
    assert body["memory_estimate"] == stored and body["estimated_memory_bytes"] == stored["total_bytes"]

    client.force_login(alice)
    page = client.get(reverse("admin:training_trainingtask_change", args=[task.pk])).content.decode()
    assert described in page
    assert task.events.filter(message__contains=described).exists()  # the "Created" event says the same


def test_the_run_uses_the_stored_parameters_exactly(alice, tiny_base_model, make_version):
    task = create(alice, make_version(alice.memberships.get().team), tiny_base_model, params={"max_steps": 2})
    # What the run reads is the stored row: a value no resolution would choose for this data shows it.
    resolved = {**task.resolved_params, "lora_r": 3, "lora_alpha": 6.0, "batch_size": 2}
    TrainingTask.objects.filter(pk=task.pk).update(resolved_params=resolved)

    assert runtime.run_foreground(TrainingTask.objects.get(pk=task.pk)) == JobStatus.SUCCEEDED
    task.refresh_from_db()
    assert task.resolved_params == resolved and task.step == 2
    assert task.adapters.get().lora_config["r"] == 3
    check = task.events.get(message__startswith="Memory check:")
    assert check.data["memory"]["sequences_per_batch"] == 2
    assert check.data["memory"]["total_bytes"] <= task.memory_estimate["total_bytes"]


def test_the_run_refuses_a_batch_larger_than_the_estimate_it_was_admitted_with(alice, tiny_base_model,
                                                                                make_version):
    task = create(alice, make_version(alice.memberships.get().team), tiny_base_model)
    admitted = {**task.memory_estimate, "total_bytes": 1024**2}
    TrainingTask.objects.filter(pk=task.pk).update(memory_estimate=admitted)

    assert runtime.run_foreground(TrainingTask.objects.get(pk=task.pk)) == JobStatus.FAILED
    task.refresh_from_db()
    assert task.error_code == "insufficient_memory"
    assert "0.00 GiB for" in task.error_message  # the admitted figure
    assert f"{task.estimated_memory_bytes / 1024**3:.2f} GiB for" in task.error_message  # the real batch's
    assert "checked when the task was created" in task.error_message
    assert task.step == 0 and not task.adapters.exists() and not task.checkpoints.exists()


def test_the_run_refuses_when_the_memory_available_shrank_since_creation(alice, tiny_base_model, make_version,
                                                                        settings):
    task = create(alice, make_version(alice.memberships.get().team), tiny_base_model)
    settings.TRAINING_MEMORY_LIMIT_BYTES = 64 * 1024**2

    assert runtime.run_foreground(TrainingTask.objects.get(pk=task.pk)) == JobStatus.FAILED
    task.refresh_from_db()
    assert task.error_code == "insufficient_memory"
    assert "only 0.1 GiB of memory is available now" in task.error_message
    assert not task.adapters.exists()


def test_a_preference_pair_counts_as_its_longer_sequence():
    from ml import data as render
    from tests.training.tiny import build_tokenizer

    tokenizer = build_tokenizer()
    prompt = [{"role": "user", "content": "What is the warranty period?"}]
    short, long = [{"role": "assistant", "content": "Two years."}], [{"role": "assistant", "content": LONG_ANSWER}]
    longer = render.count_tokens(tokenizer, {"messages": prompt + long})
    assert longer > render.count_tokens(tokenizer, {"messages": prompt + short})
    assert render.count_tokens(tokenizer, {"prompt": prompt, "chosen": short, "rejected": long}) == longer


def test_weights_missing_from_a_known_architecture_are_model_missing(tmp_path, tiny_model_dir):
    import shutil

    from ml.errors import TrainingError
    from ml.model import load_base_model

    folder = tmp_path / "no-weights"
    folder.mkdir()
    shutil.copy(tiny_model_dir / "config.json", folder / "config.json")
    with pytest.raises(TrainingError) as info:
        load_base_model(folder, quantization="none", device="cpu")
    assert info.value.code == "model_missing" and "Cannot load the base model" in info.value.message
