"""LoRA fine-tuning of a BERT-family encoder for text classification, on ``transformers.Trainer`` (plain module;
no Django). The worker's child process calls ``train_classifier(spec, hooks)``; this module imports torch and
transformers, so web-process code uses ``ml.classifier_data`` (data, metrics, inference) and
``ml.classifier_params`` instead.

PEFT ``task_type=SEQ_CLS`` on ``AutoModelForSequenceClassification``: LoRA on attention and feed-forward, and a
new classification head trained in full and saved alongside the adapter (``modules_to_save``), so

    PeftModel.from_pretrained(AutoModelForSequenceClassification.from_pretrained(
        base, num_labels=n, id2label=..., label2id=...), adapter_dir)

gives the trained classifier. The run is the causal recipe's (``ml.train.common``): the same hooks bridge
(progress, metrics, cancel within a step, pause at a step's end), atomic ``step-N`` checkpoints with rotation,
resume checks and tracking. What is the classifier's own: balanced sampling (``EpochSampler``) or class weights in
the loss, a validation after every epoch whose macro-F1 picks the best epoch (Trainer's ``metric_for_best_model``
and ``load_best_model_at_end``: the adapter holds that epoch; ties go to the lower validation loss), and early
stopping on it (``EarlyStopping``).
A checkpoint is written after every epoch and on pause; a resumed run replays the same data order, so it ends
with the same adapter as an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

# see ml/train/sft.py: must be set before torch is first imported
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from transformers import (  # noqa: E402
    DataCollatorWithPadding,
    PrinterCallback,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from ml.classifier_data import (  # noqa: E402
    LABEL_MAP_FILE,
    class_weights,
    classification_metrics,
    label_map_file,
    label_map_from,
    label_map_to_json,
    load_records,
    stratified_split,
)
from ml.classifier_params import (  # noqa: E402
    DEFAULT_TARGET_MODULES,
    ClassifierParams,
    resolve_params,
    validate_params,
)
from ml.errors import DATASET_ERROR, INVALID_PARAMS, NAN_LOSS, TrainingError, classify  # noqa: E402
from ml.model import load_sequence_classifier, load_tokenizer  # noqa: E402
from ml.probe import library_versions, resolve_device, use_available_cpus  # noqa: E402
from ml.train import checkpoints as ckpt  # noqa: E402
from ml.train.common import (  # noqa: E402
    AtomicCheckpoints,
    HooksBridge,
    ListDataset,
    check_resume,
    check_resume_folder,
    stop_before_training,
)
from ml.train.hooks import Hooks, NullHooks  # noqa: E402
from ml.train.tracking import tracking_callbacks  # noqa: E402

logger = logging.getLogger(__name__)

REPORT_FILE = "classification_report.json"
KEEP_CHECKPOINTS = 2
# What must not change between a checkpoint and its resumption: the schedule, the data order, the model's shape.
RESUME_INVARIANTS = ("n_epochs", "batch_size", "learning_rate", "weight_decay", "warmup_ratio", "max_seq_length",
                     "lora_r", "lora_alpha", "lora_dropout", "target_modules", "class_weighting", "sampling",
                     "early_stopping_patience", "seed", "val_ratio")


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
    history: list[dict] = field(default_factory=list)  # one row per epoch: losses, accuracy, macro-F1
    best_epoch: int | None = None
    trainable_parameters: int = 0
    total_parameters: int = 0
    n_train: int = 0
    n_validation: int = 0
    device: str = "cpu"
    versions: dict = field(default_factory=dict)


# ------------------------------------------------------------------------------------------------- data

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


def data_fingerprint(train: list[dict], val: list[dict]) -> str:
    h = hashlib.sha256()
    for part, rows in (("train", train), ("validation", val)):
        h.update(part.encode())
        for r in rows:
            h.update(f"{len(r['text'])}:{r['text']}\x00{r['label']}\x00".encode())
    return h.hexdigest()[:16]


def encode(tokenizer, records: list[dict], max_len: int, label2id: dict[str, int]) -> list[dict]:
    enc = tokenizer([r["text"] for r in records], truncation=True, max_length=max_len)
    return [{"input_ids": enc["input_ids"][i], "attention_mask": enc["attention_mask"][i],
             "labels": label2id[r["label"]]} for i, r in enumerate(records)]


class EpochSampler(torch.utils.data.Sampler):
    """One epoch's example order, from (seed, epoch) only, so a resumed run replays it: a shuffle, or
    (``balanced``) as many draws, each class equally likely, with replacement inside a class, so a minority class
    is seen as often as the majority one."""

    def __init__(self, labels: list[int], *, seed: int, balanced: bool):
        self.labels = list(labels)
        self.seed = int(seed)
        self.balanced = balanced
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.labels)

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        if not self.balanced:
            return iter(torch.randperm(len(self.labels), generator=generator).tolist())
        counts = Counter(self.labels)
        weights = torch.tensor([1.0 / counts[y] for y in self.labels], dtype=torch.float64)
        return iter(torch.multinomial(weights, len(self.labels), replacement=True, generator=generator).tolist())


# ------------------------------------------------------------------------------------------------- model

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


def load_model(base: str | Path, id2label: dict[int, str], *, params: ClassifierParams):
    """The encoder with a new ``len(id2label)``-way head and LoRA attached, and its tokenizer. A resumed run's
    weights are loaded by the Trainer from the checkpoint."""
    from peft import LoraConfig, TaskType, get_peft_model

    base = Path(base)
    torch.manual_seed(params.seed)  # the new head's initialisation, then LoRA's
    model = load_sequence_classifier(base, id2label=id2label)
    tokenizer = load_tokenizer(base)
    if model.config.pad_token_id is None and tokenizer.pad_token_id is not None:
        model.config.pad_token_id = tokenizer.pad_token_id
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


# ------------------------------------------------------------------------------------------------- trainer

class ClassifierTrainer(AtomicCheckpoints, Trainer):
    """Trainer with the epoch sampler, a class-weighted cross-entropy (training only: the validation loss is
    unweighted) and atomic ``step-N`` checkpoints."""

    def __init__(self, *args, recipe: dict, sampler: EpochSampler, weights: list[float] | None, **kwargs):
        super().__init__(*args, recipe=recipe, **kwargs)
        self.sampler = sampler
        self.weights = torch.tensor(weights, dtype=torch.float32, device=self.args.device) if weights else None

    def _get_train_sampler(self, train_dataset=None):
        return self.sampler

    def get_decay_parameter_names(self, model) -> list[str]:
        # Weight decay on every trained weight, LoRA's and the head's biases and norms too: the rule the
        # classifier's "auto" parameters were measured with (Trainer's default spares biases and LayerNorms).
        return [name for name, p in model.named_parameters() if p.requires_grad]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs["labels"]
        outputs = model(**{k: v for k, v in inputs.items() if k != "labels"})
        logits = outputs.logits.float()
        loss = torch.nn.functional.cross_entropy(logits, labels, weight=self.weights if model.training else None)
        if model.training and not bool(torch.isfinite(loss)):
            raise TrainingError(NAN_LOSS, f"The loss became {loss.item()} at step {self.state.global_step + 1}; "
                                          "lower the learning rate.")
        return (loss, outputs) if return_outputs else loss

    def _determine_best_metric(self, metrics: dict[str, float], trial) -> bool:
        """The best epoch: the highest validation macro-F1, a tie going to the lower validation loss (on a small
        set macro-F1 often stays level for epochs while the loss still falls; measured on the MiniLM set of
        tests/classifier/test_imbalanced_minilm.py: the first of the tied epochs scored 0.76 held out, against
        0.85 and more for the best by both). ``state.best_metric`` keeps the macro-F1; the loss to beat is read
        from the log history, which a resumed run carries on."""
        if not improves_on_best(self.state, metrics):
            return False
        self.state.best_metric = metrics["eval_macro_f1"]
        self.state.best_global_step = self.state.global_step
        return True


def improves_on_best(state, metrics: dict[str, float]) -> bool:
    """Whether these validation metrics beat the best epoch's so far (``_determine_best_metric``'s rule)."""
    best = next((h for h in state.log_history if h.get("step") == state.best_global_step and "eval_macro_f1" in h),
                None)
    if best is None:
        return True
    return (metrics["eval_macro_f1"], -metrics["eval_loss"]) > (best["eval_macro_f1"], -best["eval_loss"])


class EarlyStopping(TrainerCallback):
    """Stops the run after ``patience`` validations none of which was the best (by the trainer's
    ``_determine_best_metric``). It reads only the Trainer's state, so a resumed run counts on where it stopped.
    Checked once the epoch's checkpoint is written, so the last epoch is saved as any other."""

    def __init__(self, patience: int):
        self.patience = patience

    def on_save(self, args, state, control, **kwargs):
        since_best = sum(1 for h in state.log_history
                         if "eval_macro_f1" in h and h["step"] > (state.best_global_step or 0))
        if since_best >= self.patience:
            control.should_training_stop = True


