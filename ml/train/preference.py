"""Preference tuning — DPO, ORPO, KTO — through TRL's trainers, with the SFT recipe's hooks contract.

Plain module (no Django); the worker's child process calls ``run_preference(spec, hooks)`` when the task's
``method`` is not ``sft``. Like ``ml.train.sft`` it imports torch, transformers and TRL: web-process code must
not import it.

What comes from TRL 1.16 as is: the losses and their parameter names (``DPOTrainer`` with every ``loss_type`` of
``DPOConfig``, ``KTOTrainer``, and ``trl.experimental.orpo.ORPOTrainer`` — ORPO left TRL's stable API for
``trl.experimental`` in 1.x), the metrics (``rewards/chosen``, ``rewards/rejected``, ``rewards/accuracies``,
``rewards/margins``), the reference policy and the optimizer/scheduler/checkpoint machinery of ``Trainer``.

What is ours, so that a preference run behaves like an SFT run:

- **Data**: the ``preference`` rows (``{"prompt": [...], "chosen": [...], "rejected": [...]}``) and ``kto`` rows
  (``{"prompt": [...], "completion": [...], "label": bool}``) are rendered by ``ml.data.assistant_spans``,
  the SFT code: the same chat template (or named fallback template), the answer tokens found the same way, prompt
  tokens (earlier assistant turns included) never trained. Sequences longer than ``max_seq_length`` keep their start
  and lose the end of the answer; pairs whose prompt alone fills ``max_seq_length`` are dropped. Both are counted
  and reported in the task's log, never silent. DPO and KTO get these token ids directly (TRL's own tokenisation is
  skipped); ORPO's experimental trainer tokenises its own rows (same template; TRL's truncation, which shortens
  the prompt first; and its NLL term covers the prompt too, as TRL defines it).
- **Reference policy**: never a second copy of the model, and its log-probabilities computed once per pair before
  training (DPO, KTO: TRL's ``precompute_ref_log_probs``; measured faster, see below). A fresh LoRA adapter starts at zero, so the reference
  is the base with the adapter disabled (PEFT ``disable_adapter``, TRL's behaviour). Starting from an SFT adapter
  (``start_adapter``), the reference is that SFT policy: TRL keeps a frozen copy of the adapter's LoRA weights
  (adapter ``"ref"``, a few MB) on the same base weights; it is dropped before the adapter is saved. ORPO has no
  reference model at all.
- **Checkpoints**: ``step-N`` folders published atomically with a manifest (``ml.train.checkpoints``), holding the
  adapter, optimizer, scheduler and RNG state; ``trainer.train(resume_from_checkpoint=...)`` replays the seeded data
  order, so a paused run continues exactly.
- **Output**: a plain PEFT adapter folder (``adapter_config.json`` pointing at the local base folder), as SFT's.
"""

from __future__ import annotations

import json
import logging
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# see ml/train/sft.py: must be set before torch is first imported
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from datasets import Dataset as HFDataset  # noqa: E402
from trl import DPOConfig, DPOTrainer, KTOConfig, KTOTrainer  # noqa: E402

from ml.data import EncodeReport, assistant_spans, install_template, read_records, rendered_ids  # noqa: E402
from ml.errors import (  # noqa: E402
    DATASET_ERROR,
    INVALID_PARAMS,
    MODEL_MISSING,
    TrainingError,
    classify,
)
from ml.hparams import (  # noqa: E402
    PREFERENCE_METHODS,
    InvalidParams,
    ResolvedParams,
    parse_params,
    resolve_params,
)
from ml.model import load_base_model, load_tokenizer, tokenizer_source  # noqa: E402
from ml.probe import compute_dtype, device_info, library_versions, peak_memory, resolve_device  # noqa: E402
from ml.templates import resolve_template  # noqa: E402
from ml.train import checkpoints as ckpt  # noqa: E402
from ml.train.common import AtomicCheckpoints, HooksBridge, check_resume, check_resume_folder, renamed  # noqa: E402
from ml.train.hooks import Hooks, NullHooks  # noqa: E402
from ml.train.sft import (  # noqa: E402
    RESUME_INVARIANTS,
    RunResult,
    RunSpec,
    add_lora,
    check_memory,
    stopped_before_training,
    trainer_arguments,
)

