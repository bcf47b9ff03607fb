"""The model server as a real process (``manage.py serve_models``): batching across adapters with the same greedy
answers as alone, streaming, disconnects, the bounded queue, adapters servable the moment they exist, and team
visibility enforced by the web side in front of it."""

from __future__ import annotations

import http.client
import json
import shutil
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.utils import timezone

from accounts.visibility import Principal
from core.errors import NotFound, RateLimited
from serving import inference, services
from serving.client import engine_generate, engine_generate_stream
from serving.inference import GenerationRequest, GenerationResult
from tests.training.lifecycle_helpers import save_tiny_adapter
from training.models import Adapter

QUESTIONS = ["What is the warranty period?", "How long is the return window?", "What is the hotline number?",
             "Is shipping free?"]


def ask(question: str, max_new_tokens: int = 24, **options) -> GenerationRequest:
    return GenerationRequest(messages=[{"role": "user", "content": question}], max_new_tokens=max_new_tokens,
                             **options)


@pytest.fixture
def via_server(settings, model_server):
    settings.SERVING_URL = model_server.url
    return model_server


def raw_generate(server, base: str, request: GenerationRequest, adapter=None):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    body = {"base_path": base, "adapter_key": adapter and f"k-{adapter.name}",
            "adapter_path": adapter and str(adapter), "request": request.__dict__}
    conn.request("POST", "/generate", body=json.dumps(body), headers={"Content-Type": "application/json"})
    return conn, conn.getresponse()


def test_concurrent_requests_on_different_adapters_decode_exactly_as_each_alone(via_server, tiny_model_dir,
                                                                                 tiny_adapters):
    base = str(tiny_model_dir)
    jobs = [(None, QUESTIONS[0]), (tiny_adapters[0], QUESTIONS[0]), (tiny_adapters[1], QUESTIONS[1]),
            (tiny_adapters[2], QUESTIONS[2]), (tiny_adapters[0], QUESTIONS[3]), (None, QUESTIONS[1])]

    def run(job):
        adapter, question = job
        return engine_generate(base_path=base, adapter_key=adapter and f"k-{adapter.name}",
                               adapter_path=adapter and str(adapter), request=ask(question, 40)).text

    alone = [run(job) for job in jobs]
    with ThreadPoolExecutor(len(jobs)) as pool:
        together = list(pool.map(run, jobs))
    assert together == alone
    assert via_server.health()["max_batch_seen"] >= 2  # they really shared decoding steps
    assert alone[1] != alone[0]  # the adapter changes the answer: its rows got their LoRA
    # and the answers are PEFT's own greedy generation, adapter by adapter
    for (adapter, question), text in zip(jobs[:3], alone[:3], strict=True):
        key = adapter and f"ref-{adapter.name}"
        assert inference.generate(base, key, adapter and str(adapter), ask(question, 40)).text == text


def test_the_stream_yields_the_answer_piece_by_piece_then_the_result(via_server, tiny_model_dir, tiny_adapters):
    kwargs = {"base_path": str(tiny_model_dir), "adapter_key": "k-lora-1", "adapter_path": str(tiny_adapters[0])}
    whole = engine_generate(**kwargs, request=ask(QUESTIONS[0], 30))
    pieces = list(engine_generate_stream(**kwargs, request=ask(QUESTIONS[0], 30)))
    assert isinstance(pieces[-1], GenerationResult) and len(pieces) > 3
    assert "".join(pieces[:-1]) == whole.text and pieces[-1].completion_tokens == 30
    assert pieces[-1].finish_reason == "length"


def test_sampling_with_a_seed_repeats_and_stop_strings_cut_the_answer(via_server, tiny_model_dir):
    kwargs = {"base_path": str(tiny_model_dir), "adapter_key": None, "adapter_path": None}
    first = engine_generate(**kwargs, request=ask(QUESTIONS[0], 30, temperature=1.0, seed=5))
    again = engine_generate(**kwargs, request=ask(QUESTIONS[0], 30, temperature=1.0, seed=5))
    assert first.text == again.text
    greedy = engine_generate(**kwargs, request=ask(QUESTIONS[0], 30)).text
    stop = greedy[5:8]
    cut = engine_generate(**kwargs, request=ask(QUESTIONS[0], 30, stop=[stop]))
    assert cut.text == greedy[:greedy.find(stop)] and cut.finish_reason == "stop"


