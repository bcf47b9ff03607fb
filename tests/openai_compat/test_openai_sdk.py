"""The official openai SDK against a live server and a real worker: upload, fine-tune, list, chat."""

from __future__ import annotations

import json

import pytest

from tests.training.conftest import wait_for
from tests.training.tiny import chat_records

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow, pytest.mark.mysql]


@pytest.fixture
def sdk_world(make_team, make_user, token_for, tiny_base_model):
    team = make_team("alpha")
    alice = make_user("alice", team, "member")
    beta = make_team("beta")
    bob = make_user("bob", beta, "member")
    return token_for(alice, team), token_for(bob, beta)


def test_seed_003_workflow_with_the_official_sdk(live_url, worker, sdk_world, tmp_path):
    import openai

    alice_key, bob_key = sdk_world
    client = openai.OpenAI(base_url=f"{live_url}/v1", api_key=alice_key, max_retries=0, timeout=120)
    other = openai.OpenAI(base_url=f"{live_url}/v1", api_key=bob_key, max_retries=0, timeout=60)

    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in chat_records(16)))
    uploaded = client.files.create(file=path.open("rb"), purpose="fine-tune")
    assert uploaded.id.startswith("file-") and uploaded.status == "processed" and uploaded.bytes > 0
    assert any(f.id == uploaded.id for f in client.files.list().data)

    job = client.fine_tuning.jobs.create(model="tiny-llama", training_file=uploaded.id, suffix="faq", seed=7,
                                         hyperparameters={"n_epochs": 2, "batch_size": 4},
                                         metadata={"project": "seed003"})
    assert job.status == "queued" and job.seed == 7 and job.hyperparameters.n_epochs == 2
    assert client.fine_tuning.jobs.list(limit=5, extra_query={"metadata[project]": "seed003"}).data[0].id == job.id
    assert client.fine_tuning.jobs.list(extra_query={"metadata[project]": "other"}).data == []

    # another team can neither see nor cancel it
    with pytest.raises(openai.NotFoundError):
        other.fine_tuning.jobs.retrieve(job.id)
    with pytest.raises(openai.NotFoundError):
        other.fine_tuning.jobs.cancel(job.id)
    with pytest.raises(openai.NotFoundError):
        other.files.retrieve(uploaded.id)

    worker.start()
    wait_for(lambda: client.fine_tuning.jobs.retrieve(job.id).status in {"succeeded", "failed", "cancelled"},
             timeout=300, interval=1, message="the job to finish")
    job = client.fine_tuning.jobs.retrieve(job.id)
    assert job.status == "succeeded", (job.error, worker.log())
    assert job.fine_tuned_model == f"ft:tiny-llama:alpha:faq:{job.id.split('-')[1]}"
    assert job.trained_tokens and job.trained_tokens > 0 and job.result_files

    events = client.fine_tuning.jobs.list_events(job.id, limit=100).data
    metrics = [e for e in events if e.type == "metrics"]
    assert metrics and {"step", "total_steps", "train_loss"} <= set(metrics[0].data)
    page = client.fine_tuning.jobs.list_events(job.id, limit=2)
    assert len(page.data) == 2 and page.has_more
    older = client.fine_tuning.jobs.list_events(job.id, limit=2, after=page.data[-1].id)
    assert older.data[0].id != page.data[0].id

    checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert checkpoints and checkpoints[0].fine_tuned_model_checkpoint.startswith(job.fine_tuned_model + ":ckpt-step-")

    results = client.files.content(job.result_files[0]).text
    assert results.splitlines()[0] == "step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy"

    model_ids = [m.id for m in client.models.list().data]
    assert "tiny-llama" in model_ids and job.fine_tuned_model in model_ids
    assert checkpoints[0].fine_tuned_model_checkpoint in model_ids
    assert job.fine_tuned_model not in [m.id for m in other.models.list().data]

    answer = client.chat.completions.create(model=job.fine_tuned_model, max_tokens=8,
                                            messages=[{"role": "user", "content": "What is the warranty period?"}])
    assert answer.choices[0].message.role == "assistant"
    assert answer.usage.prompt_tokens > 0 and answer.usage.completion_tokens > 0
    assert answer.choices[0].finish_reason in ("stop", "length")

    base_answer = client.chat.completions.create(model="tiny-llama", max_tokens=4,
                                                 messages=[{"role": "user", "content": "hi"}])
    assert base_answer.usage.completion_tokens <= 4

    stream = client.chat.completions.create(model=checkpoints[0].fine_tuned_model_checkpoint, max_tokens=6,
                                            stream=True, stream_options={"include_usage": True},
                                            messages=[{"role": "user", "content": "What is the hotline number?"}])
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert any(c.choices and c.choices[0].finish_reason for c in chunks)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0

    with pytest.raises(openai.ConflictError):
        client.fine_tuning.jobs.cancel(job.id)
    with pytest.raises(openai.NotFoundError):
        other.chat.completions.create(model=job.fine_tuned_model, messages=[{"role": "user", "content": "x"}])