logger = logging.getLogger(__name__)

PREFERENCE_RESUME_INVARIANTS = (*RESUME_INVARIANTS, "method", "beta", "loss_type", "label_smoothing",
                                "desirable_weight", "undesirable_weight")

# TRL's metric names -> ours (train_* per log step, valid_* on the validation set)
METRIC_NAMES = {
    "rewards/chosen": "rewards_chosen",
    "rewards/rejected": "rewards_rejected",
    "rewards/accuracies": "reward_accuracy",
    "rewards/margins": "reward_margin",
    "logps/chosen": "logps_chosen",
    "logps/rejected": "logps_rejected",
    "kl": "kl",
    "nll_loss": "nll_loss",
    "log_odds_ratio": "log_odds_ratio",
}
WHAT = {"dpo": "preference pairs (prompt, chosen, rejected): a dataset of format preference",
        "orpo": "preference pairs (prompt, chosen, rejected): a dataset of format preference",
        "kto": "labelled answers (prompt, completion, label): a dataset of format kto"}


@dataclass
class PreferenceSpec(RunSpec):
    """A ``RunSpec`` plus the method and, optionally, the SFT adapter to start from (and to use as reference)."""

    method: str = "dpo"
    start_adapter: str | Path | None = None


# ---------------------------------------------------------------------------------------------------------------
# Data


def _row_kind(record: Any) -> str:
    if not isinstance(record, dict):
        return "not an object"
    if "chosen" in record and "rejected" in record:
        return "preference"
    if isinstance(record.get("label"), bool) and "completion" in record:
        return "kto"
    if "messages" in record:
        return "a chat example (format openai/sharegpt/alpaca)"
    if "completion" in record:
        return "a prompt/completion example"
    if "text" in record:
        return "a plain-text example"
    return "of an unknown shape"


def check_rows(records: list[dict], method: str) -> None:
    """Each row must be what the method trains on; the first that is not is named, with its shape."""
    want = "kto" if method == "kto" else "preference"
    if not records:
        raise TrainingError(DATASET_ERROR, "The dataset has no records.")
    for i, record in enumerate(records):
        kind = _row_kind(record)
        if kind != want:
            shape = f"a {kind} row" if kind in ("preference", "kto") else kind
            raise TrainingError(DATASET_ERROR, f"record {i + 1}: method {method} trains on {WHAT[method]}; this "
                                f"record is {shape}.")


def _messages(value: Any, where: str) -> list[dict]:
    if isinstance(value, str):
        return [{"role": "assistant", "content": value}]
    if not isinstance(value, list) or not all(isinstance(m, dict) and isinstance(m.get("content"), str)
                                               for m in value):
        raise TrainingError(DATASET_ERROR, f"{where}: expected a list of messages with text content.")
    return [{"role": m.get("role", "assistant"), "content": m["content"]} for m in value]


