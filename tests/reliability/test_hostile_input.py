"""Hostile input: oversized and compressed bodies, archives as datasets, deep JSON, invalid UTF-8, NUL bytes,
10 MB lines, path traversal in file names, formula injection in CSV exports, fuzzed hyperparameters and chat
requests, and the chat rate limits.

Validator-level cases (every encoding and structure error, with line numbers) are in
tests/datasets_app/test_datasets_validation.py and test_datasets_property.py; schemathesis on both
OpenAPI schemas is tests/training/test_schemathesis.py.
"""

from __future__ import annotations

import gzip
import io
import json
import socket
import zipfile
import zlib

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from tests.training.tiny import chat_records

pytestmark = pytest.mark.django_db

LINE = json.dumps({"messages": [{"role": "user", "content": "What is the warranty?"},
                                {"role": "assistant", "content": "Two years."}]})


@pytest.fixture
def alpha(make_team, make_user, token_for, bearer):
    team = make_team("alpha")
    alice = make_user("alice", team, "member")
    return team, alice, bearer(token_for(alice, team))


def upload(client, body: bytes, filename: str = "faq.jsonl", **extra):
    f = io.BytesIO(body)
    f.name = filename
    return client.post("/api/datasets", {"name": "faq", "file": f}, **extra)


def stored_files(data_dir):
    root = data_dir / "datasets"
    return sorted(p.relative_to(data_dir).as_posix() for p in root.rglob("*") if p.is_file()) if root.exists() else []


# ---------------------------------------------------------------------------------------------- bodies


@pytest.mark.slow
@pytest.mark.mysql
@pytest.mark.django_db(transaction=True)
def test_oversized_upload_is_answered_413_before_the_body_is_sent(make_team, make_user, token_for, server):
    """A raw socket sends only the headers of a 5 GB upload: the 413 arrives without a byte of the body."""
    team = make_team("alpha")
    token = token_for(make_user("alice", team, "member"), team)
    srv = server(MAX_UPLOAD_BYTES="1048576")
    for path in ("/api/datasets", "/v1/files"):
        head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
                f"Content-Type: multipart/form-data; boundary=XX\r\nContent-Length: {5 * 1024 ** 3}\r\n\r\n")
        # Headers only: a server that waited for the body would never answer (the socket times out).
        with socket.create_connection(("127.0.0.1", srv.port), timeout=30) as sock:
            sock.sendall(head.encode())
            response = _read_response(sock)
        assert response.startswith(b"HTTP/1.1 413"), response[:300]
        assert b"\r\nContent-Length: " in response.split(b"\r\n\r\n")[0]  # the client knows where it ends
        assert b"file_too_large" in response and b"MAX_UPLOAD_BYTES" in response
    assert "Traceback" not in srv.log()


def _read_response(sock) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), 0)
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br", "x-gzip, gzip"])
def test_compressed_request_bodies_are_refused_with_415(alpha, encoding, data_dir):
    _team, _alice, c = alpha
    payload = gzip.compress((LINE + "\n").encode() * 20) if "gzip" in encoding else zlib.compress(b"x" * 100)
    r = c.post("/api/training/tasks", payload, content_type="application/json", HTTP_CONTENT_ENCODING=encoding)
    assert r.status_code == 415 and r.json()["code"] == "unsupported_content_encoding"
    r = upload(c, payload, HTTP_CONTENT_ENCODING=encoding)
    assert r.status_code == 415
    r = c.post("/v1/files", {"purpose": "fine-tune", "file": io.BytesIO(payload)}, HTTP_CONTENT_ENCODING=encoding)
    assert r.status_code == 415 and r.json()["error"]["code"] == "unsupported_content_encoding"
    assert stored_files(data_dir) == []


def _zip_bomb() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("faq.jsonl", b"\n" * (50 * 1024 * 1024))  # 50 MB of newlines in about 50 KB
    return buf.getvalue()


@pytest.mark.parametrize("kind,body", [
    ("zip", _zip_bomb()),
    ("gzip", gzip.compress((LINE + "\n").encode() * 100)),
    ("xz", __import__("lzma").compress(b"{}\n" * 100)),
    ("bzip2", __import__("bz2").compress(b"{}\n" * 100)),
])
def test_archives_uploaded_as_datasets_are_refused_by_their_magic_bytes(alpha, kind, body, data_dir):
    _team, _alice, c = alpha
    r = upload(c, body, filename="faq.jsonl")  # the name lies; the bytes do not
    assert r.status_code == 422
    errors = r.json()["errors"]
    assert errors[0]["code"] == "compressed_file" and kind in errors[0]["message"]
    assert stored_files(data_dir) == []


