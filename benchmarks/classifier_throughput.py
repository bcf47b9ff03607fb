"""Benchmark: the classifier recipe (``ml.train.classifier.train_classifier``) on the bundled all-MiniLM-L6-v2.

    .venv/bin/python benchmarks/classifier_throughput.py --label trainer          # one timed run, adds its row
    .venv/bin/python benchmarks/classifier_throughput.py --label trainer --epochs 3 --no-write

The 112 training questions of ``tests/classifier/test_imbalanced_minilm.py`` (96/31/29 before the held-out split;
the recipe carves its own validation split), fixed parameters (batch 8, balanced sampling, ``--epochs`` epochs, no
early stopping) so that every engine runs the same number of optimizer steps and validations. Timed: the call to
``train_classifier`` as the worker makes it (model loading, tokenisation, training, one validation per epoch,
checkpoints, the adapter), in one process, in-process wall time. Each run appends its row (``--label`` names the
engine or the commit) to ``benchmarks/classifier_throughput.json`` and the table in RESULTS.md is rebuilt from
all rows, so two engines measured at different commits stand side by side (the hand-written loop it replaced was
measured from a copy of its ``classifier/recipe.py`` put first on ``sys.path``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DATA = ROOT / "tests" / "classifier" / "data" / "imbalanced_questions.jsonl"
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
ROWS = ROOT / "benchmarks" / "classifier_throughput.json"
MARK = "classifier_throughput"


def minilm_dir() -> Path:
    from catalog import model_scan

    found = next((c for c in model_scan.bundled_candidates() if c.name == "all-MiniLM-L6-v2"), None)
    if found is None:
        raise SystemExit("all-MiniLM-L6-v2 is not installed (make install installs it)")
    return found.path


def run(label: str, epochs: int) -> dict:
    import torch

    from ml import classifier_data
    from ml.train import classifier as recipe

    rows = [json.loads(line) for line in DATA.read_text(encoding="utf-8").splitlines() if line.strip()]
    train, _held_out = classifier_data.stratified_split(rows, val_ratio=0.28, seed=0)
    params = {"n_epochs": epochs, "batch_size": 8, "sampling": "balanced", "early_stopping_patience": 0}
    with tempfile.TemporaryDirectory(prefix="cls-bench-") as tmp:
        spec = recipe.ClassifierSpec(base_model_path=minilm_dir(), train=train, run_dir=Path(tmp) / "run",
                                     adapter_dir=Path(tmp) / "adapter", params=params, device="cpu")
        t0 = time.perf_counter()
        result = recipe.train_classifier(spec)
        wall = time.perf_counter() - t0
    assert result.status == "succeeded", result.status
    return {"label": label, "epochs": epochs, "steps": result.global_step, "n_train": result.n_train,
            "n_validation": result.n_validation, "wall_s": round(wall, 2),
            "steps_per_s": round(result.global_step / wall, 3),
            "examples_per_s": round(result.global_step * 8 / wall, 2),
            "macro_f1": round(result.metrics["macro_f1"], 4), "threads": torch.get_num_threads(),
            "cpu": platform.processor() or platform.machine(), "date": time.strftime("%Y-%m-%d")}


def table(rows: list[dict]) -> str:
    lines = ["Wall time of one `train_classifier` call (load, tokenise, train, validate each epoch, checkpoint, save), "
             "in run order. The machine has 2 CPU cores **shared with other developers' test runs** (load average "
             "2.8 for the first row, about 7 for the others): compare rows taken next to each other, and read "
             "differences under ~20% as noise. \"before\" is the hand-written loop of the previous commit, run from a "
             "copy of its module.", "",
             "| engine | date | epochs | steps | wall s | steps/s | examples/s | validation macro-F1 | threads |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['label']} | {r['date']} | {r['epochs']} | {r['steps']} | {r['wall_s']:.1f} | "
                     f"{r['steps_per_s']:.2f} | {r['examples_per_s']:.1f} | {r['macro_f1']:.3f} | {r['threads']} |")
    return "\n".join(lines)


def write_results(text: str) -> None:
    start, end = f"<!-- {MARK}:start -->", f"<!-- {MARK}:end -->"
    body = RESULTS.read_text(encoding="utf-8") if RESULTS.is_file() else "# Benchmark results\n"
    section = (f"{start}\n## Classifier training on MiniLM (`benchmarks/classifier_throughput.py`)\n\n{text}\n{end}")
    if start in body and end in body:
        body = body[:body.index(start)] + section + body[body.index(end) + len(end):]
    else:
        body = body.rstrip() + "\n\n" + section + "\n"
    RESULTS.write_text(body, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--label", required=True, help="what is measured (engine, commit)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--no-write", action="store_true", help="print only: neither the JSON rows nor RESULTS.md")
    args = ap.parse_args(argv)
    row = run(args.label, args.epochs)
    print(json.dumps(row))
    if not args.no_write:
        rows = json.loads(ROWS.read_text(encoding="utf-8")) if ROWS.is_file() else []
        rows.append(row)
        ROWS.write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")
        write_results(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
