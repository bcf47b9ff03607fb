"""The official openai SDK, unchanged, against gunicorn (two web processes) + the model server + a real worker:
a model trained after both servers started is chatted with at once, plain and streamed; a client that leaves
mid-stream stops its decoding on the model server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request

import pytest

from tests.serving.conftest import ROOT, ModelServerProcess
from tests.training.conftest import free_port, wait_for
from tests.training.tiny import chat_records

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


@pytest.fixture
def stack(worker_env, tmp_path):
    """``make serve`` in small: the model server, then gunicorn pointed at it (each stopped by its own group)."""
    models = ModelServerProcess(worker_env, tmp_path / "serve_models.log", max_batch=8, max_queue=8)
    port = free_port()
    env = {**worker_env, "SERVING_URL": models.url}
    with open(tmp_path / "gunicorn.log", "ab") as log:
        web = subprocess.Popen([sys.executable, "-m", "gunicorn", "config.wsgi:application", "--workers", "2",
                                "--worker-class", "gthread", "--threads", "4", "--bind", f"127.0.0.1:{port}",
                                "--timeout", "120"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True)
    url = f"http://127.0.0.1:{port}"

    def up():
        try:
            urllib.request.urlopen(f"{url}/admin/login/", timeout=2).close()
            return True
        except OSError:
            return False

    wait_for(up, timeout=60, message="gunicorn")
    yield url, models
    os.killpg(web.pid, signal.SIGTERM)
    web.wait(timeout=30)
    models.stop()


def test_the_openai_sdk_chats_through_gunicorn_and_the_model_server(stack, worker, make_team, make_user, token_for,
                                                                    tiny_base_model, tmp_path):
    import openai

    url, models = stack
    alpha, beta = make_team("alpha"), make_team("beta")
    key = token_for(make_user("alice", alpha, "member"), alpha)
    other = openai.OpenAI(base_url=f"{url}/v1", api_key=token_for(make_user("bob", beta, "member"), beta),
                          max_retries=0, timeout=60)
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=120)
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in chat_records(16)))
    uploaded = client.files.create(file=path.open("rb"), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(model="tiny-llama", training_file=uploaded.id, suffix="faq", seed=7,
                                         hyperparameters={"n_epochs": 1, "batch_size": 4})
    worker.start()
    wait_for(lambda: client.fine_tuning.jobs.retrieve(job.id).status in {"succeeded", "failed", "cancelled"},
             timeout=300, interval=1, message="the job to finish")
    job = client.fine_tuning.jobs.retrieve(job.id)
    assert job.status == "succeeded", worker.log()[-3000:]

    ids = [m.id for m in client.models.list().data]
    assert job.fine_tuned_model in ids and any(i.startswith("adapter:alpha/") for i in ids)
    hi = [{"role": "user", "content": "What is the warranty period?"}]
    plain = client.chat.completions.create(model=job.fine_tuned_model, messages=hi, max_tokens=12)
    assert plain.choices[0].message.content and plain.usage.completion_tokens <= 12
    chunks = list(client.chat.completions.create(model=job.fine_tuned_model, messages=hi, max_tokens=12,
                                                 stream=True, stream_options={"include_usage": True}))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == plain.choices[0].message.content  # greedy: the same answer, token by token
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")
    assert chunks[-1].usage.completion_tokens == plain.usage.completion_tokens
    assert models.health()["completed"] >= 2  # the answers came from the model server

    # the raw stream ends with [DONE]
    request = urllib.request.Request(f"{url}/v1/chat/completions", method="POST", headers={
        "Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        data=json.dumps({"model": job.fine_tuned_model, "messages": hi, "max_tokens": 4, "stream": True}).encode())
    with urllib.request.urlopen(request, timeout=60) as response:
        events = [line for line in response.read().decode().split("\n\n") if line]
    assert events[-1] == "data: [DONE]" and json.loads(events[0][6:])["choices"][0]["delta"]["role"] == "assistant"

    with pytest.raises(openai.NotFoundError):
        other.chat.completions.create(model=job.fine_tuned_model, messages=hi, max_tokens=4)

    # a client that leaves mid-stream: gunicorn closes the response, the web process its connection to the model
    # server, which drops the sequence long before its 400 tokens (the random base: no early end of sequence)
    before = models.health()
    request = urllib.request.Request(f"{url}/v1/chat/completions", method="POST", headers={
        "Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        data=json.dumps({"model": "tiny-llama", "messages": hi, "max_tokens": 400, "stream": True,
                         "stop": ["never-said-stop"]}).encode())
    response = urllib.request.urlopen(request, timeout=60)
    for _ in range(3):
        assert response.readline()
    response.close()
    wait_for(lambda: models.health()["cancelled"] > before["cancelled"], timeout=30, message="the cancel")
    after = models.health()
    assert after["completed"] == before["completed"] and after["tokens"] - before["tokens"] < 400
