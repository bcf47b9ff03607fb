"""manage.py import_dataset and build_style_dataset."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from dataset_helpers import chat_file
from django.core.management import call_command
from django.core.management.base import CommandError

from datasets_app import storage
from datasets_app.models import Dataset, DatasetVersion

SAMPLES = Path(__file__).resolve().parents[2] / "samples"


@pytest.fixture(autouse=True)
def root(db, django_user_model):
    """Without --user a command acts as the team's admin, else a superuser (a real user, never a fake one)."""
    return django_user_model.objects.create_superuser("root", password="x")


def run(*args, **kwargs) -> str:
    out = io.StringIO()
    call_command(*args, stdout=out, stderr=io.StringIO(), **kwargs)
    return out.getvalue()


@pytest.mark.parametrize("sample, fmt, rows", [
    ("customer_service_alpaca.json", "alpaca", 34),
    ("sharegpt_support.json", "sharegpt", 12),
    ("chat_openai.jsonl", "openai", 14),
    ("question_classification.jsonl", "classification", 300),
    ("question_classification.csv", "classification", 300),
])
def test_every_sample_imports(sample, fmt, rows, teams, data_dir):
    out = run("import_dataset", str(SAMPLES / sample), "--name", "sample", "--team", "alpha")
    assert f"Format: {fmt} (detected" in out
    assert f"Rows imported: {rows} as sample@1" in out
    assert "Report: 0 error(s)" in out


def test_import_adds_versions_and_dedupes(teams, data_dir, tmp_path):
    path = tmp_path / "faq.jsonl"
    path.write_bytes(chat_file())
    run("import_dataset", str(path), "--name", "faq", "--team", "alpha")
    out = run("import_dataset", str(path), "--name", "faq", "--team", "alpha")
    assert "Rows imported: 0 (the same content is already faq@1" in out
    path.write_bytes(chat_file(15))
    out = run("import_dataset", str(path), "--name", "faq", "--team", "alpha", "--format", "openai")
    assert "Rows imported: 15 as faq@2" in out and "(given; jsonl)" in out


