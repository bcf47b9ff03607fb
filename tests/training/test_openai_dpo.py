"""/v1/fine_tuning/jobs with ``method: {"type": "dpo"}`` on OpenAI's preference format: the test client for the
protocol's edges, the official SDK against a live server and worker for the whole run."""

from __future__ import annotations

import io
import json

import pytest

from tests.training.conftest import wait_for
from tests.training.tiny import FACTS, chat_records
from training.models import TrainingTask

# Preference pairs in OpenAI's format. The chosen answers help, the rejected ones refuse: a pattern a tiny model can
# learn from a few pairs and that carries over to questions it never saw (the held-out set).
QUESTIONS = [q for q, _a in FACTS] + ["Do you ship abroad?", "Can I pay by card?", "Where is the store?",
                                      "When do you open?"]
ANSWERS = [a for _q, a in FACTS] + ["We ship to most countries.", "Cards are welcome.", "It is on Main Street.",
                                    "We open at nine."]
HELD_OUT = [("Is there a warranty on batteries?", "The warranty covers batteries for one year."),
            ("Can I return a gift?", "You can return a gift within thirty days."),
            ("Is the hotline free?", "The hotline is free to call."),
            ("How fast is shipping?", "Shipping takes two days."),
            ("Do you sell gift cards?", "We sell gift cards in the store."),
            ("Can I change my order?", "You can change an order before it ships."),
            ("Is parking free?", "Parking is free for customers."),
            ("Do you repair items?", "We repair items under warranty.")]
REFUSAL = "No. I will not tell you that."


def openai_pair(question: str, answer: str) -> dict:
    return {"input": {"messages": [{"role": "user", "content": question}]},
            "preferred_output": [{"role": "assistant", "content": answer}],
            "non_preferred_output": [{"role": "assistant", "content": REFUSAL}]}


def train_pairs(n: int = 16) -> list[dict]:
    return [openai_pair(QUESTIONS[i % len(QUESTIONS)], ANSWERS[i % len(ANSWERS)]) for i in range(n)]


def upload(client, records, name="train.jsonl"):
    f = io.BytesIO("".join(json.dumps(r) + "\n" for r in records).encode())
    f.name = name
    return client.post("/v1/files", {"file": f, "purpose": "fine-tune"})


@pytest.fixture
def v1(make_team, make_user, token_for, bearer, tiny_base_model):
    team = make_team("alpha")
    alice = make_user("alice", team, "member")
    return bearer(token_for(alice, team))


def create(client, file_id, method=None, **extra):
    body = {"model": "tiny-llama", "training_file": file_id, **extra}
    if method is not None:
        body["method"] = method
    return client.post("/v1/fine_tuning/jobs", body, content_type="application/json")


@pytest.mark.django_db
def test_dpo_job_is_created_from_an_openai_preference_file_and_echoes_its_method(v1):
    file_id = upload(v1, train_pairs(12)).json()["id"]
    r = create(v1, file_id, {"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.2, "n_epochs": 2, "batch_size": 4,
                                                                        "learning_rate_multiplier": 2}}})
    assert r.status_code == 200, r.content
    job = r.json()
    assert job["method"]["type"] == "dpo" and job["method"]["dpo"]["hyperparameters"]["beta"] == 0.2
    assert job["method"]["dpo"]["hyperparameters"]["n_epochs"] == 2
    assert job["hyperparameters"]["learning_rate_multiplier"] == 2
    assert job["status"] == "queued", job["error"]
    task = TrainingTask.objects.get()
    assert task.method == "dpo" and task.params["beta"] == 0.2 and task.train_version.format == "preference"


@pytest.mark.django_db
def test_supervised_jobs_are_unchanged(v1):
    file_id = upload(v1, chat_records(12)).json()["id"]
    job = create(v1, file_id, {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2}}}).json()
    assert job["method"] == {"type": "supervised", "supervised": {"hyperparameters": job["hyperparameters"]}}
    assert "beta" not in job["hyperparameters"] and TrainingTask.objects.get().method == "sft"


