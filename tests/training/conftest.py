"""Fixtures for training tests: a tiny Llama on disk, dataset versions, and a real queue worker."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.training.tiny import chat_records, save_tiny_model

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-llama")


@pytest.fixture
def tiny_base_model(db, tiny_model_dir):
    from catalog.model_scan import inspect_hf_dir
    from catalog.models import BaseModel

    info = inspect_hf_dir(tiny_model_dir)
    return BaseModel.objects.create(name="tiny-llama", kind=info.kind, path=str(tiny_model_dir),
                                    architecture=info.architecture, parameter_count=info.parameter_count,
                                    size_bytes=info.size_bytes, tokenizer_present=True, has_chat_template=True,
                                    config=info.config)


@pytest.fixture
def make_version(db, data_dir):
    """make_version(team, records=None, name="faq", fmt="openai", status="ready") -> DatasetVersion."""
    from datasets_app.models import Dataset, DatasetVersion

    def make(team, records=None, *, name: str = "faq", fmt: str = "openai", status: str = "ready", report=None):
        records = chat_records(16) if records is None else records
        dataset, _ = Dataset.objects.get_or_create(team=team, name=name, defaults={"format": fmt})
        body = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode()
        sha = hashlib.sha256(body).hexdigest()
        rel = ""
        if status == "ready":
            rel = f"datasets/{team.name}/{sha}.jsonl"
            (data_dir / rel).parent.mkdir(parents=True, exist_ok=True)
            (data_dir / rel).write_bytes(body)
        number = dataset.versions.count() + 1
        return DatasetVersion.objects.create(dataset=dataset, number=number, sha256=sha if rel else "",
                                             row_count=len(records), path=rel, format=fmt, status=status,
                                             report=report or {}, source_filename=f"{name}.jsonl")

    return make


@pytest.fixture
def worker_env(data_dir, settings):
    """Environment for processes that must share this test's database and DATA_DIR."""
    from django.db import connection

    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    db = connection.settings_dict
    if db["ENGINE"].endswith("sqlite3"):
        env["DATABASE_URL"] = f"sqlite:///{db['NAME']}"
    else:
        password = f":{db['PASSWORD']}" if db["PASSWORD"] else ""
        env["DATABASE_URL"] = f"mysql://{db['USER']}{password}@{db['HOST']}:{db['PORT']}/{db['NAME']}"
    env.update({"DATA_DIR": str(data_dir), "JOB_STALE_SECONDS": str(settings.JOB_STALE_SECONDS),
                "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                "PYTHONUNBUFFERED": "1", "LOG_LEVEL": "INFO"})
    return env


class Worker:
    """A real `manage.py qcluster` process against the test database."""

    def __init__(self, env: dict, log_path: Path) -> None:
        self.env = env
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None

    def start(self) -> Worker:
        log = open(self.log_path, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen([sys.executable, "manage.py", "qcluster"], cwd=ROOT, env=self.env,
                                     stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        return self

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@pytest.fixture
def worker(worker_env, tmp_path):
    """Start with worker.start(); always stopped (and its children killed) at the end of the test."""
    w = Worker(worker_env, tmp_path / "qcluster.log")
    yield w
    # SIGKILL, not a graceful stop (which waits for the job in hand): the supervised child dies with its
    # supervisor (PR_SET_PDEATHSIG), so nothing outlives the test.
    w.kill(signal.SIGKILL)


def wait_for(predicate, *, timeout: float, interval: float = 0.25, message: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def live_url(worker_env, tmp_path):
    """A real HTTP server (runserver, no autoreload) on a free local port, sharing the test database."""
    port = free_port()
    log = open(tmp_path / "server.log", "ab")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "manage.py", "runserver", f"127.0.0.1:{port}", "--noreload"],
                            cwd=ROOT, env=worker_env, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            time.sleep(0.3)
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(timeout=30)