class ClassifierBridge(HooksBridge):
    """The hooks bridge with the classifier's metrics: once per epoch, after its validation, the epoch's mean
    training loss, last learning rate, validation accuracy, macro-F1 and loss (and a line in the task's log).
    Progress still goes out after every step."""

    def __init__(self, hooks: Hooks, n_epochs: int):
        super().__init__(hooks)
        self.n_epochs = n_epochs

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        if "eval_macro_f1" not in logs:
            return
        row = epoch_rows(state.log_history)[-1]  # this evaluation's: it is in the history already
        metrics = {k: float(row[k]) for k in ("train_loss", "learning_rate", "accuracy", "macro_f1", "valid_loss")
                   if row[k] is not None}
        metrics["epoch"] = float(row["epoch"])
        self.last_metrics.update(metrics)
        self.history.append({"step": state.global_step, **metrics})
        self.hooks.on_metrics(state.global_step, metrics)
        # logged inside the evaluation, before the Trainer compares it with the best so far
        best = " (best so far)" if improves_on_best(state, logs) else ""
        self.hooks.on_message(
            "info", f"Epoch {row['epoch']}/{self.n_epochs}: accuracy {row['accuracy']:.3f}, macro-F1 "
            f"{row['macro_f1']:.3f}, validation loss {row['valid_loss']:.4f}{best}", {"step": state.global_step, **row})


