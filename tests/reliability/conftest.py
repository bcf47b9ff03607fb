"""Fixtures of the reliability suite: the training fixtures (tiny model, worker, live server) plus a
server started with extra environment, a role cast of six principals, and a fast password hasher."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.training.conftest import (  # noqa: F401 - fixtures re-exported for this folder
    ROOT,
    free_port,
    live_url,
    make_version,
    tiny_base_model,
    tiny_model_dir,
    wait_for,
    worker,
    worker_env,
)


def is_mysql() -> bool:
    from django.db import connection

    return connection.vendor == "mysql"


@pytest.fixture(scope="session")
def tiny_adapter_dir(tiny_model_dir, tmp_path_factory) -> Path:  # noqa: F811 - the imported fixture
    """A real LoRA adapter folder for the tiny model (untrained), written with plain PEFT."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    folder = tmp_path_factory.mktemp("adapter") / "tiny-adapter"
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                           LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    model.save_pretrained(folder)
    return folder


@pytest.fixture
def fast_passwords(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


class Server:
    """A real HTTP server process (``runserver``, threaded, as ``make serve``) on a free local port."""

    def __init__(self, env: dict, log_path: Path, *, extra: dict | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        env = {**env, **(extra or {})}
        log = open(log_path, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen([sys.executable, "manage.py", "runserver", f"127.0.0.1:{self.port}",
                                      "--noreload"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.log()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.3)
        raise RuntimeError(f"server did not start: {self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def server(worker_env, tmp_path):  # noqa: F811 - the imported fixture
    """server(**env) -> a started Server; all are stopped at the end of the test."""
    started: list[Server] = []

    def start(**extra: str) -> Server:
        s = Server(worker_env, tmp_path / f"server-{len(started)}.log", extra=extra)
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop()


def mysql_env() -> bool:
    return os.environ.get("DATABASE_URL", "").startswith(("mysql://", "mariadb://"))