def test_deeply_nested_json_bodies_are_a_400_not_a_crash(alpha):
    _team, _alice, c = alpha
    for depth in (1000, 100_000):
        body = "[" * depth + "]" * depth
        r = c.post("/api/training/tasks", body, content_type="application/json")
        assert r.status_code == 400, r.content[:200]
        r = c.post("/v1/chat/completions", body, content_type="application/json")
        assert r.status_code == 400 and r.json()["error"]["message"]
    nested = '{"name": "x", "base_model": "m", "train_version": "v", "params": ' + '{"a": ' * 5000 + "{}" \
        + "}" * 5000 + "}"
    r = c.post("/api/training/tasks", nested, content_type="application/json")
    assert 400 <= r.status_code < 500


def test_deeply_nested_json_in_a_dataset_is_a_reported_line_error(alpha, data_dir):
    _team, _alice, c = alpha
    deep = '{"messages": ' + "[" * 100_000 + "]" * 100_000 + "}"
    r = upload(c, ((LINE + "\n") * 3 + deep + "\n").encode())
    assert r.status_code == 422
    codes = {e["code"] for e in r.json()["errors"]}
    assert "nesting_too_deep" in codes
    assert stored_files(data_dir) == []


def test_invalid_utf8_and_nul_bytes_are_4xx_everywhere(alpha, data_dir):
    _team, _alice, c = alpha
    for body in (b'{"name": "\xff\xfe"}', b'{"name": "a\x00b"}', b'\x00\x00\x00'):
        r = c.post("/api/training/tasks", body, content_type="application/json")
        assert 400 <= r.status_code < 500, (body, r.content)
        r = c.post("/v1/fine_tuning/jobs", body, content_type="application/json")
        assert 400 <= r.status_code < 500, (body, r.content)
    # NUL escaped inside valid JSON: a clean parameter error, nothing stored.
    r = c.post("/api/teams/alpha%00/members", {"username": "bob\u0000", "role": "viewer"},
               content_type="application/json")
    assert 400 <= r.status_code < 500
    for data in ((LINE + "\n").encode() * 3 + b'{"messages": "\xff\xfe"}\n',
                 (LINE + "\n").encode() * 3 + b'{"mess\x00ages": []}\n'):
        r = upload(c, data)
        assert r.status_code == 422 and r.json()["errors"][0]["code"] == "invalid_encoding"
    assert stored_files(data_dir) == []
    r = c.get("/api/datasets?team=%ff%fe")
    assert r.status_code < 500


def test_a_10_mb_single_line_is_refused_with_its_line_number(alpha, data_dir):
    _team, _alice, c = alpha
    huge = json.dumps({"messages": [{"role": "user", "content": "x" * (10 * 1024 * 1024)},
                                    {"role": "assistant", "content": "y"}]})
    r = upload(c, ((LINE + "\n") * 2 + huge + "\n" + (LINE + "\n") * 2).encode())
    assert r.status_code == 422
    error = r.json()["errors"][0]
    assert error["code"] == "line_too_long" and error["line"] == 3
    assert stored_files(data_dir) == []


@pytest.mark.parametrize("filename", ["../../../../etc/passwd", "..\\..\\windows\\system32\\x.jsonl",
                                      "/etc/cron.d/evil.jsonl", "a/../../b.jsonl", "\x00evil.jsonl", "....//x.jsonl",
                                      "%2e%2e%2fescape.jsonl", "CON", ""])
def test_file_names_never_become_paths(alpha, data_dir, filename):
    _team, _alice, c = alpha
    r = upload(c, (LINE + "\n").encode() * 12, filename=filename)
    assert r.status_code == 201, r.content
    version = r.json()
    assert stored_files(data_dir) == [f"datasets/alpha/{version['sha256']}.jsonl"]
    assert "/" not in version["source_filename"] and "\\" not in version["source_filename"]
    assert "\x00" not in version["source_filename"]
    f = io.BytesIO((LINE + "\n").encode() * 13)
    f.name = filename
    r = c.post("/v1/files", {"purpose": "fine-tune", "file": f}, HTTP_AUTHORIZATION=c.defaults["HTTP_AUTHORIZATION"])
    assert r.status_code == 200, r.content
    assert all(p.startswith("datasets/alpha/") and p.count("/") == 2 for p in stored_files(data_dir))


# ---------------------------------------------------------------------------------------------- CSV exports