def encode_answer(tokenizer, prompt: list[dict], answer: list[dict]) -> tuple[list[int], list[int]]:
    """(prompt ids, answer ids) of one rendered conversation, split where SFT's label mask starts.

    The conversation is rendered by the SFT code (``assistant_spans``) with the prompt's own assistant turns at
    weight 0; the answer ids run from the first to the last trained token (the end-of-turn marker included,
    the template's trailing whitespace not).
    """
    messages = [dict(m, weight=0) if m["role"] == "assistant" else dict(m) for m in prompt] + \
        [dict(m) for m in answer]
    full, spans = assistant_spans(tokenizer, messages)
    ids, offsets = rendered_ids(tokenizer, full, offsets=True)
    trained = [k for k, (a, b) in enumerate(offsets) if b > a and any(a < e and b > s for s, e in spans)]
    if not trained:
        raise TrainingError(DATASET_ERROR, "An answer rendered to no tokens.")
    return ids[:trained[0]], ids[trained[0]:trained[-1] + 1]


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def encode_preference_rows(tokenizer, records: list[dict], method: str) -> list[dict]:
    """Token ids per row: ``prompt_ids``/``chosen_ids``/``rejected_ids`` (dpo, orpo) or ``prompt_ids``/
    ``completion_ids``/``label`` (kto), untruncated."""
    out = []
    for i, r in enumerate(records):
        where = f"record {i + 1}"
        prompt = _messages(r.get("prompt"), f"{where} prompt")
        if method == "kto":
            p, c = encode_answer(tokenizer, prompt, _messages(r["completion"], f"{where} completion"))
            out.append({"prompt_ids": p, "completion_ids": c, "label": bool(r["label"])})
            continue
        pc, chosen = encode_answer(tokenizer, prompt, _messages(r["chosen"], f"{where} chosen"))
        pr, rejected = encode_answer(tokenizer, prompt, _messages(r["rejected"], f"{where} rejected"))
        if pc != pr:  # a template that renders the prompt differently before each answer: keep what is shared
            n = _common_prefix(pc, pr)
            pc, chosen, rejected = pc[:n], pc[n:] + chosen, pr[n:] + rejected
        out.append({"prompt_ids": pc, "chosen_ids": chosen, "rejected_ids": rejected})
    return out


def answer_keys(method: str) -> tuple[str, ...]:
    return ("completion_ids",) if method == "kto" else ("chosen_ids", "rejected_ids")


def sequence_lengths(rows: list[dict], method: str) -> list[int]:
    """The longest sequence of each row (prompt + its longest answer)."""
    return [len(r["prompt_ids"]) + max(len(r[k]) for k in answer_keys(method)) for r in rows]


def truncate_rows(rows: list[dict], max_seq_length: int, method: str) -> tuple[list[dict], EncodeReport]:
    """SFT's rule (``ml.data.truncate_examples``): keep the start; drop a row left with no answer token."""
    report = EncodeReport()
    out = []
    for r in rows:
        room = max_seq_length - len(r["prompt_ids"])
        if room <= 0:
            report.dropped_no_target += 1
            continue
        r = dict(r)
        if any(len(r[k]) > room for k in answer_keys(method)):
            report.truncated += 1
            for k in answer_keys(method):
                r[k] = r[k][:room]
        out.append(r)
        length = len(r["prompt_ids"]) + max(len(r[k]) for k in answer_keys(method))
        report.tokens += sum(len(r["prompt_ids"]) + len(r[k]) for k in answer_keys(method))
        report.target_tokens += sum(len(r[k]) for k in answer_keys(method))
        report.max_tokens = max(report.max_tokens, length)
    report.examples = len(out)
    report.mean_tokens = round(report.tokens / len(out), 2) if out else 0.0
    if not out:
        raise TrainingError(DATASET_ERROR, f"Every prompt is at least {max_seq_length} tokens long: no answer token "
                            "is left to train on. Raise max_seq_length.")
    return out, report


# ---------------------------------------------------------------------------------------------------------------
# Trainers


class _OurCheckpoints(AtomicCheckpoints):
    """Atomic ``step-N`` checkpoints (``ml.train.common.AtomicCheckpoints``, as the SFT recipe's) and TRL's
    tokenisation skipped for rows we tokenised. Mixed in before a TRL trainer class."""

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        if "prompt_ids" not in dataset.column_names:
            return super()._prepare_dataset(dataset, processing_class, args, dataset_name)
        if getattr(self, "calculate_KL", False):
            # KTO's KL term, as TRL builds it: each batch's completions rotated by one against its prompts
            def add_kl(examples):
                examples["KL_completion_ids"] = [examples["completion_ids"][-1]] + examples["completion_ids"][:-1]
                return examples

            dataset = dataset.map(add_kl, batched=True, batch_size=args.per_device_train_batch_size)
        return dataset


class OurDPOTrainer(_OurCheckpoints, DPOTrainer):
    """TRL's DPOTrainer on our token ids, with our checkpoints."""


