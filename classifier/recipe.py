"""LoRA fine-tuning of a BERT-family encoder for text classification (plain module; no Django).

PEFT ``task_type=SEQ_CLS`` on ``AutoModelForSequenceClassification``: LoRA on attention and feed-forward,
and a new classification head trained in full and saved alongside the adapter (``modules_to_save``), so

    PeftModel.from_pretrained(AutoModelForSequenceClassification.from_pretrained(
        base, num_labels=n, id2label=..., label2id=...), adapter_dir)

gives the trained classifier. Validation metrics are computed after every epoch; the best epoch (macro-F1,
then validation loss) is what the adapter holds. A checkpoint is written atomically after every epoch and on
pause, so a crash or a pause resumes where it stopped. The host talks to the loop through
``ml.train.hooks.Hooks`` (progress, metrics, messages, ``should_stop``).
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# OpenMP threads that sleep while they wait, as in ml.train.sft (set before torch is first imported): while
# another process keeps a core busy, spinning threads made the 112-question MiniLM run 10x slower.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from classifier.params import DEFAULT_TARGET_MODULES, ClassifierParams, resolve_params, validate_params
from ml.errors import (
    CHECKPOINT_INVALID,
    DATASET_ERROR,
    INVALID_PARAMS,
    NAN_LOSS,
    TrainingError,
)
from ml.model import load_sequence_classifier, load_tokenizer, tokenizer_source
from ml.probe import library_versions, resolve_device
from ml.train.checkpoints import (
    ADAPTER_CONFIG,
    TRAINER_STATE,
    checkpoint_problem,
    publish,
    remove_stale_temp,
    rotate_checkpoints,
    temp_sibling,
)
from ml.train.hooks import Hooks, NullHooks

REPORT_FILE = "classification_report.json"
LABEL_MAP_FILE = "label_map.json"
SUMMARY_FILE = "training_summary.json"
BEST_STATE = "best_state.safetensors"
KEEP_CHECKPOINTS = 2


# ------------------------------------------------------------------------------------------------- data

def read_jsonl(path: str | Path) -> list[dict]:
    with Path(path).open("rb") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def clean_records(records: list[dict], *, where: str) -> list[dict]:
    out = []
    for i, rec in enumerate(records, 1):
        text, label = rec.get("text"), rec.get("label")
        if not isinstance(text, str) or not text.strip() or label is None or str(label).strip() == "":
            raise TrainingError(DATASET_ERROR, f"{where} record {i} needs a non-empty 'text' and 'label'.")
        out.append({"text": text, "label": str(label)})
    return out


def label_map_from(records: list[dict]) -> dict[int, str]:
    """id -> label, labels sorted so the map is the same however the file is ordered."""
    return dict(enumerate(sorted({str(r["label"]) for r in records})))


def label_map_to_json(id2label: dict[int, str]) -> dict[str, str]:
    return {str(k): v for k, v in sorted(id2label.items())}


def label_map_from_json(data: dict) -> dict[int, str]:
    return {int(k): str(v) for k, v in data.items()}


def stratified_split(records: list[dict], *, val_ratio: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Hold out ``val_ratio`` of each class (at least one where a class has two or more examples).

    The same records, ratio and seed always give the same split, whatever the order of the classes.
    """
    by_label: dict[str, list[int]] = {}
    for i, rec in enumerate(records):
        by_label.setdefault(str(rec["label"]), []).append(i)
    val_idx: set[int] = set()
    for label in sorted(by_label):
        idx = by_label[label]
        if len(idx) < 2:
            continue
        n_val = min(len(idx) - 1, max(1, round(len(idx) * val_ratio)))
        shuffled = list(idx)
        random.Random(f"{seed}:{label}").shuffle(shuffled)
        val_idx.update(shuffled[:n_val])
    train = [r for i, r in enumerate(records) if i not in val_idx]
    val = [r for i, r in enumerate(records) if i in val_idx]
    return train, val