def test_csv_exports_escape_formulas():
    from core.csv_export import to_csv

    text = to_csv(["a", "b"], [["=HYPERLINK(\"http://evil\")", "+1+2"], ["-2+3", "@SUM(A1)"], ["\t=1", "\r=1"],
                               [-0.5, 3], ["plain", "a=b"]])
    rows = list(__import__("csv").reader(io.StringIO(text)))
    assert rows[1] == ["'=HYPERLINK(\"http://evil\")", "'+1+2"]
    assert rows[2] == ["'-2+3", "'@SUM(A1)"]
    assert rows[3] == ["'\t=1", "'\r=1"]
    assert rows[4] == ["-0.5", "3"]  # numbers stay numbers
    assert rows[5] == ["plain", "a=b"]


def test_votes_csv_escapes_user_comments_and_names(make_team, make_user, tiny_base_model, make_version):
    from evaluation.models import Review, Vote
    from evaluation.services import votes_csv

    review = _review(make_team, make_user, tiny_base_model, make_version)
    pair = review.pairs.get()
    voter = make_user("=cmd|' /C calc'!A0", review.run.team, "member")
    Vote.objects.create(pair=pair, reviewer=voter, choice=Vote.Choice.A, comment="=HYPERLINK(\"http://x\",\"y\")")
    rows = list(__import__("csv").reader(io.StringIO(votes_csv(review=review))))
    assert rows[1][1].startswith("'=") and rows[1][3].startswith("'=")
    assert isinstance(review, Review)


def _review(make_team, make_user, tiny_base_model, make_version):
    """A review with one pair, built directly (its services need a trained adapter)."""
    from django.utils import timezone

    from evaluation.models import EvaluationRun, Review, ReviewPair
    from training.models import Adapter

    team = make_team("alpha")
    owner = make_user("owner", team, "admin")
    adapter = Adapter.objects.create(name="ad", team=team, base_model=tiny_base_model, path="/nonexistent")
    run = EvaluationRun.objects.create(name="run", team=team, created_by=owner, status="succeeded",
                                       finished_at=timezone.now(), adapter=adapter,
                                       dataset_version=make_version(team))
    review = Review.objects.create(run=run, created_by=owner)
    ReviewPair.objects.create(review=review, order=1, prompt="p", answer_a="a", answer_b="b", adapter_side="a")
    return review


def test_results_csv_escapes_text_in_metrics(make_team, make_user, tiny_base_model, make_version):
    from accounts.visibility import Principal
    from openai_compat.files import result_file_csv
    from training.models import TrainingEvent, TrainingTask

    team = make_team("alpha")
    alice = make_user("alice", team, "member")
    task = TrainingTask.objects.create(name="t", team=team, base_model=tiny_base_model,
                                       train_version=make_version(team), status="succeeded")
    TrainingEvent.objects.create(task=task, type="metrics", message="m",
                                 data={"step": 1, "train_loss": -0.25, "valid_loss": "=1+1"})
    text = result_file_csv(Principal(user=alice), f"file-results-{task.pk}")
    assert text.splitlines()[1] == "1,-0.25,,'=1+1,"


# ---------------------------------------------------------------------------------------------- fuzzing

JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-2**70, max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=6)
KNOBS = ["n_epochs", "batch_size", "learning_rate", "learning_rate_multiplier", "lora_r", "lora_alpha",
         "lora_dropout", "max_seq_length", "max_steps", "save_steps", "seed", "quantization", "packing",
         "target_modules", "gradient_accumulation_steps", "warmup_ratio", "unknown_knob"]
HYPER = st.dictionaries(st.sampled_from(KNOBS), JSONISH | st.sampled_from(["auto", -1, 0, 10**12, 1e308, "nf4"]),
                        max_size=4)


def _clear(r, v1: bool) -> None:
    assert r.status_code < 500, r.content[:500]
    if r.status_code >= 400:
        body = r.json()
        message = body["error"]["message"] if v1 else body["detail"]
        assert isinstance(message, str) and 3 < len(message) < 2000


def test_fuzzed_hyperparameters_only_ever_get_a_clear_4xx_or_a_task(alpha, make_version, tiny_base_model):
    team, _alice, c = alpha
    version = make_version(team, chat_records(16))
    file_id = f"file-{version.pk}"

    @hsettings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    @given(params=HYPER, name=st.text(max_size=30))
    def check(params, name):
        r = c.post("/api/training/tasks", {"name": name or "n", "base_model": "tiny-llama",
                                           "train_version": version.pk, "params": params},
                   content_type="application/json")
        _clear(r, v1=False)
        r = c.post("/v1/fine_tuning/jobs", {"model": "tiny-llama", "training_file": file_id,
                                            "hyperparameters": params}, content_type="application/json")
        _clear(r, v1=True)

    check()


