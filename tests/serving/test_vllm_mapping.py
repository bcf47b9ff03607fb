"""The vLLM route, unit-tested against a local fake of vLLM's HTTP API (vLLM cannot run on these CPU-only
machines; this checks our side of the protocol and the name mapping, not that vLLM works): adapters registered
once with ``/v1/load_lora_adapter``, our names sent as vLLM's LoRA names, team visibility still ours."""

from __future__ import annotations

import json
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from accounts.visibility import Principal
from core.errors import NotFound
from serving import services, vllm
from serving.inference import GenerationResult
from training.models import Adapter

pytestmark = pytest.mark.django_db
HI = [{"role": "user", "content": "What is the warranty period?"}]


class FakeVllm(BaseHTTPRequestHandler):
    calls: list[tuple[str, dict]] = []
    loras: dict[str, str] = {}

    def log_message(self, *args) -> None:
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.calls.append((self.path, body))
        if self.path == "/v1/load_lora_adapter":
            if body["lora_name"] in self.loras:
                return self._send(400, b'{"message": "The lora adapter is already loaded."}')
            self.loras[body["lora_name"]] = body["lora_path"]
            return self._send(200, b"Success")
        if self.path == "/tokenize":
            return self._send(200, json.dumps({"count": 7, "max_model_len": 2048, "tokens": [1] * 7}).encode())
        model = body["model"]
        if model not in self.loras and model != "tiny-llama":
            return self._send(404, b'{"message": "model does not exist"}')
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        for word in ["served ", "by ", model]:
            chunk = {"choices": [{"index": 0, "delta": {"content": word}, "finish_reason": None}]}
            self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
        self.wfile.write(b'data: {"choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]}\n\n')
        usage = {"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}}
        self.wfile.write(f"data: {json.dumps(usage)}\n\ndata: [DONE]\n\n".encode())

    def _send(self, status: int, data: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def fake_vllm(settings):
    FakeVllm.calls, FakeVllm.loras = [], {}
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeVllm)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    settings.VLLM_URL = f"http://127.0.0.1:{server.server_address[1]}"
    vllm._registered.clear()
    yield FakeVllm
    server.shutdown()
    server.server_close()


@pytest.fixture
def people(make_team, make_user, tiny_base_model, tiny_adapters, data_dir):
    alpha, beta = make_team("alpha"), make_team("beta")
    path = shutil.copytree(tiny_adapters[0], data_dir / "adapters" / "faq")
    adapter = Adapter.objects.create(name="faq", model_name="faq-bot", team=alpha, base_model=tiny_base_model,
                                     path=str(path), stage=Adapter.Stage.PRODUCTION, production_slot=True)
    return {"adapter": adapter, "alice": Principal(user=make_user("alice", alpha, "member"), team=alpha),
            "bob": Principal(user=make_user("bob", beta, "member"), team=beta)}


def test_our_adapter_names_map_to_a_lora_registered_once_with_vllm(fake_vllm, people):
    adapter = people["adapter"]
    for name in ("adapter:alpha/faq", "alpha/faq-bot:production"):
        result = services.chat_completion_create(user=people["alice"], model=name, messages=HI, max_tokens=3)
        assert result.text == f"served by adapter-{adapter.pk}" and result.completion_tokens == 3
        assert result.finish_reason == "length"
    loads = [body for path, body in fake_vllm.calls if path == "/v1/load_lora_adapter"]
    assert loads == [{"lora_name": f"adapter-{adapter.pk}", "lora_path": adapter.path}]
    chats = [body for path, body in fake_vllm.calls if path == "/v1/chat/completions"]
    assert {c["model"] for c in chats} == {f"adapter-{adapter.pk}"} and chats[0]["max_tokens"] == 3


def test_the_base_model_goes_by_its_served_name_and_streams(fake_vllm, people):
    pieces = list(services.chat_completion_stream(user=people["alice"], model="tiny-llama", messages=HI))
    assert pieces[:-1] == ["served ", "by ", "tiny-llama"] and isinstance(pieces[-1], GenerationResult)
    assert not [p for p, _ in fake_vllm.calls if p == "/v1/load_lora_adapter"]


def test_another_team_never_reaches_vllm_with_our_adapter(fake_vllm, people):
    with pytest.raises(NotFound):
        services.chat_completion_create(user=people["bob"], model="adapter:alpha/faq", messages=HI)
    assert fake_vllm.calls == []
