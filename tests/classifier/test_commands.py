"""manage.py train_classifier and classify: output, the adapter named after the task, exit status."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from classifier.models import ClassifierTask
from jobs import runtime

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def setup(db, make_team, make_user, tiny_encoder, make_cls_version):
    team = make_team("alpha")
    make_user("root", is_superuser=True)
    alice = make_user("alice", team, "admin")
    return team, alice, make_cls_version(team)


def run_at_once(monkeypatch):
    """Instead of waking a worker, claim and run the job in this process (the worker's own code path)."""
    def enqueue(job):
        token = runtime.claim(job)
        runtime.run_child(runtime.kind_of(job).name, job.pk, token)

    monkeypatch.setattr(runtime, "enqueue", enqueue)


def test_train_then_classify(setup, monkeypatch, fast_params, tmp_path):
    run_at_once(monkeypatch)
    out, err = io.StringIO(), io.StringIO()
    call_command("train_classifier", "--name", "intent", "--team", "alpha", "--base-model", "tiny-bert",
                 "--dataset", "questions", *[f"--param={k}={v}" for k, v in {**fast_params, "n_epochs": 1}.items()], "--wait",
                 stdout=out, stderr=err)
    task = ClassifierTask.objects.get(name="intent")
    assert task.status == "succeeded" and task.adapter.name == "intent"
    assert "succeeded" in out.getvalue() and "trainable parameters" in out.getvalue()

    out = io.StringIO()
    call_command("classify", "intent", "hello how are you", "--text", "sql query", stdout=out)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [r["text"] for r in lines] == ["hello how are you", "sql query"]
    assert all({"label", "confidence", "probabilities"} <= set(r) for r in lines)

    texts = tmp_path / "texts.txt"
    texts.write_text("hello\n\nmovie tomorrow\n", encoding="utf-8")
    out = io.StringIO()
    call_command("classify", str(task.adapter.pk), "--file", str(texts), stdout=out)
    assert [json.loads(line)["text"] for line in out.getvalue().splitlines()] == ["hello", "movie tomorrow"]

    monkeypatch.setattr("sys.stdin", io.StringIO("hello\n\n"))
    monkeypatch.setattr("builtins.input", lambda prompt="": sys.stdin.readline().rstrip("\n") or "")
    out = io.StringIO()
    call_command("classify", "intent", "--interactive", stdout=out)
    assert "Classifier intent" in out.getvalue() and "(" in out.getvalue().splitlines()[-1]


def test_wait_on_a_failed_task_is_a_command_error(setup, monkeypatch):
    def fail(job):
        runtime.finish(job, None, "failed", error_code="internal", error_message="boom")

    monkeypatch.setattr(runtime, "enqueue", fail)
    with pytest.raises(CommandError, match="failed: internal: boom"):
        call_command("train_classifier", "--name", "x", "--team", "alpha", "--base-model", "tiny-bert",
                     "--dataset", "questions", "--wait", stdout=io.StringIO(), stderr=io.StringIO())


def test_bad_param_is_a_command_error_naming_it(setup):
    with pytest.raises(CommandError, match=r"lora_r.*\(lora_r\)"):
        call_command("train_classifier", "--name", "x", "--team", "alpha", "--base-model", "tiny-bert",
                     "--dataset", "questions", "--param", "lora_r=0", stdout=io.StringIO())


def test_classify_an_unknown_adapter_is_a_command_error(setup):
    with pytest.raises(CommandError, match="not found"):
        call_command("classify", "nope", "hello", stdout=io.StringIO())


@pytest.mark.django_db(transaction=True)
def test_the_process_exits_non_zero_on_failure(make_team, make_user, tiny_encoder, make_cls_version, worker_env):
    make_team("alpha")
    make_user("root", is_superuser=True)
    proc = subprocess.run([sys.executable, "manage.py", "train_classifier", "--name", "x", "--team", "alpha",
                           "--base-model", "tiny-bert", "--dataset", "no-such-data"], cwd=ROOT, env=worker_env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "not found" in proc.stderr