CHAT = st.fixed_dictionaries({
    "model": st.sampled_from(["tiny-llama", "nope", "ft:a:b:c:999", "ft:x", "", "../../etc/passwd"]),
    "messages": st.lists(st.fixed_dictionaries({
        "role": st.sampled_from(["user", "system", "assistant", "tool", "hacker"]),
        "content": st.one_of(st.text(max_size=40), st.none(), st.integers(),
                             st.lists(st.fixed_dictionaries({"type": st.sampled_from(["text", "image_url"]),
                                                             "text": st.text(max_size=10)}), max_size=2))}),
        max_size=3),
}, optional={
    "max_tokens": st.one_of(st.integers(min_value=-2**63, max_value=2**63), st.floats(), st.text(max_size=5)),
    "max_completion_tokens": st.integers(min_value=-10, max_value=10**9),
    "temperature": st.one_of(st.floats(allow_nan=True), st.integers(-5, 5)),
    "top_p": st.floats(allow_nan=True),
    "n": st.integers(-2, 5),
    "stop": st.one_of(st.text(max_size=5), st.lists(st.text(max_size=3), max_size=6)),
    "stream": st.booleans(),
})


def test_fuzzed_chat_requests_only_ever_get_a_clear_4xx_or_an_answer(alpha, tiny_base_model, settings):
    _team, _alice, c = alpha
    settings.INFERENCE_MAX_NEW_TOKENS = 8
    settings.INFERENCE_TEAM_REQUESTS_PER_MINUTE = 10**6

    @hsettings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    @given(body=CHAT)
    def check(body):
        r = c.post("/v1/chat/completions", json.dumps(body, allow_nan=True), content_type="application/json")
        _clear(r, v1=True)

    check()


# ---------------------------------------------------------------------------------------------- chat limits


def test_chat_completions_are_rate_limited_per_team_with_retry_after(alpha, tiny_base_model, settings, make_team,
                                                                     make_user, token_for, bearer):
    from django.core.cache import cache

    cache.clear()
    _team, _alice, c = alpha
    settings.INFERENCE_TEAM_REQUESTS_PER_MINUTE = 3
    settings.INFERENCE_MAX_NEW_TOKENS = 2
    body = {"model": "tiny-llama", "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}]}
    answers = [c.post("/v1/chat/completions", body, content_type="application/json") for _ in range(4)]
    assert [r.status_code for r in answers] == [200, 200, 200, 429], [r.content[:200] for r in answers]
    refused = answers[-1]
    err = refused.json()["error"]
    assert err["type"] == "rate_limit_error" and err["code"] == "rate_limit_exceeded" and "limit 3" in err["message"]
    assert 1 <= int(refused["Retry-After"]) <= 61
    # Another team has its own budget.
    beta = make_team("beta")
    other = bearer(token_for(make_user("bob", beta, "member"), beta))
    assert other.post("/v1/chat/completions", body, content_type="application/json").status_code == 200


def test_chat_completions_bound_tokens_per_team_and_minute(alpha, tiny_base_model, settings):
    from django.core.cache import cache

    cache.clear()
    _team, _alice, c = alpha
    settings.INFERENCE_MAX_NEW_TOKENS = 50
    settings.INFERENCE_TEAM_TOKENS_PER_MINUTE = 120
    body = {"model": "tiny-llama", "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}]}
    first = c.post("/v1/chat/completions", body, content_type="application/json")
    assert first.status_code == 200, first.content
    statuses = [first.status_code]
    for _ in range(3):
        statuses.append(c.post("/v1/chat/completions", body, content_type="application/json").status_code)
        if statuses[-1] == 429:
            break
    assert statuses[-1] == 429
    r = c.post("/v1/chat/completions", body, content_type="application/json")
    assert r.json()["error"]["code"] == "tokens_rate_limit_exceeded" and int(r["Retry-After"]) >= 1
    # Per request: the bounds of tests/training/test_openai_errors.py::test_chat_bounds_are_400 (max_tokens over
    # INFERENCE_MAX_NEW_TOKENS, prompts over INFERENCE_MAX_PROMPT_TOKENS) are 400s, never counted.
    settings.INFERENCE_MAX_PROMPT_TOKENS = 16
    long = {"model": "tiny-llama", "max_tokens": 1, "messages": [{"role": "user", "content": "word " * 200}]}
    r = c.post("/v1/chat/completions", long, content_type="application/json")
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
