"""The training-throughput benchmark's quick mode runs end to end (a smoke run: no timing is asserted)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.heavy
def test_quick_benchmark_reports_both_contenders(smollm2_dir, tmp_path):
    out = tmp_path / "result.json"
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    proc = subprocess.run(
        [sys.executable, "benchmarks/train_throughput.py", "--quick", "--model-dir", str(smollm2_dir),
         "--work-dir", str(tmp_path / "work"), "--json", str(out)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "ratio: recipe" in proc.stdout

    result = json.loads(out.read_text())
    contenders = result["contenders"]
    assert set(contenders) == {"baseline", "recipe"}
    for name, r in contenders.items():
        assert r["tokens_per_s"] > 0, name
        assert r["train_tokens"] > 0 and r["peak_rss_bytes"] > 0, name
        for key in ("final_train_loss", "heldout_loss"):
            assert math.isfinite(r[key]), (name, key)
    assert contenders["recipe"]["flat_batches"] is True
    assert math.isfinite(result["heldout_base_loss"])
    assert result["gemm_flops"]["ceiling"] > 0 and result["model_flops"] > 0
    assert math.isfinite(result["summary"]["speedup"])
