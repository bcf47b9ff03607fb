"""Fixtures of the serving tests: the training fixtures (tiny model, dataset versions), a real model server
process (``manage.py serve_models``) and a real gunicorn in front of it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.training.conftest import (  # noqa: F401 - fixtures re-exported for this folder
    free_port,
    make_version,
    tiny_base_model,
    tiny_model_dir,
    worker,
    worker_env,
)
from tests.training.lifecycle_helpers import save_tiny_adapter

ROOT = Path(__file__).resolve().parents[2]


class ModelServerProcess:
    """``manage.py serve_models`` on a free port, in its own process group (stopped by that group only)."""

    def __init__(self, env: dict, log_path: Path, **limits: int) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.env = {**env, **{f"SERVING_{k.upper()}": str(v) for k, v in limits.items()}}
        self.env.pop("SERVING_URL", None)
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "manage.py", "serve_models", "--port", str(self.port)],
                                         cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the model server exited: {self.log()}")
            try:
                self.health()
                return
            except OSError:
                time.sleep(0.3)
        raise RuntimeError(f"the model server did not start: {self.log()}")

    def health(self) -> dict:
        with urllib.request.urlopen(f"{self.url}/health", timeout=5) as r:
            return json.loads(r.read())

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)


def server_env(tmp_path: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    env.update({"DJANGO_SETTINGS_MODULE": "config.settings", "DATA_DIR": str(tmp_path),
                "DATABASE_URL": f"sqlite:///{tmp_path / 'server.sqlite3'}", "HF_HUB_OFFLINE": "1",
                "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1",
                "OMP_NUM_THREADS": "1"})
    return env


@pytest.fixture(scope="module")
def model_server(tmp_path_factory):
    """One model server for the module: 4 decode slots and 2 queue places (so the 429 is reachable)."""
    folder = tmp_path_factory.mktemp("model-server")
    server = ModelServerProcess(server_env(folder), folder / "serve_models.log", max_batch=4, max_queue=2)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def tiny_adapters(tiny_model_dir, tmp_path_factory) -> list[Path]:  # noqa: F811 - the fixture, imported above
    """Three LoRA adapters of the tiny model with different random weights."""
    root = tmp_path_factory.mktemp("adapters")
    return [save_tiny_adapter(tiny_model_dir, root / f"lora-{i}", seed=i) for i in (1, 2, 3)]
