"""Training hyperparameters: one pydantic model, the "auto" resolution, and the memory estimate.

Plain module (no Django, no torch import) so the API schema, the service, the admin form and the
worker share one definition and tests run without a database.

``TrainingParams`` is what a user sends (every knob may be left out; several accept ``"auto"``).
``resolve_params`` turns it into ``ResolvedParams`` — only concrete values, plus a sentence per
auto choice saying why — from the dataset size and the device. ``estimate_memory`` predicts the peak
memory of a run so a task that cannot fit is refused when it is created, not when it OOMs.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ml.templates import resolve_template

Auto = Literal["auto"]
AUTO = "auto"

LR_SCHEDULERS = ("linear", "cosine", "constant", "constant_with_warmup")
QUANTIZATIONS = ("nf4", "int8", "none")
# Prompt templates for base models without a chat template of their own; "chat_template" = the model's.
TEMPLATES = ("chat_template", "chatml", "alpaca", "alpaca_zh")

_MODULE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*$")

# Training methods: supervised fine-tuning, and the preference methods TRL trains (the task's ``method``).
METHODS = ("sft", "dpo", "orpo", "kto")
PREFERENCE_METHODS = ("dpo", "orpo", "kto")
# TRL 1.16's loss definitions, by their TRL names: DPOConfig.loss_type and KTOConfig.loss_type (ORPO has none).
DPO_LOSS_TYPES = ("sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
                  "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm")
KTO_LOSS_TYPES = ("kto", "apo_zero_unpaired")
LOSS_TYPES = {"dpo": DPO_LOSS_TYPES, "kto": KTO_LOSS_TYPES}
DEFAULT_LOSS_TYPE = {"dpo": "sigmoid", "kto": "kto"}
# Parameters only some methods read; any other method refuses them (naming the parameter) rather than ignore them.
METHOD_ONLY = {
    "beta": PREFERENCE_METHODS,
    "loss_type": ("dpo", "kto"),
    "label_smoothing": ("dpo",),
    "desirable_weight": ("kto",),
    "undesirable_weight": ("kto",),
    "bf16": ("sft",),  # the preference recipe computes in the device's default dtype
}
DEFAULT_BETA = 0.1  # TRL's default for DPO, KTO and ORPO (ORPO's lambda, which TRL also calls beta)
# Preference tuning moves a model that already answers well: a smaller step than SFT's (LoRA DPO recipes use
# 5e-6..5e-5 on large sets; small review sets need more per step to move at all).
PREFERENCE_LR_FACTOR = 0.2
MAX_PROCESSES = 64  # ranks of one task (torchrun --nproc-per-node)
STRATEGIES = ("ddp", "fsdp")


class TrainingParams(BaseModel):
    """Every knob of a fine-tuning run, with validated ranges; ``"auto"`` where a good value depends on the data."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    n_epochs: Annotated[int, Field(ge=1, le=100)] | Auto = AUTO
    batch_size: Annotated[int, Field(ge=1, le=512)] | Auto = AUTO
    gradient_accumulation_steps: Annotated[int, Field(ge=1, le=1024)] | Auto = AUTO
    learning_rate: Annotated[float, Field(gt=0, le=0.01)] | Auto = AUTO
    learning_rate_multiplier: Annotated[float, Field(gt=0, le=10)] | Auto = AUTO
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] | Auto = AUTO
    warmup_ratio: Annotated[float, Field(ge=0, le=0.5)] | Auto = AUTO
    max_seq_length: Annotated[int, Field(ge=16, le=131072)] | Auto = AUTO
    lora_r: Annotated[int, Field(ge=1, le=1024)] | Auto = AUTO
    lora_alpha: Annotated[float, Field(gt=0, le=4096)] | Auto = AUTO
    lora_dropout: Annotated[float, Field(ge=0, lt=1)] | Auto = AUTO
    target_modules: Literal["all-linear"] | list[str] = "all-linear"
    quantization: Literal["nf4", "int8", "none"] | Auto = AUTO
    loss_on: Literal["assistant", "all"] = "assistant"
    packing: bool | Auto = AUTO
    seed: Annotated[int, Field(ge=0, le=2**32 - 1)] = 42
    eval_steps: Annotated[int, Field(ge=1)] | Auto = AUTO
    save_steps: Annotated[int, Field(ge=1)] | Auto = AUTO
    max_steps: Annotated[int, Field(ge=1)] | None = None
    template: Literal["chat_template", "chatml", "alpaca", "alpaca_zh"] | Auto = AUTO
    # compute in bf16: true, false (fp32), or auto (CUDA: bf16 where supported; CPU: decided at start-up by a probe)
    bf16: bool | Auto = AUTO
    # preference methods (dpo, orpo, kto); TRL's names and meanings
    beta: Annotated[float, Field(gt=0, le=100)] | Auto = AUTO
    loss_type: Literal[DPO_LOSS_TYPES + KTO_LOSS_TYPES] | Auto = AUTO  # type: ignore[valid-type]
    label_smoothing: Annotated[float, Field(ge=0, lt=0.5)] = 0.0
    desirable_weight: Annotated[float, Field(gt=0, le=100)] | Auto = AUTO
    undesirable_weight: Annotated[float, Field(gt=0, le=100)] | Auto = AUTO
    # several processes per task (torchrun): "auto" = every GPU of the worker's host; gloo ranks on CPU
    num_processes: Annotated[int, Field(ge=1, le=MAX_PROCESSES)] | Auto = 1
    strategy: Literal["ddp", "fsdp"] = "ddp"
    # the most tokens one forward/backward pass holds activations for: a batch with more is run in chunks of whole
    # examples whose gradients add up to the batch's (the same step, less memory); 0: the batch in one pass
    micro_batch_tokens: Annotated[int, Field(ge=0, le=10_000_000)] | Auto = AUTO

    @field_validator("target_modules")
    @classmethod
    def _check_modules(cls, value: Any) -> Any:
        if isinstance(value, list):
            if not value:
                raise ValueError('give at least one module name, or "all-linear"')
            for name in value:
                if not _MODULE_NAME.match(name):
                    raise ValueError(f"{name!r} is not a module name (e.g. q_proj)")
            if len(set(value)) != len(value):
                raise ValueError("module names are repeated")
        return value


