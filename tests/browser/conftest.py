"""Browser fixtures: Debian's headless Chromium driven by Playwright against a live server and a real worker.

Playwright never downloads a browser here: it launches /usr/bin/chromium (``make install-test`` installs the
``chromium`` package when it is missing). Screenshots of the main pages go to test-artifacts/screenshots/.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from tests.training.conftest import (  # noqa: F401 - shared fixtures
    live_url,
    make_version,
    tiny_base_model,
    tiny_model_dir,
    worker,
    worker_env,
)

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
SCREENSHOTS = ROOT / "test-artifacts" / "screenshots"
PASSWORD = "pw-For-tests-123"


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: `make install-test` installs Debian's chromium package "
                    "(the browser tests never download a browser build)")
    from playwright.sync_api import sync_playwright

    # Playwright's sync API keeps an event loop in this thread; the tests also use the ORM between clicks.
    patch = pytest.MonkeyPatch()
    patch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    patch.setenv("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                     args=["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"])
        yield chromium
        chromium.close()
    patch.undo()


class Console:
    """One signed-in browser tab on the live server, with the checks every page gets."""

    def __init__(self, page, base_url: str) -> None:
        self.page = page
        self.base_url = base_url
        self.problems: list[str] = []
        page.on("requestfailed", self._check_failure)
        page.on("response", self._check_response)
        page.on("pageerror", lambda e: self.problems.append(f"javascript error {e}"))

    def _check_failure(self, request) -> None:
        if request.failure == "net::ERR_ABORTED":
            return  # the browser dropped it: a download, or a page left before its icons loaded
        self.problems.append(f"failed {request.url}: {request.failure}")

    def _check_response(self, response) -> None:
        url = response.url
        if not url.startswith(self.base_url):
            self.problems.append(f"request outside the server: {url}")  # the console must work offline
        elif "/static/" in url and response.status >= 400:
            self.problems.append(f"static file {url}: {response.status}")

    def url(self, path: str) -> str:
        return self.base_url + path

    def goto(self, path: str):
        return self.page.goto(self.url(path))

    def login(self, username: str, password: str = PASSWORD) -> Console:
        self.goto("/admin/login/")
        self.page.fill("input[name=username]", username)
        self.page.fill("input[name=password]", password)
        self.page.click("input[type=submit]")
        self.page.wait_for_url(re.compile(r"/admin/$"))
        return self

    def shot(self, name: str) -> Path:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path

    def assert_clean(self) -> None:
        assert not self.problems, self.problems


@pytest.fixture
def console(browser, live_url):  # noqa: F811 - the imported fixture
    """console() -> a fresh browser context (own cookies) on the live server; several may be open at once."""
    contexts = []

    def open_console() -> Console:
        context = browser.new_context(viewport={"width": 1400, "height": 900}, accept_downloads=True)
        context.set_default_timeout(20_000)
        contexts.append(context)
        return Console(context.new_page(), live_url)

    yield open_console
    for context in contexts:
        context.close()
