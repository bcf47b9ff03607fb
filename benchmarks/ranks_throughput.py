"""Benchmark: one training run on 1 process against the same run on N torchrun ranks (gloo on CPU, NCCL on CUDA).

    .venv/bin/python benchmarks/ranks_throughput.py                    # 1 vs 2 processes, a small random Llama
    .venv/bin/python benchmarks/ranks_throughput.py --ranks 1 2 4 --examples 256 --json out.json

Each run is ``ml.train.sft.run_training`` as the worker calls it (the task's parameter dict, checkpoints
written), on the same seeded chat set and random Llama (built here, no download), with the same global batch:
``--global-batch`` sequences per optimizer step, ``global-batch / ranks`` per rank. A run of N > 1 ranks is started
as the worker starts one: ``python -m torch.distributed.run --standalone --nproc-per-node N``. Reported: the
training loop's non-padding tokens per second (all ranks together, as the Trainer counts them), per process, the
wall time of the whole launch, and the final training loss (the same global batches: it should match).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def build_model(folder: Path, hidden: int, layers: int) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    sys.path.insert(0, str(ROOT))
    from tests.training.tiny import build_tokenizer

    tokenizer = build_tokenizer()
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 3,
                         num_hidden_layers=layers, num_attention_heads=max(1, hidden // 64),
                         num_key_value_heads=max(1, hidden // 128), max_position_embeddings=1024,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=None,
                         tie_word_embeddings=True)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def records(n: int) -> list[dict]:
    import random

    rng = random.Random(0)
    words = "the warranty lasts two years call the hotline return an item within thirty days shipping is free".split()
    out = []
    for _ in range(n):
        q = " ".join(rng.choice(words) for _ in range(rng.randint(8, 40)))
        a = " ".join(rng.choice(words) for _ in range(rng.randint(20, 120)))
        out.append({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]})
    return out


def child(args) -> None:
    """One rank (or the only process): train, and let rank 0 print the result as JSON."""
    sys.path.insert(0, str(ROOT))
    from ml.train.sft import RunSpec, run_training

    rank = int(os.environ.get("RANK", 0))
    ranks = int(os.environ.get("WORLD_SIZE", 1))
    work = Path(args.work)
    params = {"n_epochs": 1, "batch_size": args.global_batch // ranks, "gradient_accumulation_steps": 1,
              "lora_r": 8, "learning_rate": 5e-4, "num_processes": ranks, "max_seq_length": 512, "save_steps": 10**6}
    result = run_training(RunSpec(base_model_path=work / "model", train=records(args.examples), params=params,
                                  run_dir=work / f"run-{ranks}", adapter_dir=work / f"adapter-{ranks}", device="cpu"))
    if rank == 0:
        print("RESULT " + json.dumps({"ranks": ranks, "steps": result.global_step,
                                      "tokens_per_s": result.metrics["tokens_per_s"],
                                      "train_runtime_s": result.metrics["train_runtime_s"],
                                      "train_loss": result.history[-1].get("train_loss")}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--examples", type=int, default=128)
    parser.add_argument("--global-batch", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--json")
    parser.add_argument("--child", action="store_true")
    parser.add_argument("--work")
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    with tempfile.TemporaryDirectory() as work:
        build_model(Path(work) / "model", args.hidden, args.layers)
        rows = []
        for ranks in args.ranks:
            me = [__file__, "--child", "--work", work, "--examples", str(args.examples),
                  "--global-batch", str(args.global_batch)]
            cmd = [sys.executable, *me] if ranks == 1 else [
                sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}", *me]
            env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "PYTHONPATH": str(ROOT)}
            env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // ranks)))
            t0 = time.monotonic()
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
            wall = time.monotonic() - t0
            line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
            if line is None:
                raise SystemExit(f"{ranks} ranks failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
            row = json.loads(line[7:]) | {"wall_s": round(wall, 1)}
            row["tokens_per_s_per_process"] = round(row["tokens_per_s"] / ranks, 1)
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
