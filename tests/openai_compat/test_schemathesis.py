"""schemathesis against both OpenAPI schemas on a live server: no server errors, responses match the schemas."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow, pytest.mark.heavy]


@pytest.fixture
def authed(make_team, make_user, token_for, tiny_base_model, client, django_user_model):
    team = make_team("alpha")
    alice = make_user("alice", team, "admin")
    staff = django_user_model.objects.create_superuser("root", password="x")
    client.force_login(staff)
    return token_for(alice, team), client


@pytest.mark.parametrize("api", ["api", "v1"])
def test_schema_fuzzing_finds_no_server_error(api, authed, live_url, tmp_path):
    token, client = authed
    schema = client.get(f"/{api}/openapi.json")
    assert schema.status_code == 200
    path = tmp_path / f"{api}.json"
    path.write_text(json.dumps(schema.json()))
    st = Path(sys.executable).with_name("st")
    result = subprocess.run(
        [str(st), "run", str(path), "--url", f"{live_url}/{api}", "-H", f"Authorization: Bearer {token}",
         "--checks", "not_a_server_error,response_schema_conformance", "--max-examples", "5",
         "--phases", "examples,coverage,fuzzing", "--generation-deterministic", "--request-timeout", "60",
         "--no-color"],
        capture_output=True, text=True, timeout=900)
    print(result.stdout[-3000:])
    assert result.returncode == 0, result.stdout[-8000:] + result.stderr[-2000:]
    assert "No issues found" in result.stdout or "passed" in result.stdout