def epoch_rows(log_history: list[dict]) -> list[dict]:
    """One row per validated epoch from the Trainer's log history (which a resumed run carries on): the mean of
    the epoch's step losses (every step is logged, so a pause inside an epoch changes nothing), the last learning
    rate, the validation scores."""
    rows: list[dict] = []
    losses: list[float] = []
    learning_rate = None
    for h in log_history:
        if "loss" in h:
            losses.append(h["loss"])
            learning_rate = h.get("learning_rate")
        elif "eval_macro_f1" in h:
            rows.append({"epoch": round(h["epoch"]), "step": h["step"],
                         "train_loss": sum(losses) / len(losses) if losses else None, "learning_rate": learning_rate,
                         "accuracy": h["eval_accuracy"], "macro_f1": h["eval_macro_f1"], "valid_loss": h["eval_loss"]})
            losses = []
    return rows


# ------------------------------------------------------------------------------------------------- run

def train_classifier(spec: ClassifierSpec, hooks: Hooks | None = None) -> ClassifierResult:
    """Train (or resume) one classifier; returns succeeded, paused or cancelled. Failures raise TrainingError."""
    hooks = hooks or NullHooks()
    try:
        return _run(spec, hooks)
    except TrainingError:
        raise
    except Exception as exc:  # noqa: BLE001 - every failure leaves here classified
        raise classify(exc) from exc