def class_weights(counts: dict[int, int], n_labels: int, mode: str) -> list[float] | None:
    """Inverse-frequency weights (``n / (k * n_c)``), or None for an unweighted loss."""
    present = [counts.get(i, 0) for i in range(n_labels)]
    nonzero = [c for c in present if c]
    if mode == "none" or not nonzero:
        return None
    if mode == "auto" and max(nonzero) <= 1.5 * min(nonzero):
        return None
    total = sum(present)
    return [total / (n_labels * c) if c else 0.0 for c in present]


def epoch_order(labels: list[int], *, seed: int, balanced: bool) -> list[int]:
    """One epoch's example order: a shuffle, or (``balanced``) as many draws, each class equally likely, with
    replacement inside a class, so a minority class is seen as often as the majority one. Replayable by seed."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    if not balanced:
        return torch.randperm(len(labels), generator=generator).tolist()
    counts = Counter(labels)
    weights = torch.tensor([1.0 / counts[y] for y in labels], dtype=torch.float64)
    return torch.multinomial(weights, len(labels), replacement=True, generator=generator).tolist()


# ------------------------------------------------------------------------------------------------- metrics

def confusion_matrix(y_true: list[int], y_pred: list[int], n_labels: int) -> list[list[int]]:
    """Rows: true class; columns: predicted class."""
    matrix = [[0] * n_labels for _ in range(n_labels)]
    for t, p in zip(y_true, y_pred, strict=True):
        matrix[t][p] += 1
    return matrix


def metrics_from_confusion(matrix: list[list[int]], labels: list[str]) -> dict:
    """Accuracy, macro-F1 and per-class precision/recall/F1/support (0 where undefined)."""
    n = len(labels)
    total = sum(sum(row) for row in matrix)
    correct = sum(matrix[i][i] for i in range(n))
    per_class = {}
    f1s = []
    for i, label in enumerate(labels):
        tp = matrix[i][i]
        predicted = sum(matrix[r][i] for r in range(n))
        support = sum(matrix[i])
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[label] = {"precision": precision, "recall": recall, "f1": f1, "support": support}
        f1s.append(f1)
    return {"accuracy": correct / total if total else 0.0, "macro_f1": sum(f1s) / n if n else 0.0,
            "per_class": per_class, "confusion_matrix": matrix, "labels": list(labels), "support": total}


def classification_metrics(y_true: list[int], y_pred: list[int], labels: list[str]) -> dict:
    return metrics_from_confusion(confusion_matrix(y_true, y_pred, len(labels)), labels)


# ------------------------------------------------------------------------------------------------- run

@dataclass
class ClassifierSpec:
    base_model_path: str | Path
    train: str | Path | list[dict]
    run_dir: Path
    adapter_dir: Path
    params: dict = field(default_factory=dict)
    validation: str | Path | list[dict] | None = None
    resume_from: str | Path | None = None
    device: str = "auto"
    summary_extra: dict = field(default_factory=dict)


@dataclass
class ClassifierResult:
    status: str  # succeeded | paused | cancelled
    params: ClassifierParams
    label_map: dict[int, str]
    global_step: int = 0
    total_steps: int = 0
    epoch: float = 0.0
    adapter_dir: Path | None = None
    checkpoint: Path | None = None
    metrics: dict = field(default_factory=dict)
    report: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
    best_epoch: int | None = None
    trainable_parameters: int = 0
    total_parameters: int = 0
    n_train: int = 0
    n_validation: int = 0
    device: str = "cpu"
    versions: dict = field(default_factory=dict)


def load_records(source: str | Path | list[dict], *, where: str) -> list[dict]:
    if isinstance(source, list):
        return clean_records(source, where=where)
    try:
        return clean_records(read_jsonl(source), where=where)
    except (OSError, ValueError) as exc:
        raise TrainingError(DATASET_ERROR, f"The {where} data could not be read: {exc}") from None


def prepare_data(spec: ClassifierSpec, params: ClassifierParams) -> tuple[list[dict], list[dict], dict[int, str]]:
    records = load_records(spec.train, where="training")
    if spec.validation is not None:
        train, val = records, load_records(spec.validation, where="validation")
    else:
        train, val = stratified_split(records, val_ratio=params.val_ratio, seed=params.seed)
    id2label = label_map_from(train)
    if len(id2label) < 2:
        raise TrainingError(DATASET_ERROR, "A classifier needs at least two labels in its training data.")
    unknown = sorted({r["label"] for r in val} - set(id2label.values()))
    if unknown:
        raise TrainingError(DATASET_ERROR, f"The validation data has labels the training data lacks: {unknown}.")
    if not val:
        raise TrainingError(DATASET_ERROR, "No validation examples: add a validation set, or more examples per "
                                           "class so that a split can hold some out.")
    return train, val, id2label


# What the BERT-style default names (``DEFAULT_TARGET_MODULES``) are called in encoders that name them otherwise.
TARGET_ALIASES = {
    "distilbert": {"query": "q_lin", "key": "k_lin", "value": "v_lin", "dense": ("out_lin", "lin1", "lin2")},
    "deberta-v2": {"query": "query_proj", "key": "key_proj", "value": "value_proj", "dense": "dense"},
}


def head_modules(model) -> list[str]:
    """The classification head: the model's top-level modules with weights outside the pretrained encoder
    (BERT, RoBERTa: ``classifier``; DistilBERT: ``pre_classifier`` and ``classifier``; DeBERTa-v2: ``pooler`` and
    ``classifier``). They are new (or, for BERT's pooler, part of the encoder), so they train in full."""
    prefix = getattr(model, "base_model_prefix", "")
    return [name for name, child in model.named_children()
            if name != prefix and any(True for _ in child.parameters())]


def lora_targets(model, requested: list[str]) -> list[str]:
    """The full names of the encoder's linear layers LoRA adapts: ``requested`` module names, translated for the
    architecture when they are the BERT defaults, and never inside the head (RoBERTa's head has a ``dense`` too,
    which ``modules_to_save`` trains in full)."""
    import torch

    model_type = getattr(model.config, "model_type", "")
    names = set(requested)
    if list(requested) == DEFAULT_TARGET_MODULES and model_type in TARGET_ALIASES:
        names = set()
        for alias in TARGET_ALIASES[model_type].values():
            names.update((alias,) if isinstance(alias, str) else alias)
    head = tuple(f"{h}." for h in head_modules(model))
    return sorted(name for name, module in model.named_modules()
                  if isinstance(module, torch.nn.Linear) and name.rsplit(".", 1)[-1] in names
                  and not name.startswith(head))


def load_model(base: str | Path, id2label: dict[int, str], *, params: ClassifierParams, resume_from=None):
    import torch
    from peft import LoraConfig, PeftModel, TaskType, get_peft_model

    base = Path(base)
    torch.manual_seed(params.seed)  # the new head's initialisation
    model = load_sequence_classifier(base, id2label=id2label)
    tokenizer = load_tokenizer(base)
    if model.config.pad_token_id is None and tokenizer.pad_token_id is not None:
        model.config.pad_token_id = tokenizer.pad_token_id
    if resume_from:
        return PeftModel.from_pretrained(model, str(resume_from), is_trainable=True), tokenizer
    targets = lora_targets(model, list(params.target_modules))
    if not targets:
        raise TrainingError(INVALID_PARAMS, f"target_modules {params.target_modules}: no linear layer of this "
                            f"{model.config.model_type} encoder has that name.")
    config = LoraConfig(task_type=TaskType.SEQ_CLS, r=params.lora_r, lora_alpha=params.lora_alpha,
                        lora_dropout=params.lora_dropout, target_modules=targets,
                        modules_to_save=head_modules(model))
    try:
        return get_peft_model(model, config), tokenizer
    except ValueError as exc:
        raise TrainingError(INVALID_PARAMS, f"target_modules {params.target_modules}: {exc}") from None


def _encode(tokenizer, records: list[dict], max_len: int, label2id: dict[str, int]) -> list[dict]:
    enc = tokenizer([r["text"] for r in records], truncation=True, max_length=max_len)
    return [{"input_ids": enc["input_ids"][i], "attention_mask": enc["attention_mask"][i],
             "label": label2id[r["label"]]} for i, r in enumerate(records)]


def _collate(tokenizer, items: list[dict], device: str):
    import torch

    batch = tokenizer.pad([{"input_ids": x["input_ids"], "attention_mask": x["attention_mask"]} for x in items],
                          return_tensors="pt")
    labels = torch.tensor([x["label"] for x in items], dtype=torch.long)
    return {k: v.to(device) for k, v in batch.items()}, labels.to(device)


def evaluate(model, tokenizer, encoded: list[dict], labels: list[str], *, device: str, batch_size: int) -> dict:
    import torch

    model.eval()
    y_true, y_pred, loss_sum = [], [], 0.0
    with torch.no_grad():
        for i in range(0, len(encoded), batch_size):
            inputs, gold = _collate(tokenizer, encoded[i:i + batch_size], device)
            logits = model(**inputs).logits.float()
            loss_sum += torch.nn.functional.cross_entropy(logits, gold, reduction="sum").item()
            y_pred += logits.argmax(-1).tolist()
            y_true += gold.tolist()
    model.train()
    report = classification_metrics(y_true, y_pred, labels)
    report["loss"] = loss_sum / max(1, len(encoded))
    return report


def _trainable_state(model) -> dict:
    return {n: p.detach().clone().cpu() for n, p in model.named_parameters() if p.requires_grad}


def _save_checkpoint(run_dir: Path, *, model, optimizer, scheduler, state: dict, best_state: dict | None) -> Path:
    import torch
    from safetensors.torch import save_file

    base = run_dir / "checkpoints"
    base.mkdir(parents=True, exist_ok=True)
    final = base / f"step-{state['global_step']}"
    tmp = temp_sibling(final)
    try:
        tmp.mkdir()
        model.save_pretrained(str(tmp), safe_serialization=True)
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        if best_state:
            save_file({k: v.contiguous() for k, v in best_state.items()}, str(tmp / BEST_STATE))
        (tmp / TRAINER_STATE).write_text(json.dumps(state, indent=1), encoding="utf-8")
        if final.exists():  # a pause right at an epoch boundary saves the same step again
            shutil.rmtree(final)
        publish(tmp, final, step=state["global_step"], kind="classifier-checkpoint")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    rotate_checkpoints(run_dir, KEEP_CHECKPOINTS, protect=final)
    return final


def _save_adapter(model, tokenizer, out_dir: Path, *, base: Path, id2label: dict[int, str], report: dict,
                  summary: dict) -> Path:
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(out_dir)
    try:
        tmp.mkdir()
        model.save_pretrained(str(tmp), safe_serialization=True)
        config_path = tmp / ADAPTER_CONFIG
        config = json.loads(config_path.read_text(encoding="utf-8"))
        config["base_model_name_or_path"] = str(base.resolve())
        config_path.write_text(json.dumps(config, indent=2, sort_keys=True), encoding="utf-8")
        tokenizer.save_pretrained(str(tmp))
        label_json = label_map_to_json(id2label)
        (tmp / LABEL_MAP_FILE).write_text(json.dumps({"id2label": label_json,
                                                      "label2id": {v: int(k) for k, v in label_json.items()}},
                                                     indent=2, ensure_ascii=False), encoding="utf-8")
        (tmp / REPORT_FILE).write_text(json.dumps(report, indent=2, ensure_ascii=False), encoding="utf-8")
        (tmp / SUMMARY_FILE).write_text(json.dumps(summary, indent=2, ensure_ascii=False, default=str),
                                        encoding="utf-8")
        return publish(tmp, out_dir, kind="classifier-adapter")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _message(hooks: Hooks, level: str, message: str, data: dict | None = None) -> None:
    hooks.on_message(level, message, data)


def _flat(report: dict, prefix: str = "") -> dict[str, float]:
    return {f"{prefix}accuracy": report["accuracy"], f"{prefix}macro_f1": report["macro_f1"],
            f"{prefix}valid_loss": report["loss"]}


def train_classifier(spec: ClassifierSpec, hooks: Hooks | None = None) -> ClassifierResult:
    """Train (or resume) one classifier; returns succeeded, paused or cancelled. Failures raise TrainingError."""
    import torch
    from safetensors.torch import load_file
    from transformers import get_linear_schedule_with_warmup

    hooks = hooks or NullHooks()
    try:
        params = validate_params(spec.params)
    except ValueError as exc:
        raise TrainingError(INVALID_PARAMS, str(exc)) from None
    device = resolve_device(spec.device)
    random.seed(params.seed)
    torch.manual_seed(params.seed)
    run_dir = Path(spec.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temp(run_dir / "checkpoints") if (run_dir / "checkpoints").is_dir() else None

    train, val, id2label = prepare_data(spec, params)
    params, auto = resolve_params(params, class_counts=Counter(r["label"] for r in train))
    resume = Path(spec.resume_from) if spec.resume_from else None
    state: dict[str, Any] = {}
    if resume is not None:
        problem = checkpoint_problem(resume)
        if problem:
            raise TrainingError(CHECKPOINT_INVALID, f"Checkpoint {resume.name} cannot be resumed: {problem}.")
        state = json.loads((resume / TRAINER_STATE).read_text(encoding="utf-8"))
        id2label = label_map_from_json(state["label_map"])
    labels = [id2label[i] for i in range(len(id2label))]
    label2id = {v: k for k, v in id2label.items()}

    model, tokenizer = load_model(spec.base_model_path, id2label, params=params, resume_from=resume)
    model.to(device)
    model.train()
    trainable, total = model.get_nb_trainable_parameters()
    counts = Counter(label2id[r["label"]] for r in train)
    weights = class_weights(counts, len(labels), params.class_weighting)
    max_len = min(params.max_seq_length, getattr(tokenizer, "model_max_length", 10**9) or 10**9,
                  getattr(model.config, "max_position_embeddings", 10**9) or 10**9)
    enc_train = _encode(tokenizer, train, max_len, label2id)
    enc_val = _encode(tokenizer, val, max_len, label2id)
    steps_per_epoch = math.ceil(len(enc_train) / params.batch_size)
    total_steps = steps_per_epoch * params.n_epochs

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=params.learning_rate,
                                  weight_decay=params.weight_decay)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(total_steps * params.warmup_ratio), total_steps)
    loss_fn = torch.nn.CrossEntropyLoss(
        weight=torch.tensor(weights, dtype=torch.float32, device=device) if weights else None)

    global_step = int(state.get("global_step", 0))
    start_epoch = int(state.get("epoch", 0))
    skip_batches = int(state.get("batch_in_epoch", 0))
    history: list[dict] = list(state.get("history", []))
    best_epoch = state.get("best_epoch")
    best_key = tuple(state["best_key"]) if state.get("best_key") else None
    best_state = None
    tokens_seen = int(state.get("tokens_seen", 0))
    if resume is not None:
        optimizer.load_state_dict(torch.load(resume / "optimizer.pt", map_location=device, weights_only=True))
        scheduler.load_state_dict(torch.load(resume / "scheduler.pt", weights_only=True))
        if (resume / BEST_STATE).is_file():
            best_state = load_file(str(resume / BEST_STATE))
        _message(hooks, "info", f"Resumed from {resume.name} (epoch {start_epoch + 1}, step {global_step}).")

    _message(hooks, "info", f"{len(train)} training and {len(val)} validation examples, {len(labels)} labels "
             f"({', '.join(labels)}); trainable parameters {trainable:,} of {total:,} "
             f"({100 * trainable / max(total, 1):.2f}%, LoRA + head); device {device}"
             + (f"; class weights {[round(w, 3) for w in weights]}" if weights else "") + ".",
             {"trainable_parameters": trainable, "total_parameters": total, "labels": labels,
              "n_train": len(train), "n_validation": len(val), "class_weights": weights})
    if auto:
        _message(hooks, "info", f"Auto parameters: {params.n_epochs} epochs of {steps_per_epoch} steps (batch "
                 f"{params.batch_size}), learning rate {params.learning_rate:g}, LoRA r={params.lora_r}; "
                 + "; ".join(f"{k}: {v}" for k, v in auto.items()) + ".", {"auto": auto})
    hooks.on_start(total_steps)

    def snapshot(epoch: int, batch_in_epoch: int) -> dict:
        return {"global_step": global_step, "epoch": epoch, "batch_in_epoch": batch_in_epoch,
                "history": history, "best_epoch": best_epoch, "best_key": list(best_key) if best_key else None,
                "label_map": label_map_to_json(id2label), "tokens_seen": tokens_seen, "params": params.to_dict()}

    def result(status: str, **extra) -> ClassifierResult:
        last = history[-1] if history else {}
        return ClassifierResult(status=status, params=params, label_map=id2label, global_step=global_step,
                                total_steps=total_steps, epoch=global_step / max(steps_per_epoch, 1),
                                history=history, best_epoch=best_epoch, trainable_parameters=trainable,
                                total_parameters=total, n_train=len(train), n_validation=len(val), device=device,
                                versions=library_versions(),
                                metrics={k: v for k, v in last.items() if isinstance(v, (int, float))}, **extra)

    started = time.monotonic()
    stopped_early = None
    session_steps = 0
    session_tokens = 0
    last_loss = None
    for epoch in range(start_epoch, params.n_epochs):
        order = epoch_order([x["label"] for x in enc_train], seed=params.seed + epoch,
                            balanced=params.sampling == "balanced")
        batches = [order[i:i + params.batch_size] for i in range(0, len(order), params.batch_size)]
        first = skip_batches if epoch == start_epoch else 0
        running, seen = 0.0, 0
        for b in range(first, len(batches)):
            stop = hooks.should_stop()
            if stop == "cancel":
                _message(hooks, "info", f"Cancelled at step {global_step}.")
                return result("cancelled")
            if stop == "pause":
                ckpt = _save_checkpoint(run_dir, model=model, optimizer=optimizer, scheduler=scheduler,
                                        state=snapshot(epoch, b), best_state=best_state)
                hooks.on_checkpoint(global_step, ckpt, {})
                return result("paused", checkpoint=ckpt)
            inputs, gold = _collate(tokenizer, [enc_train[i] for i in batches[b]], device)
            logits = model(**inputs).logits.float()
            loss = loss_fn(logits, gold)
            if not torch.isfinite(loss):
                raise TrainingError(NAN_LOSS, f"The loss became {loss.item()} at step {global_step + 1}; lower "
                                              "the learning rate.")
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            global_step += 1
            session_steps += 1
            n_tokens = int(inputs["attention_mask"].sum().item())
            tokens_seen += n_tokens
            session_tokens += n_tokens
            running += loss.item() * len(batches[b])
            seen += len(batches[b])
            last_loss = loss.item()
            elapsed = max(time.monotonic() - started, 1e-6)
            eta = (total_steps - global_step) * elapsed / session_steps
            hooks.on_progress(global_step, total_steps, epoch + (b + 1) / len(batches), tokens_seen,
                              session_tokens / elapsed, eta)
        report = evaluate(model, tokenizer, enc_val, labels, device=device, batch_size=max(params.batch_size, 32))
        train_loss = running / seen if seen else (last_loss or 0.0)
        row = {"epoch": epoch + 1, "step": global_step, "train_loss": train_loss,
               "learning_rate": scheduler.get_last_lr()[0], **_flat(report)}
        history.append({**row, "report": report})
        key = (report["macro_f1"], -report["loss"])
        improved = best_key is None or key > best_key
        if improved:
            best_key, best_epoch, best_state = key, epoch + 1, _trainable_state(model)
        hooks.on_metrics(global_step, row)
        _message(hooks, "info", f"Epoch {epoch + 1}/{params.n_epochs}: accuracy {report['accuracy']:.3f}, "
                 f"macro-F1 {report['macro_f1']:.3f}, validation loss {report['loss']:.4f}"
                 + (" (best so far)" if improved else ""),
                 {"epoch": epoch + 1, "report": report})
        ckpt = _save_checkpoint(run_dir, model=model, optimizer=optimizer, scheduler=scheduler,
                                state=snapshot(epoch + 1, 0), best_state=best_state)
        hooks.on_checkpoint(global_step, ckpt, row)
        patience = params.early_stopping_patience
        if patience and best_epoch is not None and epoch + 1 - best_epoch >= patience and epoch + 1 < params.n_epochs:
            stopped_early = epoch + 1
            _message(hooks, "info", f"Stopped early after epoch {epoch + 1}: no better validation macro-F1 for "
                     f"{patience} epochs; the adapter holds epoch {best_epoch}.")
            total_steps = global_step  # the run is complete: a finished task shows all its steps done
            break

    if best_state is not None:
        model.load_state_dict({k: v.to(device) for k, v in best_state.items()}, strict=False)
    best = next((h for h in history if h["epoch"] == best_epoch), history[-1])
    report = {**best["report"], "best_epoch": best_epoch,
              "epochs": [{k: v for k, v in h.items() if k != "report"} for h in history],
              "trainable_parameters": trainable, "total_parameters": total,
              "n_train": len(train), "n_validation": len(val), "label_map": label_map_to_json(id2label),
              "class_weights": weights, "auto": auto, "stopped_early_after_epoch": stopped_early}
    summary = {"params": params.to_dict(), "base_model": str(Path(spec.base_model_path).resolve()),
               "trainable_parameters": trainable, "total_parameters": total, "best_epoch": best_epoch,
               "global_step": global_step, "device": device, "versions": library_versions(), "auto": auto,
               "stopped_early_after_epoch": stopped_early, **spec.summary_extra}
    out = _save_adapter(model.cpu() if device != "cpu" else model, tokenizer, Path(spec.adapter_dir),
                        base=Path(spec.base_model_path), id2label=id2label, report=report, summary=summary)
    res = result("succeeded", adapter_dir=out, report=report)
    res.metrics = {"accuracy": best["accuracy"], "macro_f1": best["macro_f1"], "valid_loss": best["valid_loss"],
                   "train_loss": best["train_loss"], "best_epoch": best_epoch, "trainable_parameters": trainable,
                   "total_parameters": total}
    return res


