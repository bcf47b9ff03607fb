"""Production settings pass Django's deployment checklist and refuse unsafe defaults."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def manage(*args, env_extra: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DJANGO_")}
    env.update({"DATA_DIR": str(tmp_path), **env_extra})
    return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)


def test_check_deploy_is_clean_with_production_environment(tmp_path):
    result = manage("check", "--deploy", "--fail-level", "WARNING", tmp_path=tmp_path, env_extra={
        "DJANGO_DEBUG": "0",
        "DJANGO_SECRET_KEY": "k7#Vq2!pX9zL4@mN8&rT1^wY6*eB3%uJ0$hG5(dF)sA-cQ+iO=lK~vZ",
        "DJANGO_ALLOWED_HOSTS": "studio.example.com",
    })
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_production_without_a_secret_key_refuses_to_start(tmp_path):
    result = manage("check", tmp_path=tmp_path, env_extra={"DJANGO_DEBUG": "0"})
    assert result.returncode != 0
    assert "DJANGO_SECRET_KEY must be set" in result.stderr


def test_a_bad_boolean_in_the_environment_fails_loudly(tmp_path):
    result = manage("check", tmp_path=tmp_path, env_extra={"DJANGO_DEBUG": "maybe"})
    assert result.returncode != 0
    assert "DJANGO_DEBUG must be a boolean" in result.stderr


def test_database_url_parsing():
    from config.env import parse_database_url

    mysql = parse_database_url("mysql://root:p%40ss@127.0.0.1:3307/studio", base_dir=ROOT)
    assert mysql["ENGINE"] == "django.db.backends.mysql"
    assert (mysql["USER"], mysql["PASSWORD"], mysql["HOST"], mysql["PORT"], mysql["NAME"]) == \
        ("root", "p@ss", "127.0.0.1", "3307", "studio")
    assert mysql["OPTIONS"]["charset"] == "utf8mb4" and "STRICT_TRANS_TABLES" in mysql["OPTIONS"]["init_command"]
    sqlite = parse_database_url("sqlite:///var/x.sqlite3", base_dir=ROOT)
    assert sqlite["NAME"] == str(ROOT / "var" / "x.sqlite3")