class InvalidParams(ValueError):
    """A parameter is invalid; ``field`` names it (``None`` for the object as a whole)."""

    def __init__(self, message: str, field: str | None, errors: list[dict] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.errors = errors or []


def parse_params(data: dict | TrainingParams | None) -> TrainingParams:
    """Validate user JSON into ``TrainingParams``; raise ``InvalidParams`` naming the first bad field."""
    if isinstance(data, TrainingParams):
        return data
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise InvalidParams("Parameters must be a JSON object.", None)
    try:
        return TrainingParams.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        name = str(errors[0]["loc"][0]) if errors[0].get("loc") else None
        messages = []
        for err in errors:
            field_name = str(err["loc"][0]) if err.get("loc") else "parameters"
            if err["type"] == "extra_forbidden":
                messages.append(f"{field_name}: unknown parameter")
            else:
                messages.append(f"{field_name}: {err['msg']}")
        # pydantic reports one error per union member ("auto" or a number); keep each message once
        raise InvalidParams("; ".join(dict.fromkeys(messages)), name, errors) from exc


def check_method(method: str) -> str:
    if method not in METHODS:
        raise InvalidParams(f"method: must be one of {', '.join(METHODS)}, not {method!r}", "method")
    return method


def check_method_params(params: TrainingParams, method: str) -> None:
    """Refuse parameters the method does not read, naming them (a KTO weight on a DPO task is a mistake)."""
    check_method(method)
    given = params.model_fields_set
    for name, methods in METHOD_ONLY.items():
        value = getattr(params, name)
        # 0.0 is the default of the numeric ones; a boolean is never a default (False == 0.0 in Python)
        if name in given and method not in methods and value != AUTO and (isinstance(value, bool) or value != 0.0):
            raise InvalidParams(f"{name}: only for method {' or '.join(methods)}, not {method}", name)
    if params.loss_type != AUTO:
        allowed = LOSS_TYPES.get(method, ())
        if params.loss_type not in allowed:
            raise InvalidParams(f"loss_type: {params.loss_type!r} is not a {method.upper()} loss; choose from "
                                f"{', '.join(allowed)}", "loss_type")
    if method in PREFERENCE_METHODS:
        if params.num_processes not in (1, AUTO):
            raise InvalidParams(f"num_processes: method {method} trains in one process (several are for sft)",
                                "num_processes")
        if params.packing is True:
            raise InvalidParams(f"packing: not available for method {method} (pairs are compared whole)", "packing")
        if params.loss_on != "assistant":
            raise InvalidParams(f"loss_on: method {method} trains on the answers only", "loss_on")
    if method == "dpo" and params.loss_type == "exo_pair" and params.label_smoothing == 0:
        raise InvalidParams("label_smoothing: the exo_pair loss needs label_smoothing > 0 (the EXO paper: 1e-3)",
                            "label_smoothing")


@dataclass
class ResolvedParams:
    """Concrete values for one run, and why each "auto" value was chosen."""

    n_epochs: int
    batch_size: int
    gradient_accumulation_steps: int
    learning_rate: float
    lr_scheduler: str
    warmup_ratio: float
    max_seq_length: int
    lora_r: int
    lora_alpha: float
    lora_dropout: float
    target_modules: str | list[str]
    quantization: str
    loss_on: str
    packing: bool
    seed: int
    eval_steps: int
    save_steps: int
    max_steps: int | None
    template: str
    device: str
    bf16: bool | str = AUTO  # "auto": decided on the worker at start-up (ml.probe.precision_plan)
    # the estimate of optimizer steps the schedule has (exact once the data is tokenised and packed)
    steps_per_epoch: int = 0
    total_steps: int = 0
    learning_rate_multiplier: float = 1.0
    auto: dict[str, str] = field(default_factory=dict)
    # preference methods (sft: the defaults, unused)
    method: str = "sft"
    beta: float = DEFAULT_BETA
    loss_type: str = ""
    label_smoothing: float = 0.0
    desirable_weight: float = 1.0
    undesirable_weight: float = 1.0
    # ranks of the run (global batch = batch_size x num_processes x gradient_accumulation_steps), and how they
    # share the model: ddp (a full copy each) or fsdp (parameters, gradients and optimizer state sharded)
    num_processes: int = 1
    strategy: str = "ddp"
    micro_batch_tokens: int = 0

    @property
    def effective_batch_size(self) -> int:
        return self.batch_size * self.num_processes * self.gradient_accumulation_steps

    def to_dict(self) -> dict:
        from dataclasses import asdict

        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ResolvedParams:
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in names})


