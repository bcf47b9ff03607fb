"""``benchmarks/gpu_check.sh --dry-run``: the CUDA check's code paths on CPU, so the script cannot rot unseen."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_gpu_check_dry_run_writes_its_table_to_the_given_file_only(tmp_path):
    results = tmp_path / "RESULTS.md"
    results.write_text("# Benchmark results\n\nkept\n")
    before = (REPO / "benchmarks" / "RESULTS.md").read_text()
    env = dict(os.environ, VENV=str(Path(sys.executable).parent.parent), PYTHONPATH=str(REPO))
    proc = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--dry-run", "--results", str(results)], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    text = results.read_text()
    assert text.startswith("# Benchmark results\n\nkept\n") and "<!-- gpu_check:start -->" in text
    assert "| llama | " in text and "| gemma3 | " in text and "**no**" not in text
    for model in ("SmolLM2-135M-Instruct", "Gemma 3 270M"):
        assert f"| {model} | recipe |" in text and f"| {model} | TRL SFTTrainer |" in text
    assert (REPO / "benchmarks" / "RESULTS.md").read_text() == before  # a dry run writes nowhere else
