"""Rate limits and login throttling count in the default cache: with a shared one (the database, the default,
or Redis) two web processes agree on one count. Each process here is a real ``manage.py`` process."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid

import pytest
import redis
from django.core.management import call_command
from django.test import override_settings

from config.env import parse_cache_url
from tests.training.conftest import ROOT, worker_env  # noqa: F401 - the fixture

pytestmark = pytest.mark.django_db(transaction=True)

CONSUME = """
import json
from core.ratelimit import consume
from accounts.throttle import locked_for, record_failure
refused = sum(1 for _ in range({n}) if consume({key!r}, 1, limit={limit}) is not None)
for _ in range({failures}):
    record_failure({key!r}, {ip!r})
print(json.dumps({{"refused": refused, "locked": locked_for({key!r}, {ip!r}) > 0}}))
"""


def run_process(env: dict, cache_url: str, **values) -> dict:
    code = CONSUME.format(**values)
    out = subprocess.run([sys.executable, "manage.py", "shell", "-c", code], cwd=ROOT, capture_output=True,
                         text=True, timeout=120, env={**env, "CACHE_URL": cache_url})
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def redis_url() -> str:
    url = "redis://127.0.0.1:6379/14"
    try:
        redis.Redis.from_url(url, socket_connect_timeout=2).ping()
    except redis.exceptions.ConnectionError as exc:
        pytest.fail(f"Redis must run at 127.0.0.1:6379 for this test: {exc}")
    return url


@pytest.mark.parametrize("cache", ["db", "redis"])
def test_two_processes_share_one_count(cache, worker_env, settings):  # noqa: F811 - the fixture
    settings.LOGIN_FAILURE_LIMIT = 3
    url = redis_url() if cache == "redis" else "db"
    if cache == "db":
        with override_settings(CACHES={"default": parse_cache_url("db")}):
            call_command("createcachetable", verbosity=0)
    # Keys of their own: Redis keeps its counters between runs.
    key, ip = f"team-{uuid.uuid4().hex}", f"10.{uuid.uuid4().int % 250}.0.9"
    env = {**worker_env, "LOGIN_FAILURE_LIMIT": "3"}
    first = run_process(env, url, key=key, ip=ip, n=4, limit=6, failures=2)
    second = run_process(env, url, key=key, ip=ip, n=4, limit=6, failures=1)
    # 8 requests against a limit of 6 in one window: the second process sees the first one's 4.
    assert (first["refused"], second["refused"]) == (0, 2)
    # 2 failed logins for one name in one process and 1 in the other reach the limit of 3 together.
    assert (first["locked"], second["locked"]) == (False, True)


def test_an_unknown_cache_url_stops_start_up_with_a_clear_message():
    from django.core.exceptions import ImproperlyConfigured

    with pytest.raises(ImproperlyConfigured, match="CACHE_URL"):
        parse_cache_url("memcached://x")