# Auto design (issue 4). Measured on SmolLM2-135M with ~30 customer-service Q&A: the tutorial's 3 epochs at
# 2e-4 recall none of four facts, 6 epochs at 5e-4 recall three. What a small set lacks is optimizer steps
# and step size, so auto (1) keeps the effective batch small for small sets (more steps per epoch),
# (2) trains at least MIN_OPTIMIZER_STEPS steps, in up to MAX_AUTO_EPOCHS epochs, and (3) raises the
# learning rate and rank for small sets. Large sets converge to the tutorial values: 3 epochs (fewer for
# very large sets), lr 2e-4, r 16, alpha 32, effective batch 16-32.
MIN_OPTIMIZER_STEPS = 80
MAX_AUTO_EPOCHS = 15
BASE_LR = 2e-4
SMALL_SET_LR = 1e-3
LARGE_SET = 2000  # examples from which the tutorial defaults apply
SMALL_SET = 50  # examples up to which the small-set values apply in full
HUGE_SET_EXAMPLES = 60000  # epochs shrink so a run sees about this many examples when sets are huge


# "auto" micro_batch_tokens on CPU: on SmolLM2-135M with bf16, batches of 8 chat examples (up to ~3,500 tokens)
# peaked at 3.8 GiB in one pass at 465 tokens/s, at 3.1 GiB in passes of 1,536 tokens at 416 tokens/s; smaller
# passes cost more speed than they save memory (1,024: 2.8 GiB, 361 tokens/s; benchmarks/RESULTS.md, "Memory").
CPU_MICRO_BATCH_TOKENS = 1536


def _small_set_factor(n: int) -> float:
    """1.0 for sets of SMALL_SET or fewer examples, 0.0 from LARGE_SET, log-linear in between."""
    if n <= SMALL_SET:
        return 1.0
    if n >= LARGE_SET:
        return 0.0
    return 1.0 - (math.log(n) - math.log(SMALL_SET)) / (math.log(LARGE_SET) - math.log(SMALL_SET))


