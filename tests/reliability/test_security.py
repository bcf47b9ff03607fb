"""Security headers (dev and production), the CSP of the admin pages, admin login throttling, tokens looked up
by their hash, and downloads that never serve a path taken from the request.

``manage.py check --deploy`` with production settings is tests/test_deploy.py; token expiry, revocation,
hashing at rest and last-use tracking are tests/accounts/test_tokens.py.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from django.test import Client

from tests.reliability.world import World, grow

ROOT = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------------------------- headers


def _csp(response) -> dict[str, str]:
    header = response["Content-Security-Policy"]
    return {part.split()[0]: part.split(None, 1)[1] if " " in part else "" for part in header.split("; ")}


@pytest.mark.django_db
def test_security_headers_on_admin_pages_and_api_answers(client, make_team, make_user, token_for, bearer):
    page = client.get("/admin/login/")
    assert page.status_code == 200
    assert page["X-Content-Type-Options"] == "nosniff"
    assert page["X-Frame-Options"] == "DENY"
    assert page["Referrer-Policy"] == "same-origin"
    csp = _csp(page)
    assert csp["default-src"] == "'self'" and csp["object-src"] == "'none'"
    assert csp["frame-ancestors"] == "'none'" and csp["base-uri"] == "'self'" and csp["form-action"] == "'self'"
    assert re.fullmatch(r"'self' 'nonce-[\w-]{16,}'", csp["script-src"]), csp["script-src"]
    assert "unsafe-inline" not in csp["script-src"] and "unsafe-eval" not in csp["script-src"]
    assert _csp(client.get("/admin/login/"))["script-src"] != csp["script-src"]  # a fresh nonce per response
    team = make_team("alpha")
    api = bearer(token_for(make_user("alice", team, "member"), team)).get("/api/me")
    assert api["X-Content-Type-Options"] == "nosniff" and api["X-Frame-Options"] == "DENY"


@pytest.mark.django_db
def test_inline_scripts_of_our_pages_carry_the_response_nonce(client, make_team, make_user, tiny_base_model,
                                                              make_version, data_dir, fast_passwords):
    from catalog.models import BaseModel

    team = make_team("alpha")
    admin = make_user("boss", team, "admin")
    encoder = BaseModel.objects.create(name="encoder", kind="encoder", path=str(data_dir / "enc"))
    world = grow(World(team=team, owner=admin, encoder=encoder), base_model=tiny_base_model, data_dir=data_dir, n=1)
    client.force_login(admin)
    pages = ["/admin/", f"/admin/training/trainingtask/{world.first['task'].pk}/change/",
             f"/admin/classifier/classifiertask/{world.first['classifier'].pk}/change/"]
    inline_seen = 0
    for url in pages:
        response = client.get(url)
        assert response.status_code == 200, url
        nonce = re.search(r"'nonce-([\w-]+)'", response["Content-Security-Policy"]).group(1)
        for tag in re.findall(r"<script\b[^>]*>", response.content.decode()):
            if "src=" in tag or 'type="application/json"' in tag:
                continue
            inline_seen += 1
            assert f'nonce="{nonce}"' in tag, (url, tag)
    assert inline_seen >= 1  # the check looked at real inline scripts


def test_templates_use_no_inline_handlers_and_no_unnonced_inline_scripts():
    """script-src has no 'unsafe-inline': onclick=..., javascript: URLs and inline scripts without the nonce
    would silently stop working in the browser."""
    problems = []
    for path in sorted((ROOT / "templates").rglob("*.html")):
        text = path.read_text(encoding="utf-8")
        rel = path.relative_to(ROOT)
        for match in re.finditer(r"<[a-zA-Z][^>]*\son[a-z]+\s*=", text):
            problems.append(f"{rel}: inline event handler {match.group(0)[:60]!r}")
        if re.search(r"javascript:", text, re.I):
            problems.append(f"{rel}: javascript: URL")
        for tag in re.findall(r"<script\b[^>]*>", text):
            if "src=" not in tag and "application/json" not in tag and "request.csp_nonce" not in tag:
                problems.append(f"{rel}: inline <script> without nonce=\"{{{{ request.csp_nonce }}}}\"")
    assert not problems, "\n".join(problems)


def test_production_settings_send_hsts_secure_cookies_and_redirect_to_https(tmp_path):
    """DJANGO_DEBUG=0 in a fresh process, as a deployment runs it."""
    # An HTML page that needs neither the database nor collected static files (production serves hashed
    # static names, which exist only after collectstatic).
    script = (
        "import json; from django.conf import settings as s; from django.test import Client; c = Client();"
        "plain = c.get('/no-such-page/');"
        "r = c.get('/no-such-page/', secure=True);"
        "print(json.dumps({'plain': [plain.status_code, plain.get('Location', '')], 'status': r.status_code,"
        " 'headers': dict(r.headers), 'cookies': [s.SESSION_COOKIE_SECURE, s.CSRF_COOKIE_SECURE,"
        " s.SESSION_COOKIE_HTTPONLY]}))"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "PYTEST"))}
    env.update({"DJANGO_DEBUG": "0", "DJANGO_SECRET_KEY": "k7#Vq2!pX9zL4@mN8&rT1^wY6*eB3%uJ0$hG5(dF)sA-cQ+iO=lK~vZ",
                "DJANGO_ALLOWED_HOSTS": "testserver", "DATA_DIR": str(tmp_path),
                "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}"})
    result = subprocess.run([sys.executable, "manage.py", "shell", "-c", script], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["plain"][0] == 301 and out["plain"][1].startswith("https://")
    headers = out["headers"]
    assert out["status"] == 404
    assert headers["Strict-Transport-Security"] == "max-age=31536000; includeSubDomains; preload"
    assert headers["X-Frame-Options"] == "DENY" and headers["X-Content-Type-Options"] == "nosniff"
    assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
    assert out["cookies"] == [True, True, True]


# --------------------------------------------------------------------------------------------- login throttling


@pytest.mark.django_db
def test_admin_login_is_throttled_after_repeated_failures(make_team, make_user, settings, monkeypatch,
                                                          fast_passwords):
    import time

    from django.core.cache import cache

    from accounts import throttle

    cache.clear()
    settings.LOGIN_FAILURE_LIMIT = 3
    settings.LOGIN_LOCKOUT_SECONDS = 900
    team = make_team("alpha")
    make_user("alice", team, "admin", password="right-Password-1")
    make_user("bob", team, "admin", password="right-Password-2")
    client = Client()

    def login(username, password):
        return client.post("/admin/login/?next=/admin/", {"username": username, "password": password})

    for _ in range(3):
        r = login("alice", "wrong")
        assert r.status_code == 200 and "Please enter the correct username" in r.content.decode()
    locked = login("alice", "right-Password-1")  # even the right password, while locked
    assert locked.status_code == 200 and "Too many failed login attempts" in locked.content.decode()
    assert "_auth_user_id" not in client.session
    assert login("bob", "right-Password-2").status_code == 302  # another account is not locked with it
    client.logout()

    later = time.time() + 901
    monkeypatch.setattr(throttle.time, "time", lambda: later)
    assert login("alice", "right-Password-1").status_code == 302  # the window passed


@pytest.mark.django_db
def test_admin_login_is_throttled_per_address_across_usernames(make_team, make_user, settings, fast_passwords):
    from django.core.cache import cache

    cache.clear()
    settings.LOGIN_FAILURE_LIMIT = 100
    settings.LOGIN_FAILURE_LIMIT_PER_IP = 5
    make_user("carol", make_team("alpha"), "admin", password="right-Password-3")
    client = Client(REMOTE_ADDR="203.0.113.9")
    for i in range(5):
        client.post("/admin/login/", {"username": f"guess{i}", "password": "x"})
    r = client.post("/admin/login/", {"username": "carol", "password": "right-Password-3"})
    assert "Too many failed login attempts" in r.content.decode()
    other = Client(REMOTE_ADDR="198.51.100.7")
    assert other.post("/admin/login/", {"username": "carol", "password": "right-Password-3"}).status_code == 302


# --------------------------------------------------------------------------------------------- tokens


@pytest.mark.django_db
def test_tokens_are_found_by_their_hash_never_by_the_secret(make_team, make_user, token_for,
                                                            django_assert_max_num_queries):
    import hashlib

    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from accounts.models import ApiToken
    from accounts.services import api_token_authenticate

    team = make_team("alpha")
    secret = token_for(make_user("alice", team, "member"), team)
    digest = hashlib.sha256(secret.encode()).hexdigest()
    with CaptureQueriesContext(connection) as ctx:
        assert api_token_authenticate(secret) is not None
    sql = " ".join(q["sql"] for q in ctx.captured_queries)
    assert digest in sql and secret not in sql and secret[12:] not in sql
    row = ApiToken.objects.values().get()
    assert secret not in json.dumps(row, default=str)  # only the prefix and the hash are stored
    assert api_token_authenticate(secret[:-1] + ("A" if secret[-1] != "A" else "B")) is None
    assert api_token_authenticate(secret.upper() if secret.upper() != secret else secret.lower()) is None
    with django_assert_max_num_queries(3):  # an unknown token costs one indexed lookup, not a scan
        assert api_token_authenticate("lst_" + "x" * 43) is None


# --------------------------------------------------------------------------------------------- downloads

TRAVERSALS = ["../../../../etc/passwd", "..%2F..%2F..%2Fetc%2Fpasswd", "%2e%2e/%2e%2e/etc/passwd", "/etc/passwd",
              "..\\..\\etc\\passwd", "1/../../../../etc/passwd", "1%00.jsonl", "file-..%2F..%2Fetc%2Fpasswd",
              "ftjob-1/../../etc/passwd", "-1", "99999999999999999999999"]


@pytest.mark.django_db
def test_downloads_never_serve_a_path_from_the_request(make_team, make_user, token_for, tiny_base_model, data_dir,
                                                       fast_passwords):
    from django.urls import reverse

    from catalog.models import BaseModel
    from config.api import api, v1

    (data_dir / "secret.txt").write_text("root:x:0:0:secret")
    team = make_team("alpha")
    admin = make_user("boss", team, "admin")
    encoder = BaseModel.objects.create(name="encoder", kind="encoder", path=str(data_dir / "enc"))
    world = grow(World(team=team, owner=admin, encoder=encoder), base_model=tiny_base_model, data_dir=data_dir, n=1)
    token = token_for(admin, team)
    client = Client(HTTP_AUTHORIZATION=f"Bearer {token}", raise_request_exception=False)
    session = Client(raise_request_exception=False)
    session.force_login(admin)

    # Every route that answers with a file (found by name, so a new one is covered too).
    templates = []
    for prefix, ninja in (("/api", api), ("/v1", v1)):
        for path, router in ninja._routers:
            for route_path in router.path_operations:
                full = re.sub(r"/+", "/", f"{prefix}/{path}/{route_path}")
                if re.search(r"download|content|export|ollama|\.csv|\.png|report", full):
                    templates.append(full)
    assert len(templates) >= 8, templates
    admin_urls = [reverse("admin:training_adapter_download", args=[1]).replace("/1/", "/{x}/"),
                  reverse("admin:evaluation_review_csv", args=[1]).replace("/1/", "/{x}/"),
                  reverse("admin:datasets_app_datasetversion_download", args=[1]).replace("/1/", "/{x}/")]
    served = []
    for template in templates + admin_urls:
        for evil in TRAVERSALS:
            url = re.sub(r"\{[a-z_]+\}", lambda _m, e=evil: e, template)
            for c in (client, session):
                r = c.get(url) if "{x}" not in template else c.get(template.replace("{x}", evil))
                body = b"".join(r.streaming_content) if getattr(r, "streaming", False) else r.content
                if r.status_code == 200 or b"root:x" in body or r.status_code >= 500:
                    served.append(f"{url} -> {r.status_code}")
    assert not served, served

    # A row pointing outside DATA_DIR (a damaged or tampered database) is refused too.
    from datasets_app.models import DatasetVersion

    DatasetVersion.objects.filter(pk=world.first["version"].pk).update(path="../secret.txt")
    for url in (f"/api/dataset-versions/{world.first['version'].pk}/download",
                f"/v1/files/file-{world.first['version'].pk}/content"):
        r = client.get(url)
        body = b"".join(r.streaming_content) if getattr(r, "streaming", False) else r.content
        assert 400 <= r.status_code < 500 and b"root:x" not in body, (url, r.status_code)
