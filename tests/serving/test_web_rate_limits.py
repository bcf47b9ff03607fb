"""A team's chat rate limit holds across two web processes: two gunicorn servers (one worker each) counting in one
Redis, in front of one model server. Requests alternate between them; past the limit both refuse with 429 and
Retry-After, which two per-process counters would not."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
import redis

from tests.serving.conftest import ROOT, model_server  # noqa: F401 - the real model server process
from tests.training.conftest import free_port, wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

REDIS_URL = "redis://127.0.0.1:6379/13"
LIMIT = 4


def gunicorn(env: dict, log_path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "gunicorn", "config.wsgi:application", "--workers", "1",
                                 "--worker-class", "gthread", "--threads", "2", "--bind", f"127.0.0.1:{port}",
                                 "--timeout", "120"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    return proc, f"http://127.0.0.1:{port}"


def chat(url: str, key: str) -> tuple[int, dict]:
    request = urllib.request.Request(f"{url}/v1/chat/completions", method="POST", headers={
        "Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        data=json.dumps({"model": "tiny-llama", "max_tokens": 2,
                         "messages": [{"role": "user", "content": "Hi"}]}).encode())
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers)


@pytest.fixture
def two_web_processes(worker_env, model_server, tmp_path):  # noqa: F811 - the imported fixture
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.exceptions.ConnectionError as exc:
        pytest.fail(f"Redis must run at 127.0.0.1:6379 for this test: {exc}")
    # A previous run's counts of the same team id in the same minute would be counted too: start from none.
    stale = client.keys("*rl:chat-*")
    if stale:
        client.delete(*stale)
    env = {**worker_env, "SERVING_URL": model_server.url, "CACHE_URL": REDIS_URL,
           "INFERENCE_TEAM_REQUESTS_PER_MINUTE": str(LIMIT)}
    servers = [gunicorn(env, tmp_path / f"gunicorn-{i}.log") for i in (1, 2)]

    def up(url):
        try:
            urllib.request.urlopen(f"{url}/admin/login/", timeout=2).close()
            return True
        except OSError:
            return False

    try:
        for _proc, url in servers:
            wait_for(lambda url=url: up(url), timeout=60, message="gunicorn")
        yield [url for _proc, url in servers]
    finally:
        for proc, _url in servers:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)


def test_the_team_rate_limit_holds_across_two_web_processes(two_web_processes, make_team, make_user, token_for,
                                                            tiny_base_model):
    first, second = two_web_processes
    alpha = make_team("alpha")
    key = token_for(make_user("alice", alpha, "member"), alpha)
    if time.time() % 60 > 45:  # the limit counts per clock minute: keep the whole exchange inside one
        time.sleep(61 - time.time() % 60)
    answers = [chat(url, key) for url in (first, second) * 3]
    statuses = [status for status, _headers in answers]
    # 4 of them pass, alternating between the servers; each server refuses the 5th and 6th request of the team
    # although it answered only two itself
    assert statuses == [200, 200, 200, 200, 429, 429], statuses
    for _status, headers in answers[4:]:
        assert 1 <= int(headers["Retry-After"]) <= 61