def resolve_params(
    params: TrainingParams | dict | None,
    *,
    n_examples: int,
    n_tokens_mean: float | None = None,
    n_tokens_max: int | None = None,
    device: Literal["cpu", "cuda"] = "cpu",
    gpu_memory_gb: float | None = None,
    has_chat_template: bool = True,
    model_max_length: int | None = None,
    has_validation: bool = False,
    method: str = "sft",
    label_counts: tuple[int, int] | None = None,
    gpu_count: int | None = None,
) -> ResolvedParams:
    """Replace every ``"auto"`` by a concrete value for this dataset and device.

    ``n_examples``: training examples (preference pairs for dpo/orpo, labelled rows for kto);
    ``n_tokens_mean``/``n_tokens_max``: their token lengths when known (tokenised with the base model's tokenizer);
    ``gpu_memory_gb``: total memory of the CUDA device; ``label_counts``: KTO's (desirable, undesirable) rows;
    ``gpu_count``: what ``num_processes="auto"`` means: the GPUs of the host the run is planned for (in a running
    group: its world size).
    """
    p = parse_params(params)
    check_method_params(p, method)
    if device not in ("cpu", "cuda"):
        raise InvalidParams(f"device must be 'cpu' or 'cuda', not {device!r}", "device")
    n = max(1, int(n_examples))
    why: dict[str, str] = {}
    small = _small_set_factor(n)

    if p.num_processes == AUTO and method in PREFERENCE_METHODS:
        world = 1
        why["num_processes"] = f"method {method} trains in one process"
    elif p.num_processes == AUTO:
        world = max(1, int(gpu_count or 1)) if device == "cuda" else 1
        why["num_processes"] = (f"every GPU of the worker's host ({world})" if device == "cuda" else
                                "CPU: one process uses every core (set a number to run several gloo ranks)")
    else:
        world = p.num_processes
    if p.micro_batch_tokens not in (AUTO, 0) and world > 1:
        raise InvalidParams("micro_batch_tokens: chunked batches run in one process; leave it auto (or 0) with "
                            "several processes", "micro_batch_tokens")
    if p.strategy == "fsdp" and world == 1:
        raise InvalidParams("strategy: fsdp shards the model over several processes; set num_processes to 2 or more",
                            "strategy")
    if p.strategy == "fsdp" and device != "cuda":
        # torch's FSDP2 itself runs on gloo, but accelerate enables its FSDP plugin on GPUs only: on CPU the run
        # would silently be DDP
        raise InvalidParams("strategy: fsdp needs CUDA GPUs (accelerate shards with FSDP on GPUs only); use ddp on "
                            "CPU", "strategy")

    # quantization: 4-bit saves GPU memory at small cost; on CPU fp32 is faster and memory is plentiful
    if p.quantization == AUTO:
        quantization = "nf4" if device == "cuda" else "none"
        why["quantization"] = (
            "CUDA: 4-bit NF4 QLoRA (double quantisation) keeps the base model small in GPU memory"
            if device == "cuda" else "CPU: full-precision fp32 base (4-bit dequantisation slows CPU training)"
        )
    else:
        quantization = p.quantization

    # max_seq_length: cover the longest example, rounded up, capped per device and by the model
    if p.max_seq_length == AUTO:
        cap = 2048 if device == "cuda" else 1024
        if model_max_length:
            cap = min(cap, int(model_max_length))
        if n_tokens_max:
            max_seq_length = min(cap, max(64, int(math.ceil(n_tokens_max / 64) * 64)))
            why["max_seq_length"] = f"longest example has {n_tokens_max} tokens; rounded up to 64, capped at {cap}"
        else:
            max_seq_length = cap
            why["max_seq_length"] = f"default for {device}: {cap} tokens"
    else:
        max_seq_length = p.max_seq_length

    mean_len = float(n_tokens_mean) if n_tokens_mean else min(max_seq_length, 256.0)

    # effective batch: small sets need many small steps; large sets want stable gradients
    if n <= 64:
        eff = 4
    elif n <= 256:
        eff = 8
    elif n <= 4096:
        eff = 16
    else:
        eff = 32

    if p.batch_size == AUTO:
        if device == "cuda":
            mem = gpu_memory_gb or 8.0
            tokens_budget = 4096 if mem < 12 else 8192 if mem < 24 else 16384 if mem < 48 else 32768
        else:
            # CPU throughput barely grows past a few sequences per batch; smaller batches = more steps
            tokens_budget = 2048
        per_seq = max(mean_len * 1.5, 32.0)
        # per process: the ranks together make the effective batch
        batch_size = int(max(1, min(max(1, eff // world), tokens_budget // per_seq)))
        batch_size = 2 ** int(math.log2(batch_size))
        why["batch_size"] = f"{batch_size} sequences of ~{int(mean_len)} tokens fit the {device} token budget" + (
            f" (per process, {world} processes)" if world > 1 else "")
    else:
        batch_size = p.batch_size

    if p.gradient_accumulation_steps == AUTO:
        grad_accum = max(1, eff // (batch_size * world))
        why["gradient_accumulation_steps"] = (
            f"effective batch {batch_size * world * grad_accum} for {n} examples (small sets get more, smaller steps)"
        )
    else:
        grad_accum = p.gradient_accumulation_steps
    eff = batch_size * world * grad_accum
    steps_per_epoch = max(1, math.ceil(n / eff))

    if p.n_epochs == AUTO:
        if n > 20000:
            n_epochs = int(min(3, max(1, round(HUGE_SET_EXAMPLES / n))))
            why["n_epochs"] = f"{n} examples: {n_epochs} epoch(s) see about {HUGE_SET_EXAMPLES} examples"
        else:
            needed = math.ceil(MIN_OPTIMIZER_STEPS / steps_per_epoch)
            n_epochs = int(min(MAX_AUTO_EPOCHS, max(3, needed)))
            why["n_epochs"] = (
                f"{steps_per_epoch} steps per epoch; at least 3 epochs and about {MIN_OPTIMIZER_STEPS} optimizer "
                f"steps (at most {MAX_AUTO_EPOCHS} epochs) so small sets learn their facts"
            )
    else:
        n_epochs = p.n_epochs

    if p.lora_r == AUTO:
        lora_r = 32 if n <= 500 else 16
        why["lora_r"] = f"rank {lora_r} for {n} examples (more capacity for small, fact-heavy sets)" if lora_r == 32 \
            else "rank 16 (the usual LoRA default)"
    else:
        lora_r = p.lora_r

    if p.lora_alpha == AUTO:
        lora_alpha = float(2 * lora_r)
        why["lora_alpha"] = "2 × rank (scaling alpha/r = 2)"
    else:
        lora_alpha = float(p.lora_alpha)

    multiplier = 1.0 if p.learning_rate_multiplier == AUTO else float(p.learning_rate_multiplier)
    if p.learning_rate == AUTO:
        # log-linear from SMALL_SET_LR (tiny sets) to BASE_LR (large sets); for alpha/r = 2
        base = math.exp(math.log(BASE_LR) + small * (math.log(SMALL_SET_LR) - math.log(BASE_LR)))
        # keep the update size comparable when the user picks another alpha/r ratio
        ratio = lora_alpha / lora_r
        base = base * min(4.0, max(0.25, 2.0 / ratio)) if ratio > 0 else base
        learning_rate = float(f"{base:.3g}")
        why["learning_rate"] = f"{learning_rate:g} for {n} examples (higher for small sets, 2e-4 from {LARGE_SET})"
    else:
        learning_rate = float(p.learning_rate)
    if method in PREFERENCE_METHODS and p.learning_rate == AUTO:
        learning_rate = float(f"{learning_rate * PREFERENCE_LR_FACTOR:.3g}")
        why["learning_rate"] = (f"{learning_rate:g}: {PREFERENCE_LR_FACTOR:g} × the SFT value for {n} examples "
                                f"({method} moves a model that already answers)")
    if multiplier != 1.0:
        learning_rate = learning_rate * multiplier
        why["learning_rate_multiplier"] = f"learning rate multiplied by {multiplier:g}"

    if p.lora_dropout == AUTO:
        lora_dropout = 0.0 if (n < 1000 or device == "cpu") else 0.05
        why["lora_dropout"] = (
            "0: small sets must memorise facts, and dropout-free LoRA layers skip a copy of every input"
            if lora_dropout == 0 else "0.05 regularises large sets"
        )
    else:
        lora_dropout = float(p.lora_dropout)

    if p.lr_scheduler == AUTO:
        lr_scheduler = "cosine"
        why["lr_scheduler"] = "cosine decay after warmup"
    else:
        lr_scheduler = p.lr_scheduler

    total_steps = steps_per_epoch * n_epochs
    if p.max_steps is not None:
        total_steps = min(total_steps, p.max_steps)

    if p.warmup_ratio == AUTO:
        warmup_ratio = round(min(0.1, max(0.03, 3 / max(total_steps, 1))), 4)
        why["warmup_ratio"] = "3% of the steps, at least 3 steps, at most 10%"
    else:
        warmup_ratio = float(p.warmup_ratio)

    if p.save_steps == AUTO:
        save_steps = max(1, math.ceil(total_steps / 10))
        why["save_steps"] = "about 10 checkpoints per run (resume point after a crash or pause)"
    else:
        save_steps = p.save_steps

    if p.eval_steps == AUTO:
        eval_steps = max(1, math.ceil(total_steps / 5))
        why["eval_steps"] = "validation about 5 times per run" + ("" if has_validation else " (when a validation set is given)")
    else:
        eval_steps = p.eval_steps

    if p.packing == AUTO:
        packing = False
        why["packing"] = (
            "off: length-grouped batches without padding to max length are as fast and attend only within "
            "each example on every attention backend"
        )
    else:
        packing = bool(p.packing)

    template = resolve_template(p.template, has_chat_template=has_chat_template)
    if p.template == AUTO:
        why["template"] = "the base model's chat template" if has_chat_template else (
            "the base model has no chat template: '### Instruction / ### Response' (alpaca)"
        )
    elif template == "chat_template" and not has_chat_template:
        raise InvalidParams("template: the base model has no chat template; choose chatml, alpaca or alpaca_zh",
                            "template")

    if p.bf16 == AUTO:
        why["bf16"] = ("CUDA: bf16 where the GPU supports it, else fp16" if device == "cuda" else
                       "CPU: decided when the run starts, by a probe of the worker's CPU (native bf16 and a timed "
                       "matmul, bf16 against fp32)")

    if p.micro_batch_tokens != AUTO:
        micro_batch_tokens = int(p.micro_batch_tokens)
    elif device == "cpu" and method == "sft" and world == 1:
        micro_batch_tokens = CPU_MICRO_BATCH_TOKENS
        why["micro_batch_tokens"] = (f"CPU: batches of more than {CPU_MICRO_BATCH_TOKENS} tokens run in chunks of "
                                     "whole examples (the same gradients; about a fifth less peak memory for a "
                                     "tenth of the speed; 0 runs each batch in one pass)")
    else:
        micro_batch_tokens = 0
        why["micro_batch_tokens"] = ("every batch in one pass (" + (
            "CUDA: gradient checkpointing keeps the activations small" if device == "cuda" else
            f"method {method}" if method != "sft" else "several processes") + ")")

    beta = DEFAULT_BETA
    loss_type = ""
    desirable_weight = undesirable_weight = 1.0
    if method in PREFERENCE_METHODS:
        if p.beta == AUTO:
            why["beta"] = f"{DEFAULT_BETA:g}, TRL's default" + (" (ORPO's lambda)" if method == "orpo" else "")
        else:
            beta = float(p.beta)
        if method in LOSS_TYPES:
            loss_type = DEFAULT_LOSS_TYPE[method] if p.loss_type == AUTO else p.loss_type
            if p.loss_type == AUTO:
                why["loss_type"] = f"{loss_type}: the {method.upper()} paper's loss"
    if method == "kto":
        desirable_weight = 1.0 if p.desirable_weight == AUTO else float(p.desirable_weight)
        undesirable_weight = 1.0 if p.undesirable_weight == AUTO else float(p.undesirable_weight)
        good, bad = label_counts or (0, 0)
        if good and bad and good != bad:
            # KTO paper, Eq. (8): weight the rarer side so that desirable_weight * n_desirable and
            # undesirable_weight * n_undesirable are about equal (within [1, 4/3]).
            if p.desirable_weight == AUTO and good < bad:
                desirable_weight = round(bad * undesirable_weight / good, 3)
                why["desirable_weight"] = f"{good} desirable vs {bad} undesirable rows: the rarer side weighs more"
            elif p.undesirable_weight == AUTO and bad < good:
                undesirable_weight = round(good * desirable_weight / bad, 3)
                why["undesirable_weight"] = f"{good} desirable vs {bad} undesirable rows: the rarer side weighs more"
        for name in ("desirable_weight", "undesirable_weight"):
            if getattr(p, name) == AUTO and name not in why:
                why[name] = "1.0: the labels are balanced (or their counts unknown)"

    return ResolvedParams(
        n_epochs=n_epochs, batch_size=batch_size, gradient_accumulation_steps=grad_accum, learning_rate=learning_rate,
        lr_scheduler=lr_scheduler, warmup_ratio=warmup_ratio, max_seq_length=max_seq_length, lora_r=lora_r,
        lora_alpha=lora_alpha, lora_dropout=lora_dropout, target_modules=p.target_modules, quantization=quantization,
        loss_on=p.loss_on, packing=packing, seed=p.seed, eval_steps=eval_steps, save_steps=save_steps,
        max_steps=p.max_steps, template=template, device=device, bf16=p.bf16, steps_per_epoch=steps_per_epoch,
        total_steps=total_steps, learning_rate_multiplier=multiplier, auto=why, method=method, beta=beta,
        loss_type=loss_type, label_smoothing=float(p.label_smoothing), desirable_weight=desirable_weight,
        undesirable_weight=undesirable_weight, num_processes=world, strategy=p.strategy,
        micro_batch_tokens=micro_batch_tokens,
    )


# ---------------------------------------------------------------------------------------------------------------
# Memory estimate

GiB = 1024**3


@dataclass
class MemoryEstimate:
    """Predicted peak memory of a training run, in bytes, with its parts and the batch it describes: one
    micro-batch of ``sequences_per_batch`` sequences of up to ``tokens_per_sequence`` tokens on each device
    (``batch_size`` examples; gradients accumulate over ``gradient_accumulation_steps`` of them, which adds no
    activations)."""

    total_bytes: int
    device: str
    parts: dict[str, int] = field(default_factory=dict)  # of one process
    sequences_per_batch: int = 0
    tokens_per_sequence: int = 0
    batch_size: int = 0
    gradient_accumulation_steps: int = 1
    available_bytes: int | None = None  # the memory it was checked against
    num_processes: int = 1
    per_process_bytes: int = 0  # what each rank needs: on CPU the ranks share the host's memory (total = sum)
    sequences_per_pass: int = 0  # fewer than sequences_per_batch: the batch runs in chunks (micro_batch_tokens)

    def fits(self, available_bytes: int) -> bool:
        return self.total_bytes <= available_bytes

    def describe(self) -> str:
        """E.g. ``1.2 GiB for 8 sequences x 512 tokens per micro-batch (batch 4 x 4 accumulation steps)``."""
        accumulation = f" x {self.gradient_accumulation_steps} accumulation steps" \
            if self.gradient_accumulation_steps > 1 else ""
        ranks = ""
        if self.num_processes > 1:
            ranks = f" x {self.num_processes} processes" + (", per GPU" if self.device == "cuda" else "")
        passes = f", run {self.sequences_per_pass} at a time" \
            if 0 < self.sequences_per_pass < self.sequences_per_batch else ""
        return (f"{self.total_bytes / GiB:.2f} GiB for {self.sequences_per_batch} sequences x "
                f"{self.tokens_per_sequence} tokens per micro-batch{passes} (batch {self.batch_size}{ranks}"
                f"{accumulation})")

    def to_dict(self) -> dict:
        from dataclasses import asdict

        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> MemoryEstimate:
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in names})

    def refusal(self, available_bytes: int) -> str | None:
        """A readable refusal when the run would not fit in ``available_bytes``; ``None`` when it fits."""
        if self.fits(available_bytes):
            return None
        where = "GPU memory" if self.device == "cuda" else "memory"
        batch = f" ({self.sequences_per_batch} sequences x {self.tokens_per_sequence} tokens per micro-batch)" \
            if self.sequences_per_batch else ""
        if self.num_processes > 1:
            where += " per GPU" if self.device == "cuda" else f" for its {self.num_processes} processes"
        return (
            f"This training run needs about {self.total_bytes / GiB:.1f} GiB of {where}{batch}, but only "
            f"{available_bytes / GiB:.1f} GiB is available. Lower the batch size or the max sequence length, "
            "or use quantization=nf4 (4-bit QLoRA)."
        )


def _config_dims(config: dict) -> dict:
    text = config.get("text_config") or config
    hidden = int(text.get("hidden_size") or text.get("n_embd") or text.get("d_model") or 768)
    layers = int(text.get("num_hidden_layers") or text.get("n_layer") or text.get("num_layers") or 12)
    heads = int(text.get("num_attention_heads") or text.get("n_head") or max(1, hidden // 64))
    kv_heads = int(text.get("num_key_value_heads") or heads)
    head_dim = int(text.get("head_dim") or hidden // heads)
    inter = int(text.get("intermediate_size") or text.get("n_inner") or 4 * hidden)
    vocab = int(text.get("vocab_size") or 32000)
    tied = bool(config.get("tie_word_embeddings", text.get("tie_word_embeddings", False)))
    return dict(hidden=hidden, layers=layers, heads=heads, kv_heads=kv_heads, head_dim=head_dim, inter=inter,
                vocab=vocab, tied=tied)


def parameter_count_from_config(config: dict) -> int:
    """Parameters of a decoder-only transformer described by ``config`` (Llama-style, close for most)."""
    d = _config_dims(config)
    attn = d["hidden"] * d["heads"] * d["head_dim"] * 2 + d["hidden"] * d["kv_heads"] * d["head_dim"] * 2
    mlp = 3 * d["hidden"] * d["inter"]
    emb = d["vocab"] * d["hidden"] * (1 if d["tied"] else 2)
    return d["layers"] * (attn + mlp + 2 * d["hidden"]) + emb + d["hidden"]


def lora_parameter_count(config: dict, *, lora_r: int, target_modules: str | list[str] = "all-linear") -> int:
    d = _config_dims(config)
    h, q, kv, i = d["hidden"], d["heads"] * d["head_dim"], d["kv_heads"] * d["head_dim"], d["inter"]
    shapes = {
        "q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
        "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h),
        # Phi-3 fuses the attention input and the gated MLP input into one linear layer each
        "qkv_proj": (h, q + 2 * kv), "gate_up_proj": (h, 2 * i),
    }
    fused = (config.get("text_config") or config).get("model_type") == "phi3"
    if target_modules == "all-linear":
        names = ("qkv_proj", "o_proj", "gate_up_proj", "down_proj") if fused else (
            "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
        chosen = [shapes[name] for name in names]
    else:
        # unknown names (other architectures) are estimated as hidden x hidden
        chosen = [shapes.get(name.rsplit(".", 1)[-1], (h, h)) for name in target_modules]
    return d["layers"] * sum(lora_r * (a + b) for a, b in chosen)


def estimate_memory(
    *,
    config: dict,
    parameter_count: int | None = None,
    quantization: str,
    batch_size: int,
    max_seq_length: int,
    device: Literal["cpu", "cuda"],
    lora_r: int = 16,
    target_modules: str | list[str] = "all-linear",
    gradient_checkpointing: bool | None = None,
    compute_dtype_bytes: int | None = None,
    num_processes: int = 1,
    strategy: str = "ddp",
) -> MemoryEstimate:
    """Estimated peak memory (bytes) of a LoRA/QLoRA run with this recipe.

    Sized for the worst batch (``batch_size`` sequences of ``max_seq_length`` tokens, per process). Deliberately a
    little pessimistic: refusing at creation is cheap, an OOM an hour in is not. With ``num_processes`` ranks, each
    holds the whole model (``ddp``) or its share plus one gathered layer (``fsdp``); ``total_bytes`` is what one GPU
    must hold on CUDA, and what the host must hold for all ranks on CPU.
    """
    d = _config_dims(config)
    n_params = int(parameter_count or parameter_count_from_config(config))
    if gradient_checkpointing is None:
        gradient_checkpointing = device == "cuda"
    act_bytes = compute_dtype_bytes or (2 if device == "cuda" else 4)
    emb_params = d["vocab"] * d["hidden"] * (1 if d["tied"] else 2)
    linear_params = max(0, n_params - emb_params)

    # base weights: quantised linear layers; embeddings/lm_head stay in compute precision (kbit prep -> fp32)
    if quantization == "nf4":
        # 4 bits + absmax (double-quantised: ~0.127 bit/param) per weight
        weights = int(linear_params * (0.5 + 0.127 / 8)) + emb_params * 4
    elif quantization == "int8":
        weights = linear_params * 1 + linear_params // 1024 * 4 + emb_params * 4
    else:
        weights = n_params * act_bytes

    lora = lora_parameter_count(config, lora_r=lora_r, target_modules=target_modules)
    # fp32 weights + grads, AdamW 2 states (fp32; paged 8-bit on CUDA: 2 x 1 byte)
    optimizer_bytes = 2 if device == "cuda" else 8
    lora_bytes = lora * (4 + 4 + optimizer_bytes)
    world = max(1, int(num_processes))
    if strategy == "fsdp" and world > 1:
        # each rank keeps 1/world of everything, and gathers one decoder layer at a time to run it
        layer = max(0, weights - emb_params * (4 if quantization != "none" else act_bytes)) // max(d["layers"], 1)
        weights = weights // world + layer
        lora_bytes = lora_bytes // world

    tokens = batch_size * max_seq_length
    h, layers = d["hidden"], d["layers"]
    # per layer, per token, without checkpointing: attention inputs/outputs, q/k/v, MLP intermediates (x3 for
    # gate/up/act), norms and LoRA inputs; ~ (16 h + 4 i) values. Attention scores are not stored by SDPA kernels
    # on CUDA; on CPU the math path keeps heads x seq probabilities per token.
    per_token_layer = (16 * h + 4 * d["inter"]) * act_bytes
    if device == "cpu":
        per_token_layer += d["heads"] * max_seq_length * 4
    if gradient_checkpointing:
        activations = tokens * h * act_bytes * layers + tokens * per_token_layer
    else:
        activations = tokens * per_token_layer * layers
    # logits: only at the trained positions (<= every position), fp32, x3 for softmax + grad
    logits = tokens * d["vocab"] * 4 * 3
    overhead = int(1.0 * GiB) if device == "cuda" else int(0.6 * GiB)  # CUDA context / Python + libraries
    parts = {
        "weights": int(weights),
        "lora_and_optimizer": int(lora_bytes),
        "activations": int(activations),
        "logits": int(logits),
        "overhead": overhead,
    }
    per_process = int(sum(parts.values()) * 1.15)  # allocator fragmentation, temporary buffers
    total = per_process * (world if device == "cpu" else 1)
    return MemoryEstimate(total_bytes=total, device=device, parts=parts, num_processes=world,
                          per_process_bytes=per_process)


def estimate_run_memory(params: ResolvedParams, *, config: dict, parameter_count: int | None, device: str,
                        tokens_per_sequence: int | None = None) -> MemoryEstimate:
    """``estimate_memory`` for the micro-batch a run with ``params`` trains on: ``batch_size`` examples (two
    sequences each for the preference methods: chosen and rejected; KTO: the answer and its KL counterpart; the
    reference pass keeps no activations) of ``tokens_per_sequence`` tokens (at most ``max_seq_length``). The
    service checks it at creation and the child again on the tokenised data, so both compute it alike."""
    sequences = params.batch_size * (2 if params.method in PREFERENCE_METHODS else 1)
    tokens = min(int(tokens_per_sequence or params.max_seq_length), params.max_seq_length)
    per_pass = sequences
    if params.micro_batch_tokens and device == "cpu":
        # a pass holds whole examples up to the budget (at least one)
        per_pass = min(sequences, max(1, params.micro_batch_tokens // max(tokens, 1)))
    estimate = estimate_memory(config=config, parameter_count=parameter_count or None,
                               quantization=params.quantization, batch_size=per_pass, max_seq_length=tokens,
                               device=device, lora_r=params.lora_r, target_modules=params.target_modules,
                               num_processes=params.num_processes, strategy=params.strategy)
    estimate.sequences_per_batch = sequences
    estimate.sequences_per_pass = per_pass
    estimate.tokens_per_sequence = tokens
    estimate.batch_size = params.batch_size
    estimate.gradient_accumulation_steps = params.gradient_accumulation_steps
    return estimate


# How far the estimate of the batch that really runs may exceed the one the task was admitted with (the counts
# at upload and the run's own tokenisation may differ by a few tokens).
MEMORY_RECHECK_TOLERANCE = 0.10


@dataclass
class MemoryCheck:
    """The estimate a task was admitted with and what it was computed from, for the run to check again on its
    tokenised data before it loads the model; ``available_bytes``: the memory the run may use now."""

    admitted: MemoryEstimate
    config: dict
    parameter_count: int | None
    available_bytes: int

    def recheck(self, params: ResolvedParams, *, device: str, tokens_per_sequence: int
                ) -> tuple[MemoryEstimate, str | None]:
        """The estimate of the real batch, and why the run must not start (``None`` when it may)."""
        real = estimate_run_memory(params, config=self.config, parameter_count=self.parameter_count, device=device,
                                   tokens_per_sequence=tokens_per_sequence)
        real.available_bytes = self.available_bytes
        admitted = self.admitted
        if real.total_bytes > admitted.total_bytes * (1 + MEMORY_RECHECK_TOLERANCE):
            return real, (f"The batch this run trains on needs about {real.describe()}, more than the "
                          f"{admitted.describe()} checked when the task was created; the task was not started. "
                          "Create it again so it is checked against its data, or lower the batch size or the max "
                          "sequence length.")
        if not real.fits(self.available_bytes):
            was = f" (it had {admitted.available_bytes / GiB:.1f} GiB when the task was created)" \
                if admitted.available_bytes else ""
            return real, (f"This run needs about {real.describe()}, but only {self.available_bytes / GiB:.1f} GiB "
                          f"of {'GPU memory' if device == 'cuda' else 'memory'} is available now{was}; the task was "
                          "not started. Free memory and retry it, or lower the batch size or the max sequence "
                          "length, or use quantization=nf4 (4-bit QLoRA).")
        return real, None
