"""The Content Security Policy in a real browser: the admin pages, our pages with inline scripts and the API
docs load without a single CSP violation, and the nonce-carrying scripts actually run."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from tests.reliability.world import World, grow

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow, pytest.mark.heavy]
CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")


def test_admin_pages_run_under_the_csp_without_violations(live_url, make_team, make_user, tiny_base_model,
                                                           data_dir):
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: `make install-test` installs Debian's chromium package")
    from playwright.sync_api import sync_playwright

    from catalog.models import BaseModel

    team = make_team("alpha")
    boss = make_user("boss", team, "admin", password="pw-For-tests-123")
    encoder = BaseModel.objects.create(name="encoder", kind="encoder", path=str(data_dir / "enc"))
    world = grow(World(team=team, owner=boss, encoder=encoder), base_model=tiny_base_model, data_dir=data_dir, n=1)
    pages = ["/admin/", "/admin/training/trainingtask/", f"/admin/training/trainingtask/{world.first['task'].pk}/change/",
             f"/admin/classifier/classifiertask/{world.first['classifier'].pk}/change/",
             "/admin/datasets_app/datasetversion/", "/api/docs", "/v1/docs"]
    violations: list[str] = []
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                        args=["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"])
            page = browser.new_page()
            page.on("console", lambda m: violations.append(f"{page.url}: {m.text}")
                    if "Content Security Policy" in m.text or "Content-Security-Policy" in m.text else None)
            page.goto(f"{live_url}/admin/login/")
            page.fill("input[name=username]", "boss")
            page.fill("input[name=password]", "pw-For-tests-123")
            page.click("input[type=submit]")
            page.wait_for_url(re.compile(r"/admin/$"))
            for path in pages:
                response = page.goto(f"{live_url}{path}")
                assert response.status == 200, path
                assert "script-src 'self' 'nonce-" in response.headers["content-security-policy"]
                page.wait_for_load_state("networkidle")
                if "/trainingtask/" in path and path.endswith("/change/"):
                    # The live-progress script (inline, with the nonce) ran and filled in the status.
                    page.wait_for_function("document.getElementById('lp-status').textContent.trim().length > 0")
            browser.close()
    finally:
        os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
    assert not violations, "\n".join(violations)