class OurKTOTrainer(_OurCheckpoints, KTOTrainer):
    """TRL's KTOTrainer on our token ids, with our checkpoints."""


def _orpo_trainer_class():
    # trl.experimental warns on import that its API may change: imported only for ORPO runs
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    class OurORPOTrainer(_OurCheckpoints, ORPOTrainer):
        """TRL's experimental ORPOTrainer (reference-free), with our checkpoints."""

    return ORPOConfig, OurORPOTrainer


class PreferenceBridge(HooksBridge):
    """The hooks bridge (``ml.train.common``: progress, stop requests), reporting TRL's preference metrics under
    our names."""

    def metrics_from_logs(self, logs: dict) -> dict[str, float]:
        metrics: dict[str, float] = {}
        if "loss" in logs:
            metrics = renamed(logs, {"loss": "train_loss", "learning_rate": "learning_rate",
                                     "grad_norm": "grad_norm"})
            metrics.update(renamed(logs, {src: f"train_{dst}" for src, dst in METRIC_NAMES.items()}))
        if "eval_loss" in logs:
            metrics["valid_loss"] = float(logs["eval_loss"])
            metrics.update(renamed(logs, {f"eval_{src}": f"valid_{dst}" for src, dst in METRIC_NAMES.items()}))
        return metrics


# ---------------------------------------------------------------------------------------------------------------
# The entry point


def run_preference(spec: PreferenceSpec, hooks: Hooks | None = None) -> RunResult:
    """Train one adapter by DPO, ORPO or KTO. Returns succeeded/cancelled/paused; raises ``TrainingError``."""
    hooks = hooks or NullHooks()
    try:
        return _run(spec, hooks)
    except TrainingError:
        raise
    except Exception as exc:  # noqa: BLE001 - every failure leaves here classified
        raise classify(exc) from exc


def _message(hooks, level: str, message: str, data: dict | None = None) -> None:
    hooks.on_message(level, message, data)
    logger.log(logging.WARNING if level == "warning" else logging.INFO, message)


def _fingerprint(rows: list[dict]) -> str:
    import hashlib

    h = hashlib.sha256()
    for r in rows:
        h.update(json.dumps(r, sort_keys=True).encode())
    return h.hexdigest()[:16]


