"""scan_models on the real bundled GGUF and the real bundled HF encoder folder."""

from __future__ import annotations

import io
import shutil

import pytest
from django.core.management import call_command

from catalog.models import BaseModel

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def root(django_user_model):
    """Scanning needs a writer role; without --user or --team the command acts as the first superuser."""
    return django_user_model.objects.create_superuser("root", password="x")


def scan(*args) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command("scan_models", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


@pytest.mark.slow
@pytest.mark.heavy
def test_scan_converts_the_bundled_gguf_once_and_registers_both_models(data_dir):
    out, err = scan()
    smol = BaseModel.objects.get(name="SmolLM2-135M-Instruct")
    assert smol.kind == "causal-lm" and smol.format == "gguf" and smol.available and smol.bundled
    assert smol.architecture == "LlamaForCausalLM"
    assert 130_000_000 < smol.parameter_count < 140_000_000
    assert smol.tokenizer_present and smol.has_chat_template
    assert smol.path == str((data_dir / "models" / "SmolLM2-135M-Instruct").resolve())
    assert (data_dir / "models" / "SmolLM2-135M-Instruct" / "model.safetensors").is_file()
    assert smol.source_path.endswith("SmolLM2-135M-Instruct.Q4_1.gguf")

    mini = BaseModel.objects.get(name="all-MiniLM-L6-v2")
    assert mini.kind == "encoder" and mini.format == "hf" and mini.available
    assert 20_000_000 < mini.parameter_count < 25_000_000

    assert "scanning SmolLM2-135M-Instruct" in err  # the progress bar on the terminal
    assert "converted" in out and "added" in out and "model" in out.splitlines()[0]

    # Gemma 3 270M: a GGUF split over chunk packages, assembled (SHA-256 checked), then converted like SmolLM2
    gemma = BaseModel.objects.get(name="gemma-3-270m")
    assert gemma.kind == "causal-lm" and gemma.format == "gguf" and gemma.available and gemma.bundled
    assert gemma.architecture == "Gemma3ForCausalLM" and not gemma.has_chat_template
    assert 250_000_000 < gemma.parameter_count < 300_000_000

    # Idempotent: a second scan converts nothing and changes nothing.
    mtime = (data_dir / "models" / "SmolLM2-135M-Instruct" / "model.safetensors").stat().st_mtime
    out2, _ = scan()
    assert "unchanged 3" in out2
    assert BaseModel.objects.count() == 3
    assert (data_dir / "models" / "SmolLM2-135M-Instruct" / "model.safetensors").stat().st_mtime == mtime

    # The converted folder loads with plain transformers, offline, and the tokenizer has the chat template.
    from transformers import AutoConfig, AutoTokenizer

    assert AutoConfig.from_pretrained(smol.path).model_type == "llama"
    tok = AutoTokenizer.from_pretrained(smol.path)
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert "<|im_start|>assistant" in text


def test_scan_registers_a_hf_folder_from_a_path_and_marks_it_unavailable_when_it_vanishes(tmp_path, minilm_dir):
    folder = tmp_path / "extra" / "my-encoder"
    shutil.copytree(minilm_dir, folder)
    out, err = scan("--only-paths", str(tmp_path / "extra"))
    row = BaseModel.objects.get(name="my-encoder")
    assert row.kind == "encoder" and row.available and row.tokenizer_present
    assert "added 1" in out and "my-encoder" in err

    out, _ = scan("--only-paths", str(tmp_path / "extra"))
    assert "unchanged 1" in out

    shutil.rmtree(folder)
    out, _ = scan("--only-paths", str(tmp_path / "extra"))
    row.refresh_from_db()
    assert not row.available and "unavailable 1" in out
    assert BaseModel.objects.filter(name="my-encoder").exists()  # kept, not deleted


def test_scan_reports_missing_paths_and_broken_folders_without_stopping(tmp_path, minilm_dir):
    broken = tmp_path / "models" / "broken"
    broken.mkdir(parents=True)
    (broken / "config.json").write_text("{not json")
    (broken / "model.safetensors").write_bytes(b"\x00" * 16)
    good = tmp_path / "models" / "good-encoder"
    shutil.copytree(minilm_dir, good)
    out, _ = scan("--only-paths", str(tmp_path / "models"), str(tmp_path / "does-not-exist"))
    assert "path does not exist" in out
    assert "config.json is unreadable" in out
    assert BaseModel.objects.filter(name="good-encoder", available=True).exists()


def test_model_dirs_setting_is_scanned(settings, tmp_path, minilm_dir, root, monkeypatch):
    from catalog import model_scan
    from catalog.services import base_models_scan

    shutil.copytree(minilm_dir, tmp_path / "shared-models" / "team-bert")
    settings.MODEL_DIRS = [tmp_path / "shared-models"]
    monkeypatch.setattr(model_scan, "ASSEMBLED", {})  # converting Gemma 3 takes a minute: the slow test does it

    report = base_models_scan(user=root, include_defaults=True, paths=[])
    names = {r.name for r in report.rows}
    assert "team-bert" in names


def test_gguf_file_names_lose_their_quantisation_suffix():
    from pathlib import Path

    from catalog.model_scan import gguf_model_name

    assert gguf_model_name(Path("SmolLM2-135M-Instruct.Q4_1.gguf")) == "SmolLM2-135M-Instruct"
    assert gguf_model_name(Path("qwen2-0_5b-instruct-q4_k_m.gguf")) == "qwen2-0_5b-instruct"
    assert gguf_model_name(Path("plain.gguf")) == "plain"