def test_import_prints_the_report_and_fails_on_errors(teams, data_dir, tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(chat_file(3) + b'{"messages": [{"role": "user", "content": "q"}, {"role": "assistant"}]}\n'
                     + b"not json\n" + chat_file(8, start=3))
    out = io.StringIO()
    with pytest.raises(CommandError) as exc:
        call_command("import_dataset", str(path), "--name", "faq", "--team", "alpha", stdout=out)
    text = out.getvalue()
    assert 'line 4: message_missing_key: message 2 has no "content"' in text
    assert "line 5: invalid_json:" in text
    assert "Rows imported: 0" in text
    assert "Import failed with 2 error(s)" in str(exc.value)
    version = DatasetVersion.objects.get()
    assert version.status == "failed" and not version.path
    assert not list((data_dir / "datasets").rglob("*.jsonl"))


def test_import_respects_the_acting_users_teams(users, data_dir, tmp_path):
    path = tmp_path / "faq.jsonl"
    path.write_bytes(chat_file())
    with pytest.raises(CommandError, match="not found"):
        run("import_dataset", str(path), "--name", "faq", "--team", "alpha", "--user", "bob")
    with pytest.raises(CommandError, match="read-only"):
        run("import_dataset", str(path), "--name", "faq", "--team", "alpha", "--user", "vera")
    assert "faq@1" in run("import_dataset", str(path), "--name", "faq", "--team", "alpha", "--user", "alice")
    assert DatasetVersion.objects.get().created_by == users["alice"]


def test_import_with_a_base_model_reports_token_lengths(teams, data_dir, tmp_path, tiny_base_model):
    path = tmp_path / "faq.jsonl"
    path.write_bytes(chat_file())
    out = run("import_dataset", str(path), "--name", "faq", "--team", "alpha", "--base-model", "tiny-chat")
    assert "Tokens per example: min" in out and "(limit 40)" in out


def test_import_unknown_options_fail_cleanly(teams, data_dir, tmp_path):
    path = tmp_path / "faq.jsonl"
    path.write_bytes(chat_file())
    with pytest.raises(CommandError, match="Unknown format"):
        run("import_dataset", str(path), "--name", "faq", "--team", "alpha", "--format", "yaml")
    with pytest.raises(CommandError, match="not a file"):
        run("import_dataset", str(tmp_path / "missing.jsonl"), "--name", "faq", "--team", "alpha")


def test_build_style_dataset_from_the_sample_folder(teams, data_dir):
    out = run("build_style_dataset", str(SAMPLES / "style_corpus"), "--name", "style", "--team", "alpha")
    assert "Articles: 5 found, 5 used" in out
    assert "Registered: style@1 (all 15), train style@2 (12), validation style@3 (3)" in out
    full = DatasetVersion.objects.get(dataset__name="style", number=1)
    stats_path = data_dir / storage.relative_path("alpha", full.sha256, suffix=".style-stats.json")
    stats = json.loads(stats_path.read_text())
    assert stats["per_template"] == {"rewrite": 5, "continue": 5, "summarise_then_expand": 5}
    assert stats["counter"] == "jieba words" and 300 <= stats["chunk_tokens"]["min"] <= stats["chunk_tokens"]["max"] <= 800
    assert full.stats["style"]["versions"]["validation"] == "style@3"
    # The three examples of a chunk stay on one side of the split.
    records = [json.loads(line) for line in storage.iter_lines(full.path)]
    val = DatasetVersion.objects.get(dataset__name="style", split_role="validation")
    val_records = [json.loads(line) for line in storage.iter_lines(val.path)]
    start = records.index(val_records[0])
    assert records[start:start + 3] == val_records
    kinds = [r["messages"][0]["content"][:6] for r in records[:3]]
    assert len(set(kinds)) == 3
    # Running it again changes nothing.
    out = run("build_style_dataset", str(SAMPLES / "style_corpus"), "--name", "style", "--team", "alpha")
    assert "train style@2" in out and DatasetVersion.objects.filter(dataset__name="style").count() == 3


def test_build_style_dataset_chunks_by_tokens_and_sentences(teams, data_dir, tmp_path, tiny_base_model):
    source = tmp_path / "articles"
    (source / "a").mkdir(parents=True)
    (source / ".hidden").mkdir()
    (source / ".hidden" / "skip.md").write_text("# nope\n\n" + "hello world. " * 100)
    sentences = "".join(f"第{i}句话在这里结束。" for i in range(60))
    (source / "a" / "zh.md").write_text(f"# 中文标题\n\n{sentences}\n\n```\ncode is dropped\n```\n", encoding="utf-8")
    (source / "a" / "meta.json").write_text(json.dumps({"title": "A title", "tags": ["t1", "t2"]}))
    (source / "en.md").write_text("\n\n".join("How are you? " * 12 for _ in range(8)))
    (source / "tiny.md").write_text("Too short.")
    out = run("build_style_dataset", str(source), "--name", "style", "--team", "alpha", "--min-tokens", "20",
              "--max-tokens", "60", "--val-ratio", "0.2", "--seed", "1", "--base-model", "tiny-chat")
    assert "Articles: 3 found" in out and "1 too short" in out
    full = DatasetVersion.objects.get(dataset__name="style", number=1)
    style_stats = full.stats["style"]
    assert style_stats["counter"] == "tokenizer:tiny-chat"
    assert 20 <= style_stats["chunk_tokens"]["min"] and style_stats["chunk_tokens"]["max"] <= 60
    texts = [json.loads(line)["messages"][1]["content"] for line in storage.iter_lines(full.path)]
    assert not any("code is dropped" in t for t in texts)
    # Chinese chunks end on a sentence boundary.
    zh_chunks = [t for t in texts if "句话" in t and not t.startswith("概括")]
    assert zh_chunks and all(t.endswith("。") for t in zh_chunks)


def test_build_style_dataset_errors(teams, data_dir, tmp_path):
    with pytest.raises(CommandError, match="not a folder"):
        run("build_style_dataset", str(tmp_path / "missing"), "--name", "s", "--team", "alpha")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CommandError, match="No Markdown"):
        run("build_style_dataset", str(tmp_path / "empty"), "--name", "s", "--team", "alpha")
    assert not Dataset.objects.exists()