@pytest.mark.django_db
@pytest.mark.parametrize("records, method, words", [
    (train_pairs(12), None, "'preference'"),
    (train_pairs(12), {"type": "supervised"}, "'preference'"),
    (chat_records(12), {"type": "dpo"}, "preference pairs"),
], ids=["preference-file-no-method", "preference-file-supervised", "chat-file-dpo"])
def test_a_file_of_the_other_kind_is_refused_naming_its_format(v1, records, method, words):
    file_id = upload(v1, records).json()["id"]
    r = create(v1, file_id, method)
    assert r.status_code == 400, r.content
    err = r.json()["error"]
    assert err["param"] == "training_file" and words in err["message"]
    assert not TrainingTask.objects.exists()


@pytest.mark.django_db
def test_a_bad_dpo_hyperparameter_is_400_naming_it(v1):
    file_id = upload(v1, train_pairs(12)).json()["id"]
    r = create(v1, file_id, {"type": "dpo", "dpo": {"hyperparameters": {"beta": -1}}})
    assert r.status_code == 400 and r.json()["error"]["param"] == "hyperparameters.beta"


def held_out_reward_accuracy(base_path: str, adapter_path: str) -> dict:
    """The DPO adapter against its reference (the base, adapter disabled) on the held-out pairs."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ml.train.preference import encode_preference_rows, pair_logps, preference_scores

    tok = AutoTokenizer.from_pretrained(adapter_path)
    rows = encode_preference_rows(tok, [{"prompt": [{"role": "user", "content": q}],
                                         "chosen": [{"role": "assistant", "content": a}],
                                         "rejected": [{"role": "assistant", "content": REFUSAL}]}
                                        for q, a in HELD_OUT], "dpo")
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32),
                                      adapter_path)
    policy = pair_logps(model, rows, pad_token_id=tok.pad_token_id)
    with model.disable_adapter():
        reference = pair_logps(model, rows, pad_token_id=tok.pad_token_id)
    return preference_scores(policy, reference, beta=0.1)


@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
def test_official_sdk_runs_a_dpo_job_and_the_adapter_prefers_the_chosen_answers(
        live_url, worker, make_team, make_user, token_for, tiny_base_model, tmp_path):
    import openai

    from training.models import Adapter

    team = make_team("alpha")
    client = openai.OpenAI(base_url=f"{live_url}/v1", api_key=token_for(make_user("alice", team, "member"), team),
                           max_retries=0, timeout=120)
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in train_pairs(16)))
    uploaded = client.files.create(file=path.open("rb"), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        model="tiny-llama", training_file=uploaded.id, suffix="prefs", seed=3,
        method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.1, "n_epochs": 4, "batch_size": 4,
                                                           "learning_rate_multiplier": 5}}})
    assert job.method.type == "dpo" and job.method.dpo.hyperparameters.beta == 0.1
    worker.start()
    wait_for(lambda: client.fine_tuning.jobs.retrieve(job.id).status in {"succeeded", "failed", "cancelled"},
             timeout=300, interval=1, message="the DPO job to finish")
    job = client.fine_tuning.jobs.retrieve(job.id)
    assert job.status == "succeeded", (job.error, worker.log())
    assert job.method.type == "dpo" and job.fine_tuned_model

    events = client.fine_tuning.jobs.list_events(job.id, limit=200).data
    metrics = [e.data for e in events if e.type == "metrics" and e.data]
    assert metrics and all("train_reward_accuracy" in d and "train_reward_margin" in d
                           and "train_rewards_chosen" in d and "train_rewards_rejected" in d
                           for d in metrics if "train_loss" in d)
    assert any("reward accuracy=" in e.message for e in events)
    csv = client.files.content(job.result_files[0]).text
    assert "train_reward_accuracy" in csv.splitlines()[0]

    adapter = Adapter.objects.get(pk=job.model_extra["adapter_id"])
    scores = held_out_reward_accuracy(tiny_base_model.path, adapter.path)
    assert scores["pairs"] == len(HELD_OUT)
    assert scores["reward_accuracy"] >= 0.875 and scores["reward_margin"] > 0, scores