def load_for_inference(adapter_dir: str | Path, base_model_path: str | Path | None = None, *, device: str = "cpu"):
    """(model, tokenizer, id2label) with plain PEFT, as any user would load the adapter."""
    from peft import PeftModel

    adapter_dir = Path(adapter_dir)
    labels = json.loads((adapter_dir / LABEL_MAP_FILE).read_text(encoding="utf-8"))
    id2label = label_map_from_json(labels["id2label"])
    if base_model_path is None:
        base_model_path = json.loads((adapter_dir / ADAPTER_CONFIG).read_text())["base_model_name_or_path"]
    base = load_sequence_classifier(base_model_path, id2label=id2label)
    model = PeftModel.from_pretrained(base, str(adapter_dir)).to(device).eval()
    tokenizer = load_tokenizer(tokenizer_source(adapter_dir, base_model_path))
    return model, tokenizer, id2label


def predict_texts(model, tokenizer, id2label: dict[int, str], texts: list[str], *, max_length: int = 512,
                  device: str = "cpu", batch_size: int = 64) -> list[dict]:
    """label, confidence and per-class probabilities for each text, in order."""
    import torch

    max_length = min(max_length, getattr(model.config, "max_position_embeddings", max_length) or max_length)
    out = []
    with torch.no_grad():
        for i in range(0, len(texts), batch_size):
            chunk = texts[i:i + batch_size]
            enc = tokenizer(chunk, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
            probs = torch.softmax(model(**{k: v.to(device) for k, v in enc.items()}).logits.float(), -1).cpu()
            for row in probs.tolist():
                best = max(range(len(row)), key=row.__getitem__)
                out.append({"label": id2label[best], "confidence": row[best],
                            "probabilities": {id2label[j]: p for j, p in enumerate(row)}})
    return out