def _run(spec: ClassifierSpec, hooks: Hooks) -> ClassifierResult:
    from transformers import set_seed

    try:
        params = validate_params(spec.params)
    except ValueError as exc:
        raise TrainingError(INVALID_PARAMS, str(exc)) from None
    device = resolve_device(spec.device)
    use_available_cpus(device)
    run_dir = Path(spec.run_dir)
    checkpoints_dir = run_dir / "checkpoints"
    checkpoints_dir.mkdir(parents=True, exist_ok=True)
    ckpt.remove_stale_temp(checkpoints_dir)
    resume = Path(spec.resume_from) if spec.resume_from else None
    check_resume_folder(resume)

    train, val, id2label = prepare_data(spec, params)
    params, auto = resolve_params(params, class_counts=Counter(r["label"] for r in train))
    fingerprint = data_fingerprint(train, val)
    if resume is not None:
        check_resume(resume, params, fingerprint, RESUME_INVARIANTS)
    labels = [id2label[i] for i in range(len(id2label))]
    label2id = {v: k for k, v in id2label.items()}

    def ended(status: str, **extra) -> ClassifierResult:
        return ClassifierResult(status=status, params=params, label_map=id2label, n_train=len(train),
                                n_validation=len(val), device=device, versions=library_versions(), **extra)

    stopped = stop_before_training(hooks, resume)
    if stopped is not None:
        return ended(stopped.status, global_step=stopped.global_step, checkpoint=resume)

    set_seed(params.seed)
    model, tokenizer = load_model(spec.base_model_path, id2label, params=params)
    trainable, total = model.get_nb_trainable_parameters()
    weights = class_weights(Counter(label2id[r["label"]] for r in train), len(labels), params.class_weighting)
    max_len = min(params.max_seq_length, getattr(tokenizer, "model_max_length", 10**9) or 10**9,
                  getattr(model.config, "max_position_embeddings", 10**9) or 10**9)
    enc_train = encode(tokenizer, train, max_len, label2id)
    enc_val = encode(tokenizer, val, max_len, label2id)
    steps_per_epoch = -(-len(enc_train) // params.batch_size)

    hooks.on_message(
        "info", f"{len(train)} training and {len(val)} validation examples, {len(labels)} labels "
        f"({', '.join(labels)}); trainable parameters {trainable:,} of {total:,} "
        f"({100 * trainable / max(total, 1):.2f}%, LoRA + head); device {device}"
        + (f"; class weights {[round(w, 3) for w in weights]}" if weights else "") + ".",
        {"trainable_parameters": trainable, "total_parameters": total, "labels": labels, "n_train": len(train),
         "n_validation": len(val), "class_weights": weights})
    if auto:
        hooks.on_message("info", f"Auto parameters: {params.n_epochs} epochs of {steps_per_epoch} steps (batch "
                         f"{params.batch_size}), learning rate {params.learning_rate:g}, LoRA r={params.lora_r}; "
                         + "; ".join(f"{k}: {v}" for k, v in auto.items()) + ".", {"auto": auto})

    def compute_metrics(prediction) -> dict[str, float]:
        scores = classification_metrics(prediction.label_ids.tolist(), prediction.predictions.argmax(-1).tolist(),
                                        labels)
        return {"accuracy": scores["accuracy"], "macro_f1": scores["macro_f1"]}

    train_args = TrainingArguments(
        output_dir=str(checkpoints_dir),
        per_device_train_batch_size=params.batch_size,
        per_device_eval_batch_size=max(params.batch_size, 32),
        num_train_epochs=params.n_epochs,
        learning_rate=params.learning_rate,
        lr_scheduler_type="linear",
        warmup_steps=int(steps_per_epoch * params.n_epochs * params.warmup_ratio),  # whole steps, rounded down
        weight_decay=params.weight_decay,
        max_grad_norm=1.0,
        optim="adamw_torch",
        use_cpu=device == "cpu",
        logging_strategy="steps",
        logging_steps=1,  # every step's loss is kept in the log history, for each epoch's mean (epoch_rows)
        eval_strategy="epoch",
        save_strategy="epoch",
        save_total_limit=None,  # ours: AtomicCheckpoints rotates, keeping the best epoch's folder
        load_best_model_at_end=True,
        metric_for_best_model="macro_f1",
        greater_is_better=True,
        seed=params.seed,
        report_to="none",
        disable_tqdm=True,
        remove_unused_columns=False,
        label_names=["labels"],
        dataloader_num_workers=0,
        include_num_input_tokens_seen="non_padding",
    )
    bridge = ClassifierBridge(hooks, params.n_epochs)
    callbacks = [bridge, *tracking_callbacks(run_dir, params, spec.summary_extra)]
    if params.early_stopping_patience:
        callbacks.append(EarlyStopping(params.early_stopping_patience))
    recipe = {"checkpoints_dir": str(checkpoints_dir), "run_dir": str(run_dir), "keep_checkpoints": KEEP_CHECKPOINTS,
              "params": params.to_dict(), "data_fingerprint": {"fingerprint": fingerprint, "n_train": len(train),
                                                               "n_validation": len(val)},
              "on_checkpoint": lambda step, path: hooks.on_checkpoint(step, path, dict(bridge.last_metrics))}
    trainer = ClassifierTrainer(
        model=model, args=train_args, train_dataset=ListDataset(enc_train), eval_dataset=ListDataset(enc_val),
        processing_class=tokenizer, data_collator=DataCollatorWithPadding(tokenizer), compute_metrics=compute_metrics,
        callbacks=callbacks, recipe=recipe,
        sampler=EpochSampler([x["labels"] for x in enc_train], seed=params.seed,
                             balanced=params.sampling == "balanced"),
        weights=weights)
    trainer.remove_callback(PrinterCallback)  # with tqdm off it prints every log to stdout; the hooks have them
    if resume is not None:
        hooks.on_message("info", f"Resuming from {resume.name}.")
    t0 = time.monotonic()
    trainer.train(resume_from_checkpoint=str(resume) if resume is not None else None)
    wall = time.monotonic() - t0

    state = trainer.state
    history = epoch_rows(state.log_history)
    common = {"global_step": state.global_step, "total_steps": state.max_steps, "epoch": float(state.epoch or 0),
              "history": history, "trainable_parameters": trainable, "total_parameters": total}
    if bridge.stop_reason is not None:
        return ended("cancelled" if bridge.stop_reason == "cancel" else "paused",
                     checkpoint=ckpt.latest_good_checkpoint(run_dir), **common)

    stopped_early = None
    if state.global_step < state.max_steps:
        stopped_early = history[-1]["epoch"]
        common["total_steps"] = state.global_step  # the run is complete: a finished task shows all its steps done
    best = next((h for h in history if h["step"] == state.best_global_step), history[-1])
    if stopped_early is not None:
        hooks.on_message("info", f"Stopped early after epoch {stopped_early}: no better validation macro-F1 for "
                         f"{params.early_stopping_patience} epochs; the adapter holds epoch {best['epoch']}.")
    # The model now holds the best epoch (load_best_model_at_end): its full report on the validation set.
    prediction = trainer.predict(ListDataset(enc_val))
    scores = classification_metrics(prediction.label_ids.tolist(), prediction.predictions.argmax(-1).tolist(),
                                    labels)
    scores["loss"] = float(prediction.metrics["test_loss"])
    report = {**scores, "best_epoch": best["epoch"], "epochs": history, "trainable_parameters": trainable,
              "total_parameters": total, "n_train": len(train), "n_validation": len(val),
              "label_map": label_map_to_json(id2label), "class_weights": weights, "auto": auto,
              "stopped_early_after_epoch": stopped_early}
    versions = library_versions()
    summary = {"params": params.to_dict(), "base_model": str(Path(spec.base_model_path).resolve()),
               "trainable_parameters": trainable, "total_parameters": total, "best_epoch": best["epoch"],
               "global_step": state.global_step, "device": device, "versions": versions, "auto": auto,
               "stopped_early_after_epoch": stopped_early, "train_runtime_s": round(wall, 3), **spec.summary_extra}
    out = ckpt.save_adapter(model, tokenizer, spec.adapter_dir, summary, base_model_path=spec.base_model_path,
                            extra_files={LABEL_MAP_FILE: label_map_file(id2label), REPORT_FILE: report},
                            kind="classifier-adapter")
    metrics = {"accuracy": scores["accuracy"], "macro_f1": scores["macro_f1"], "valid_loss": scores["loss"],
               "train_loss": best["train_loss"], "best_epoch": best["epoch"], "trainable_parameters": trainable,
               "total_parameters": total}
    return ended("succeeded", adapter_dir=out, report=report, metrics=metrics, best_epoch=best["epoch"], **common)