def _start_adapter_config(path: Path) -> dict:
    try:
        return json.loads((path / ckpt.ADAPTER_CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise TrainingError(MODEL_MISSING, f"The start adapter {path} has no readable adapter_config.json.") from exc


def _run(spec: PreferenceSpec, hooks: Hooks) -> RunResult:
    from peft import PeftModel
    from transformers import set_seed

    method = spec.method
    if method not in PREFERENCE_METHODS:
        raise TrainingError(INVALID_PARAMS, f"Unknown preference method {method!r}.")
    device = resolve_device(spec.device)
    base = Path(spec.base_model_path)
    if not (base / "config.json").is_file():
        raise TrainingError(MODEL_MISSING, f"The base model folder {base} is missing or has no config.json.")
    start = Path(spec.start_adapter) if spec.start_adapter else None
    start_config = _start_adapter_config(start) if start is not None else None
    run_dir = Path(spec.run_dir)
    checkpoints_dir = run_dir / "checkpoints"
    checkpoints_dir.mkdir(parents=True, exist_ok=True)
    ckpt.remove_stale_temp(checkpoints_dir)
    resume = Path(spec.resume_from) if spec.resume_from else None
    check_resume_folder(resume)

    # The start adapter's tokenizer carries the template its SFT run installed: render the pairs the same way.
    tokenizer = load_tokenizer(tokenizer_source(start, base) if start is not None else base)
    try:
        params_in = spec.params if isinstance(spec.params, ResolvedParams) else parse_params(spec.params)
    except InvalidParams as exc:
        raise TrainingError(INVALID_PARAMS, exc.message) from exc
    has_template = bool(getattr(tokenizer, "chat_template", None))
    template = resolve_template(params_in.template, has_chat_template=has_template)
    install_template(tokenizer, template)

    train_records = list(read_records(spec.train))
    check_rows(train_records, method)
    train_full = encode_preference_rows(tokenizer, train_records, method)
    valid_records = valid_full = None
    if spec.validation is not None:
        valid_records = list(read_records(spec.validation))
        check_rows(valid_records, method)
        valid_full = encode_preference_rows(tokenizer, valid_records, method)

    if isinstance(params_in, ResolvedParams):
        params = params_in
    else:
        lengths = sequence_lengths(train_full, method)
        model_config = json.loads((base / "config.json").read_text(encoding="utf-8"))
        labels = None
        if method == "kto":
            good = sum(1 for r in train_full if r["label"])
            labels = (good, len(train_full) - good)
        try:
            params = resolve_params(
                params_in, n_examples=len(train_full), n_tokens_mean=sum(lengths) / len(lengths),
                n_tokens_max=max(lengths), device=device,
                gpu_memory_gb=torch.cuda.get_device_properties(0).total_memory / 1024**3 if device == "cuda" else None,
                has_chat_template=has_template, model_max_length=model_config.get("max_position_embeddings"),
                has_validation=valid_full is not None, method=method, label_counts=labels,
            )
        except InvalidParams as exc:
            raise TrainingError(INVALID_PARAMS, exc.message) from exc
    if params.method != method:
        raise TrainingError(INVALID_PARAMS, f"Parameters were resolved for method {params.method}, not {method}.")
    if start_config is not None:
        # the adapter keeps its LoRA shape: record what is trained, not what was asked for
        params.lora_r = int(start_config.get("r", params.lora_r))
        params.lora_alpha = float(start_config.get("lora_alpha", params.lora_alpha))

    train_rows, train_report = truncate_rows(train_full, params.max_seq_length, method)
    data_report: dict[str, Any] = {"train": train_report.to_dict()}
    valid_rows = None
    if valid_full is not None:
        valid_rows, valid_report = truncate_rows(valid_full, params.max_seq_length, method)
        data_report["validation"] = valid_report.to_dict()
    what = "labelled answers" if method == "kto" else "preference pairs"
    _message(hooks, "info", f"Tokenised {train_report.examples} {what}: {train_report.tokens:,} tokens, "
             f"{train_report.target_tokens:,} of them answers (template {template}).", data_report)
    if train_report.truncated:
        _message(hooks, "warning", f"{train_report.truncated} of {len(train_full)} {what} were longer than "
                 f"{params.max_seq_length} tokens: their answers were truncated.", data_report)
    if train_report.dropped_no_target:
        _message(hooks, "warning", f"{train_report.dropped_no_target} {what} had prompts of {params.max_seq_length} "
                 "tokens or more and were skipped.", data_report)
    fingerprint = {"train_examples": len(train_rows), "train_tokens": train_report.tokens,
                   "fingerprint": _fingerprint(train_rows)}

    if resume is not None:
        check_resume(resume, params, fingerprint["fingerprint"], PREFERENCE_RESUME_INVARIANTS)
    stopped = stopped_before_training(hooks, resume, params, data_report, device)
    if stopped is not None:
        return stopped
    check_memory(spec.memory_check, params, device, max(sequence_lengths(train_rows, method)), hooks)

    # model: the base once; the policy is a LoRA adapter on it (fresh, or the start adapter trained further)
    cdtype = compute_dtype(device)
    model = load_base_model(base, quantization=params.quantization, device=device, dtype=cdtype)
    set_seed(params.seed)
    if start is not None:
        model = PeftModel.from_pretrained(model, str(start), is_trainable=True)
    else:
        model = add_lora(model, params)
    trainable, total_params = model.get_nb_trainable_parameters()
    reference = "the start adapter (a frozen copy of its LoRA weights)" if start is not None and method != "orpo" \
        else "none (ORPO is reference-free)" if method == "orpo" else "the base model (adapter disabled)"
    _message(hooks, "info", f"Loaded {base.name} on {device} ({params.quantization}, {str(cdtype).split('.')[-1]}); "
             f"{method.upper()} on {trainable:,} trainable LoRA parameters of {total_params:,}"
             + (f", starting from the adapter {start.name}" if start is not None else "")
             + f"; reference policy: {reference}.",
             {"trainable_parameters": trainable, "parameters": total_params, "method": method})

    bridge = PreferenceBridge(hooks)
    bridge_metrics = bridge.last_metrics

    def on_checkpoint(step: int, path: Path) -> None:
        hooks.on_checkpoint(step, path, dict(bridge_metrics))

    has_valid = bool(valid_rows)
    common = dict(
        **trainer_arguments(params, spec, output_dir=checkpoints_dir, device=device, has_valid=has_valid),
        bf16=device == "cuda" and cdtype == torch.bfloat16,
        fp16=device == "cuda" and cdtype == torch.float16,
        gradient_checkpointing=device == "cuda",
        max_length=params.max_seq_length,
    )
    # The reference never changes during a run (the base with the adapter disabled, or the frozen start adapter):
    # DPO and KTO compute its log-probabilities once per pair, in one no-grad pass before training (TRL's
    # precompute_ref_log_probs), instead of once per pair per epoch. Measured on SmolLM2-135M, 64 pairs x 2 epochs:
    # 1.37x the pairs/s of the per-step reference pass, same losses and held-out rewards (benchmarks/RESULTS.md).
    recipe = {"checkpoints_dir": str(checkpoints_dir), "run_dir": str(run_dir),
              "keep_checkpoints": spec.keep_checkpoints, "params": params.to_dict(),
              "data_fingerprint": fingerprint, "on_checkpoint": on_checkpoint}
    if method == "dpo":
        args = DPOConfig(**common, beta=params.beta, loss_type=[params.loss_type],
                         label_smoothing=params.label_smoothing, include_num_input_tokens_seen="non_padding",
                         precompute_ref_log_probs=True)
        train_ds, eval_ds = HFDataset.from_list(train_rows), HFDataset.from_list(valid_rows) if has_valid else None
        trainer_cls: type = OurDPOTrainer
    elif method == "kto":
        args = KTOConfig(**common, beta=params.beta, loss_type=params.loss_type,
                         desirable_weight=params.desirable_weight, undesirable_weight=params.undesirable_weight,
                         include_num_input_tokens_seen="non_padding", precompute_ref_log_probs=True)
        train_ds, eval_ds = HFDataset.from_list(train_rows), HFDataset.from_list(valid_rows) if has_valid else None
        trainer_cls = OurKTOTrainer
    else:
        config_cls, trainer_cls = _orpo_trainer_class()
        args = config_cls(**common, beta=params.beta)
        # ORPO tokenises conversational rows itself, through the tokenizer's (installed) chat template
        train_ds = HFDataset.from_list([_conversational(r) for r in train_records])
        eval_ds = HFDataset.from_list([_conversational(r) for r in valid_records]) if has_valid else None
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*MatMul8bitLt.*")
        trainer = trainer_cls(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
                              processing_class=tokenizer, callbacks=[bridge], recipe=recipe)
        if resume is not None:
            _message(hooks, "info", f"Resuming from {resume.name}.")
        t0 = time.monotonic()
        trainer.train(resume_from_checkpoint=str(resume) if resume is not None else None)
        wall = time.monotonic() - t0

    state = trainer.state
    status = {"cancel": "cancelled", "pause": "paused"}.get(bridge.stop_reason or "", "succeeded")
    metrics = dict(bridge.last_metrics)
    if status == "succeeded" and has_valid and (not bridge.history or "valid_loss" not in bridge.history[-1]
                                                or bridge.history[-1]["step"] != state.global_step):
        trainer.evaluate()
        metrics.update(bridge.last_metrics)
    session_steps = state.global_step - bridge._step0
    pairs = session_steps * params.batch_size * params.gradient_accumulation_steps
    metrics.update({
        "trainable_parameters": float(trainable),
        "train_runtime_s": round(wall, 3),
        "pairs_per_s": round(pairs / wall, 3) if wall > 0 else 0.0,
        **{k: float(v) for k, v in peak_memory().items()},
    })
    if "train_loss" in bridge.final_logs:
        metrics["train_loss_mean"] = bridge.final_logs["train_loss"]

    versions = library_versions()
    info = device_info(device) | {"quantization": params.quantization, "compute_dtype": str(cdtype).split(".")[-1],
                                  "method": method}
    adapter_dir = None
    trained_tokens = int(state.num_input_tokens_seen or 0)
    if status == "succeeded":
        if "ref" in model.peft_config:
            model.delete_adapter("ref")  # the frozen reference copy is not part of the result
        summary = {
            "base_model": str(base.resolve()), "method": method, "params": params.to_dict(), "metrics": metrics,
            "global_step": state.global_step, "trained_tokens": trained_tokens,
            "data": data_report | {"fingerprint": fingerprint}, "versions": versions, "device": info,
            "template": template, "trainable_parameters": trainable, "history": bridge.history,
            "start_adapter": str(start) if start is not None else None, **spec.summary_extra,
        }
        adapter_dir = ckpt.save_adapter(model, tokenizer, spec.adapter_dir, summary, base_model_path=base)
    return RunResult(
        status=status, global_step=state.global_step, total_steps=state.max_steps, metrics=metrics,
        trained_tokens=trained_tokens, adapter_dir=adapter_dir, checkpoint=ckpt.latest_good_checkpoint(run_dir),
        params=params, data_report=data_report, versions=versions, device_info=info, history=bridge.history,
    )


def _conversational(record: dict) -> dict:
    return {"prompt": _messages(record["prompt"], "prompt"), "chosen": _messages(record["chosen"], "chosen"),
            "rejected": _messages(record["rejected"], "rejected")}


# ---------------------------------------------------------------------------------------------------------------
# Scoring (the evaluation metric ``preference``)


def pair_logps(model, rows: list[dict], *, pad_token_id: int, batch_size: int = 8, device: str = "cpu"
               ) -> list[tuple[float, float]]:
    """Summed log-probabilities of the chosen and the rejected answer of each tokenised pair, under ``model``
    as it is (enable or disable its adapter around the call)."""
    out: list[tuple[float, float]] = []
    model.eval()
    with torch.no_grad():
        for k in range(0, len(rows), batch_size):
            batch = rows[k:k + batch_size]
            seqs = [r["prompt_ids"] + r[key] for key in ("chosen_ids", "rejected_ids") for r in batch]
            starts = [len(r["prompt_ids"]) for _key in (0, 1) for r in batch]
            width = max(len(s) for s in seqs)
            ids = torch.full((len(seqs), width), pad_token_id, dtype=torch.long)
            mask = torch.zeros((len(seqs), width), dtype=torch.long)
            for i, s in enumerate(seqs):
                ids[i, :len(s)] = torch.tensor(s)
                mask[i, :len(s)] = 1
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
            logp = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:].to(device).unsqueeze(-1))[..., 0]
            sums = []
            for i, s in enumerate(seqs):
                sums.append(float(logp[i, starts[i] - 1:len(s) - 1].sum()))
            n = len(batch)
            out += list(zip(sums[:n], sums[n:], strict=True))
    return out


def preference_scores(policy: list[tuple[float, float]], reference: list[tuple[float, float]], *, beta: float
                      ) -> dict[str, float]:
    """DPO's implicit rewards (beta * log pi/pi_ref) of the chosen and rejected answers: reward accuracy (share of
    pairs whose chosen answer gets the higher reward) and mean margin, as TRL logs them."""
    chosen = [beta * (p[0] - r[0]) for p, r in zip(policy, reference, strict=True)]
    rejected = [beta * (p[1] - r[1]) for p, r in zip(policy, reference, strict=True)]
    n = max(len(chosen), 1)
    margins = [c - r for c, r in zip(chosen, rejected, strict=True)]
    return {"reward_accuracy": sum(1 for m in margins if m > 0) / n, "reward_margin": sum(margins) / n,
            "rewards_chosen": sum(chosen) / n, "rewards_rejected": sum(rejected) / n, "pairs": len(margins),
            "beta": beta}