def test_a_client_that_disconnects_stops_its_decoding(via_server, tiny_model_dir):
    before = via_server.health()
    conn, response = raw_generate(via_server, str(tiny_model_dir), ask(QUESTIONS[1], 400))
    for _ in range(3):
        assert "text" in json.loads(response.readline())
    response.close()
    conn.close()
    deadline = time.monotonic() + 20
    while via_server.health()["cancelled"] == before["cancelled"] and time.monotonic() < deadline:
        time.sleep(0.05)
    after = via_server.health()
    assert after["cancelled"] == before["cancelled"] + 1 and after["completed"] == before["completed"]
    assert after["tokens"] - before["tokens"] < 400 and after["active"] == 0


def test_a_full_queue_answers_429_with_retry_after(via_server, tiny_model_dir):
    held = [raw_generate(via_server, str(tiny_model_dir), ask(QUESTIONS[0], 400)) for _ in range(6)]
    try:
        assert all(r.status == 200 for _, r in held)  # 4 decoding + 2 waiting
        conn, response = raw_generate(via_server, str(tiny_model_dir), ask(QUESTIONS[0], 4))
        assert response.status == 429 and int(response.getheader("Retry-After")) >= 1
        conn.close()
        with pytest.raises(RateLimited) as excinfo:
            engine_generate_stream(base_path=str(tiny_model_dir), adapter_key=None, adapter_path=None,
                                   request=ask(QUESTIONS[0], 4))
        assert excinfo.value.status == 429 and excinfo.value.retry_after >= 1
    finally:
        for conn, response in held:
            response.close()
            conn.close()


@pytest.fixture
def alpha_beta(make_team, make_user, tiny_base_model):
    alpha, beta = make_team("alpha"), make_team("beta")
    alice, bob = make_user("alice", alpha, "member"), make_user("bob", beta, "member")
    return {"alpha": alpha, "alice": Principal(user=alice, team=alpha), "bob": Principal(user=bob, team=beta)}


@pytest.mark.django_db
def test_an_adapter_that_appears_after_the_server_started_is_served_at_once(via_server, alpha_beta, tiny_base_model,
                                                                             tiny_model_dir, data_dir):
    folder = save_tiny_adapter(tiny_model_dir, data_dir / "adapters" / "fresh", seed=11)
    Adapter.objects.create(name="fresh", model_name="fresh", team=alpha_beta["alpha"], base_model=tiny_base_model,
                           path=str(folder), source=Adapter.Source.SCANNED, created_at=timezone.now())
    assert "adapter:alpha/fresh" in [m.id for m in services.chat_model_list(user=alpha_beta["alice"])]
    hi = [{"role": "user", "content": QUESTIONS[0]}]
    served = services.chat_completion_create(user=alpha_beta["alice"], model="adapter:alpha/fresh", messages=hi,
                                             max_tokens=20)
    alone = inference.generate(str(tiny_model_dir), "ref-fresh", str(folder), ask(QUESTIONS[0], 20))
    assert served.text == alone.text
    assert served.text != services.chat_completion_create(user=alpha_beta["alice"], model="tiny-llama",
                                                          messages=hi, max_tokens=20).text


@pytest.mark.django_db
def test_team_b_cannot_reach_team_a_adapters_through_the_server(via_server, alpha_beta, tiny_base_model,
                                                                tiny_adapters, data_dir):
    path = shutil.copytree(tiny_adapters[0], data_dir / "adapters" / "secret")
    Adapter.objects.create(name="secret", model_name="secret", team=alpha_beta["alpha"],
                           base_model=tiny_base_model, path=str(path))
    hi = [{"role": "user", "content": QUESTIONS[0]}]
    with pytest.raises(NotFound):
        services.chat_completion_create(user=alpha_beta["bob"], model="adapter:alpha/secret", messages=hi)
    with pytest.raises(NotFound):
        services.chat_completion_stream(user=alpha_beta["bob"], model="adapter:alpha/secret", messages=hi)
    assert not [m for m in services.chat_model_list(user=alpha_beta["bob"]) if m.id.startswith("adapter:")]
    assert services.chat_completion_create(user=alpha_beta["alice"], model="adapter:alpha/secret", messages=hi,
                                           max_tokens=4).completion_tokens == 4
