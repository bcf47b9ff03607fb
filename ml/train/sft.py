"""The device-aware LoRA/QLoRA recipe: load, train with progress/checkpoints/cancel/pause/resume, save.

Plain module (no Django); the worker's child process calls ``run_training(spec, hooks)``. Web-process code
should import ``ml.hparams``, ``ml.train.checkpoints`` and ``ml.errors`` instead: this module
imports torch and transformers.

Why ``transformers.Trainer`` and not TRL's ``SFTTrainer``: what SFTTrainer adds is dataset preparation
(templating, assistant-only masks, packing) and its own loss; we need each of those done differently —
per-turn ``weight`` masking with templates lacking ``{% generation %}`` tags, named fallback templates,
length-grouped padding-free batches replayable on resume, and a loss computed only at target positions.
Trainer still gives us the parts worth not rewriting: the optimizers (paged 8-bit AdamW), schedulers,
gradient accumulation, mixed precision, checkpoint/resume of optimizer, scheduler and RNG state, and
DDP through ``accelerate launch``/``torchrun`` with no code of ours.

Device choices (issue 4, measured on 2 CPU cores): CUDA uses NF4 + bf16 (fp16 without bf16 support),
gradient checkpointing and paged 8-bit AdamW; CPU uses no checkpointing and every available core, and computes in
bf16 where the CPU has native bf16 (AVX512-BF16 or AMX) and a start-up probe (``cpu_precision_probe``: a timed
model-shaped matmul, bf16 against fp32) finds it faster; else fp32. bf16 on CPU means bf16 base weights under
bf16 autocast, with the LoRA weights, their gradients and the optimizer state in fp32 (PEFT keeps adapters in
fp32): held-out loss equal to fp32's in benchmarks/RESULTS.md. The ``bf16`` parameter forces either way; the
choice and why is logged and stored in the run's summary (``device.precision``). NF4 is honoured on CPU too
(bitsandbytes >= 0.49).

Speed (issue 9): the LM head and cross-entropy run only at the positions whose label counts (the assistant
tokens), not at every position of the 49k-vocabulary output. On CPU a batch is not padded at all: its examples
are concatenated into one row and attention runs per example (``varlen_sdpa``), so every matmul sees real tokens
only, as one large matrix, and SDPA takes its causal kernel without a mask instead of materialising a
batch x heads x length x length mask and attention matrix; batches are then shuffled as Trainer shuffles them. Elsewhere (CUDA)
batches are length-grouped and padded to their own longest example. Measured in benchmarks/RESULTS.md.

Attention is exact for every architecture the fast path admits (``attention_plan``): each layer's own sliding
window (Mistral, Phi-3, Qwen2 with ``use_sliding_window``, Gemma 2/3's alternating local and global layers) is
applied per example, with a band mask only on examples longer than the window, and Gemma 2's soft-capped scores
run per example through eager attention (the model is loaded with eager: SDPA cannot soft-cap); the final-logit
soft-cap is applied by the direct head. Models the fast path does not know train on padded batches through their
own masks. The chosen path and why is in the run's summary (``device.attention``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
import warnings
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

# OpenMP threads that sleep instead of spinning while they wait. Measured on SmolLM2, 2 cores: 175 vs 170 tokens/s
# on an idle machine, but 36 vs 93 tokens/s while another process keeps one core busy (a web server, a second
# worker). libgomp reads this once, when torch is first imported: it only takes effect if set before that, so the
# worker should also put it in the child's environment.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from peft.tuners.tuners_utils import BaseTunerLayer  # noqa: E402
from transformers import Trainer, TrainingArguments  # noqa: E402

from ml.data import (
    IGNORE_INDEX,
    Collator,
    LengthGroupedSampler,
    encode_records,
    eval_batches,
    has_chat_template,
    install_template,
    length_stats,
    pack_items,
    pad_item,
    to_item,
    truncate_examples,
)
from ml.errors import (
    INSUFFICIENT_MEMORY,
    INVALID_PARAMS,
    MODEL_MISSING,
    NAN_LOSS,
    UNSUPPORTED_MODEL,
    TrainingError,
    classify,
)
from ml.hparams import (  # noqa: F401
    InvalidParams,
    MemoryCheck,
    ResolvedParams,
    TrainingParams,
    parse_params,
    resolve_params,
)
from ml.model import load_base_model, load_tokenizer
from ml.probe import compute_dtype, device_info, library_versions, peak_memory, precision_plan, resolve_device
from ml.templates import resolve_template
from ml.train import checkpoints as ckpt  # noqa: E402
from ml.train.common import (
    AtomicCheckpoints,
    HooksBridge,
    ListDataset,
    check_resume,
    check_resume_folder,
    renamed,
    resumed_precision,
    stop_before_training,
)
from ml.train.distributed import (
    Group,
    GroupFailed,
    GroupHooks,
    backend_for,
    current_group,
    group_devices,
    init_group,
    peer_failure,
)
from ml.train.hooks import Hooks, NullHooks
from ml.train.tracking import tracking_callbacks

logger = logging.getLogger(__name__)

# Causal LMs whose logits are ``lm_head(decoder(x))``, optionally soft-capped (Gemma 2's ``final_logit_softcapping``,
# applied by ``head_logits`` exactly as the model's forward does), so the head can be applied to the target
# positions' hidden states only. Others go through the model's forward with ``logits_to_keep``, which is exact for
# every model but less selective on padded batches.
DIRECT_HEAD_MODEL_TYPES = {
    "llama", "mistral", "qwen2", "qwen3", "phi3", "smollm3", "olmo", "olmo2", "starcoder2", "gemma", "qwen2_moe",
    "qwen3_moe", "mixtral", "gemma2", "gemma3_text",
}

# Models whose attention layers call the attention interface with the decoder's keyword arguments and take RoPE
# positions from ``position_ids``: they can run flat (padding-free) batches through ``varlen_sdpa``.
FLAT_BATCH_MODEL_TYPES = DIRECT_HEAD_MODEL_TYPES
# No "sdpa" in the name: transformers treats any implementation whose name contains it as SDPA and refuses it for
# models without SDPA support (Gemma 2), although this one also runs eager attention where scores are soft-capped.
VARLEN_ATTENTION = "lora_studio_varlen"

# Of those, the ones whose attention layers pass their own sliding window (``sliding_window=``, None on a global
# layer) and soft-capping (``softcap=``) to the attention function, so ``varlen_sdpa`` can apply exactly what the
# model's masks would. Qwen2-MoE, for one, builds a windowed mask but does not pass the window: windowed configs of
# such a type train on padded batches through the model's own masks.
WINDOW_AWARE_MODEL_TYPES = {
    "mistral", "mixtral", "qwen2", "qwen3", "qwen3_moe", "phi3", "starcoder2", "smollm3", "gemma2", "gemma3_text",
}

# Parameters that must not change between a checkpoint and its resumption (the schedule and data order).
RESUME_INVARIANTS = ("batch_size", "gradient_accumulation_steps", "n_epochs", "learning_rate", "lr_scheduler",
                     "warmup_ratio", "lora_r", "lora_alpha", "seed", "max_steps", "max_seq_length", "packing",
                     "num_processes", "strategy")


# ---------------------------------------------------------------------------------------------------------------
# Public data types


@dataclass
class RunSpec:
    """Everything one training run needs. ``params`` may be unresolved; it is then resolved from the data."""

    base_model_path: str | Path
    train: Iterable[dict] | str | Path
    params: ResolvedParams | TrainingParams | dict
    run_dir: str | Path  # checkpoints go to run_dir/checkpoints/step-N
    adapter_dir: str | Path  # the final adapter folder (must not exist yet)
    validation: Iterable[dict] | str | Path | None = None
    resume_from: str | Path | None = None  # a checkpoint folder, or None to start fresh
    device: Literal["auto", "cpu", "cuda"] = "auto"
    keep_checkpoints: int = 2
    logging_steps: int | None = None  # None: every step up to 1000 steps, else ~1000 logs per run
    summary_extra: dict = field(default_factory=dict)  # e.g. task name, data hashes -> training_summary.json
    memory_check: MemoryCheck | None = None  # the admitted estimate, checked again on the tokenised data


@dataclass
class RunResult:
    """How a run ended. ``status`` is succeeded, cancelled or paused; failures raise ``TrainingError``."""

    status: Literal["succeeded", "cancelled", "paused"]
    global_step: int
    total_steps: int
    metrics: dict[str, float]
    trained_tokens: int
    adapter_dir: Path | None
    checkpoint: Path | None  # latest good checkpoint (resume point for paused runs)
    params: ResolvedParams
    data_report: dict
    versions: dict[str, str]
    device_info: dict[str, Any]
    history: list[dict] = field(default_factory=list)  # one entry per log (train and validation metrics)


# ---------------------------------------------------------------------------------------------------------------
# Model


def add_lora(model, params: ResolvedParams):
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=params.lora_r, lora_alpha=params.lora_alpha, lora_dropout=params.lora_dropout,
        target_modules=params.target_modules, bias="none", task_type="CAUSAL_LM",
    )
    try:
        return get_peft_model(model, config)
    except ValueError as exc:
        raise TrainingError(INVALID_PARAMS, f"LoRA could not be attached: {exc}") from exc


# ---------------------------------------------------------------------------------------------------------------
# Loss at target positions only


def _causal_lm(model):
    """The transformers causal LM inside a PEFT/DDP wrapper."""
    inner = getattr(model, "module", model)  # DDP
    if hasattr(inner, "get_base_model"):
        inner = inner.get_base_model()
    return inner


def uses_direct_head(model) -> bool:
    lm = _causal_lm(model)
    config = getattr(lm, "config", None)
    if config is None or getattr(config, "model_type", None) not in DIRECT_HEAD_MODEL_TYPES:
        return False
    if getattr(config, "logit_scale", None):
        return False
    return lm.get_output_embeddings() is not None


def head_logits(lm, hidden: torch.Tensor) -> torch.Tensor:
    """The LM head on some positions' hidden states, soft-capped as the model's own forward does."""
    logits = lm.get_output_embeddings()(hidden)
    cap = getattr(lm.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


# Target positions per chunk of the fused head loss: a chunk's logits are chunk x vocabulary floats (256 x 49,152 x
# 4 bytes = 50 MB for SmolLM2), instead of every target's logits, their fp32 copy, softmax and gradient at once.
HEAD_CHUNK = 256


class _FusedHeadLoss(torch.autograd.Function):
    """Cross-entropy sum of a frozen LM head over target hidden states, computing its gradient in the forward pass
    chunk by chunk, so that no logits outlive their chunk (the way Liger's fused linear cross-entropy does; written
    here because the head is frozen under LoRA, soft-capping must be honoured and the token accuracy comes out
    of the same pass). Exact: the same matmul in the head's dtype, softmax in fp32, as autograd would compute it.
    Returns (loss sum, correct argmax count); backward scales the stored input gradient by the loss's gradient."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, cap):
        grad = torch.empty_like(hidden) if hidden.requires_grad else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        correct = torch.zeros((), dtype=torch.long, device=hidden.device)
        for start in range(0, hidden.shape[0], HEAD_CHUNK):
            h = hidden[start:start + HEAD_CHUNK]
            y = labels[start:start + HEAD_CHUNK]
            raw = torch.nn.functional.linear(h, weight, bias).float()
            logits = torch.tanh(raw / cap) * cap if cap else raw
            lse = torch.logsumexp(logits, dim=-1)
            total += (lse - logits.gather(1, y[:, None]).squeeze(1)).sum()
            correct += (logits.argmax(dim=-1) == y).sum()
            if grad is not None:
                d = torch.exp(logits - lse[:, None])  # softmax
                d[torch.arange(y.numel(), device=y.device), y] -= 1.0
                if cap:
                    d *= 1.0 - (logits / cap) ** 2  # d tanh(x / cap) * cap / dx
                grad[start:start + HEAD_CHUNK] = (d.to(weight.dtype) @ weight).to(hidden.dtype)
        ctx.save_for_backward(grad)
        ctx.mark_non_differentiable(correct)
        return total, correct

    @staticmethod
    def backward(ctx, grad_total, _grad_correct):
        (grad,) = ctx.saved_tensors
        return (None if grad is None else grad * grad_total.to(grad.dtype)), None, None, None, None


def fused_head_loss(lm, hidden: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(loss sum, correct count) of the LM head over ``hidden`` (target positions) by ``_FusedHeadLoss``, when the
    head is a plain frozen linear layer (LoRA's default); ``None`` otherwise (the caller takes ``head_logits``)."""
    head = lm.get_output_embeddings()
    if type(head) is not torch.nn.Linear or head.weight.requires_grad or \
            (head.bias is not None and head.bias.requires_grad):
        return None
    weight, bias = head.weight, head.bias
    if torch.is_autocast_enabled(hidden.device.type):
        # what autocast would hand the matmul: both operands in the autocast dtype
        dtype = torch.get_autocast_dtype(hidden.device.type)
        weight, hidden = weight.to(dtype), hidden.to(dtype)
        bias = None if bias is None else bias.to(dtype)
    with torch.autocast(hidden.device.type, enabled=False):
        return _FusedHeadLoss.apply(hidden, weight, bias, labels,
                                    getattr(lm.config, "final_logit_softcapping", None) or 0.0)


# ---------------------------------------------------------------------------------------------------------------
# Padding-free batches on CPU: attention per example inside one concatenated row


def _window_mask(length: int, window: int | None, device) -> torch.Tensor:
    """(1, 1, L, L) boolean: causal, and within ``window`` tokens when given (the model's own rule in
    ``masking_utils.sliding_window_overlay``: key index > query index - window)."""
    idx = torch.arange(length, device=device)
    diff = idx[:, None] - idx[None, :]
    allowed = diff >= 0
    if window is not None:
        allowed &= diff < window
    return allowed.view(1, 1, length, length)


def _eager_softcapped(module, query, key, value, mask: torch.Tensor, *, dropout: float, scaling: float | None,
                      softcap: float) -> torch.Tensor:
    """Gemma 2's eager attention (scores soft-capped before the mask, softmax in fp32), for rows without
    padding; ``mask`` is a boolean (1, 1, L, L). Returns (batch, L, heads, head_dim)."""
    from transformers.integrations.sdpa_attention import repeat_kv

    groups = getattr(module, "num_key_value_groups", 1)
    key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    scaling = module.head_dim**-0.5 if scaling is None else scaling
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    scores = torch.tanh(scores / softcap) * softcap
    scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    weights = torch.nn.functional.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    weights = torch.nn.functional.dropout(weights, p=dropout, training=module.training)
    return torch.matmul(weights, value).transpose(1, 2).contiguous()


def _attend(module, query, key, value, *, dropout: float, scaling: float | None, window: int | None,
            softcap: float | None, kwargs: dict) -> torch.Tensor:
    """Causal attention over rows that each start at position 0 and hold no padding after their real tokens
    (an example of a flat row, or a right-padded batch): (batch, L, heads, head_dim)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    length = query.shape[2]
    if window is not None and window >= length:
        window = None  # the window covers the whole example: plain causal attention is the same function
    if softcap:
        mask = _window_mask(length, window, query.device)
        return _eager_softcapped(module, query, key, value, mask, dropout=dropout, scaling=scaling, softcap=softcap)
    if window is None:
        # no mask: PyTorch's fused causal CPU kernel, which neither builds nor stores a length x length matrix
        return sdpa_attention_forward(module, query, key, value, None, dropout=dropout, scaling=scaling,
                                      is_causal=True, **kwargs)[0]
    mask = _window_mask(length, window, query.device)
    return sdpa_attention_forward(module, query, key, value, mask, dropout=dropout, scaling=scaling,
                                  is_causal=False, **kwargs)[0]


def varlen_sdpa(module, query, key, value, attention_mask, dropout: float = 0.0, scaling: float | None = None,
                is_causal: bool | None = None, **kwargs):
    """transformers' attention, run separately on each example of a flat row.

    A flat batch (``Collator(flat=True)``) is one row holding several examples; ``cu_seq_lens_q`` holds their
    boundaries. Flash-attention's varlen kernels do this on CUDA; CPU has none, so each example's slice of the
    queries, keys and values goes through the ordinary causal SDPA. The layer's own ``sliding_window`` (None on
    a global layer) and ``softcap`` are honoured per example: an example longer than the window gets the
    model's band mask, and soft-capped scores (Gemma 2) are computed as transformers' eager attention does.
    Without ``cu_seq_lens_q`` each row is one example (a right-padded batch: transformers builds no mask for
    this implementation, and padding only ever follows the real tokens, which never attend to it).
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    bounds = kwargs.pop("cu_seq_lens_q", None)
    for name in ("cu_seq_lens_k", "max_length_q", "max_length_k"):
        kwargs.pop(name, None)
    window = kwargs.pop("sliding_window", None)
    softcap = kwargs.pop("softcap", None)
    if attention_mask is not None:
        # a mask built by someone else (a 4D custom mask) already says what may attend to what
        if softcap:
            allowed = attention_mask if attention_mask.dtype == torch.bool else attention_mask == 0  # additive
            return _eager_softcapped(module, query, key, value, allowed, dropout=dropout, scaling=scaling,
                                     softcap=softcap), None
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    options = {"dropout": dropout, "scaling": scaling, "window": window, "softcap": softcap, "kwargs": kwargs}
    if bounds is None or query.shape[0] != 1:
        return _attend(module, query, key, value, **options), None
    cuts = bounds.tolist()
    if len(cuts) == 2:
        return _attend(module, query, key, value, **options), None
    # torch.split, not slicing: the backward of a split is one concatenation, while each slice's backward
    # would write its gradient into a zero tensor of the whole row (measured: a third of the step's time).
    lengths = [b - a for a, b in zip(cuts[:-1], cuts[1:], strict=False)]
    outs = [_attend(module, q, k, v, **options)  # (1, length, heads, head_dim)
            for q, k, v in zip(query.split(lengths, dim=2), key.split(lengths, dim=2), value.split(lengths, dim=2),
                               strict=True)]
    return torch.cat(outs, dim=1), None


def _register_varlen_attention() -> None:
    from transformers import AttentionInterface

    # No entry in the mask interface: transformers then builds no mask at all for this implementation.
    AttentionInterface.register(VARLEN_ATTENTION, varlen_sdpa)


def _windows(config) -> tuple[int | None, int, int]:
    """(window, windowed layers, layers) as the model's attention layers will apply them."""
    n_layers = int(getattr(config, "num_hidden_layers", 0) or 0)
    window = getattr(config, "sliding_window", None) or None
    if window is None:
        return None, 0, n_layers
    layer_types = getattr(config, "layer_types", None)
    if layer_types:
        return window, sum(t == "sliding_attention" for t in layer_types), n_layers
    return window, n_layers, n_layers  # Mistral, Phi-3: one window on every layer


def attention_plan(model, device: str) -> dict[str, Any]:
    """Which attention path this run takes, and why: flat batches through ``varlen_sdpa`` where that is
    exact for the model, else padded batches through the model's own masks and attention.

    The answer is stored in the run's summary (``device.attention``) and logged as an event.
    """
    lm = _causal_lm(model)
    config = lm.config
    model_type = getattr(config, "model_type", None)
    implementation = getattr(config, "_attn_implementation", None)
    window, windowed, n_layers = _windows(config)
    softcap = getattr(config, "attn_logit_softcapping", None) or None
    plan: dict[str, Any] = {"model_type": model_type, "implementation": implementation, "sliding_window": window,
                            "windowed_layers": windowed, "layers": n_layers, "attn_logit_softcapping": softcap,
                            "final_logit_softcapping": getattr(config, "final_logit_softcapping", None) or None}
    details = []
    if windowed:
        details.append(f"a {window}-token sliding window on {windowed} of {n_layers} layers, applied per example "
                       "(a band mask only for examples longer than the window)")
    if softcap:
        details.append(f"attention scores soft-capped at {softcap} (eager attention per example)")
    if plan["final_logit_softcapping"]:
        details.append(f"output logits soft-capped at {plan['final_logit_softcapping']}")
    if device != "cpu":
        plan.update(flat=False, path=f"padded {implementation}",
                    reason=f"{device}: length-grouped padded batches through the model's own {implementation} "
                           "attention and masks (sliding windows and soft-capping included)")
        return plan
    refusal = None
    if model_type not in FLAT_BATCH_MODEL_TYPES:
        refusal = f"{model_type!r} is not among the architectures verified for flat batches"
    elif implementation not in ("sdpa", "eager", VARLEN_ATTENTION):
        refusal = f"the model runs {implementation!r} attention"
    elif windowed and model_type not in WINDOW_AWARE_MODEL_TYPES:
        refusal = (f"{model_type!r} layers do not pass their sliding window to the attention function, so only "
                   "the model's own masks apply it")
    elif getattr(config, "use_bidirectional_attention", False):
        refusal = "the model attends bidirectionally"
    if refusal:
        plan.update(flat=False, path=f"padded {implementation}",
                    reason=f"{refusal}: padded batches through the model's own attention and masks")
        return plan
    kernel = "eager" if softcap else "SDPA"
    plan.update(flat=True, path=f"flat varlen {kernel}",
                reason="CPU: padding-free rows, causal attention per example"
                       + (f"; {'; '.join(details)}" if details else "; no sliding window or soft-capping"))
    return plan


def uses_flat_batches(model, device: str) -> bool:
    """Whether this run trains on flat batches (see ``attention_plan``); NF4/int8 included: quantisation changes
    the linear layers, not attention."""
    return bool(attention_plan(model, device)["flat"])


def enable_flat_batches(model) -> None:
    """Switch the model's attention to ``varlen_sdpa`` (identical to the model's SDPA or eager attention on
    batches without boundaries)."""
    _register_varlen_attention()
    _causal_lm(model).set_attn_implementation(VARLEN_ATTENTION)


def forward_kwargs(batch: dict, *, packed: bool) -> dict[str, Any]:
    """The model's keyword arguments (besides ``input_ids``) for a flat, packed or padded batch."""
    kwargs: dict[str, Any] = {"use_cache": False}
    if "cu_seq_lens_q" in batch:
        kwargs["position_ids"] = batch["position_ids"]
        kwargs["cu_seq_lens_q"] = batch["cu_seq_lens_q"]
    elif packed:
        kwargs["position_ids"] = batch["position_ids"]  # no attention mask: block-diagonal from position_ids
    else:
        kwargs["attention_mask"] = batch["attention_mask"]
    return kwargs


def token_loss_sums(model, batch: dict, *, direct: bool, packed: bool):
    """Sum of token cross-entropies, number of target tokens and of correct argmax predictions.

    ``direct``: run the decoder, then the LM head only on the hidden states of target positions (exact; must
    not be used through a DDP wrapper, whose gradient hooks need its own forward). Otherwise the model's
    forward with ``logits_to_keep`` = the positions where any row has a target. A flat batch (it carries
    ``cu_seq_lens_q``) needs the model switched to ``varlen_sdpa`` (``enable_flat_batches``).
    """
    input_ids = batch["input_ids"]
    shift_labels = batch["shift_labels"]
    target = shift_labels != IGNORE_INDEX
    kwargs = forward_kwargs(batch, packed=packed)
    labels = shift_labels[target]
    if direct:
        lm = _causal_lm(model)
        hidden = lm.get_decoder()(input_ids=input_ids, **kwargs)[0][target]
        fused = fused_head_loss(lm, hidden, labels)
        if fused is not None:
            return fused[0], labels.numel(), fused[1]
        logits = head_logits(lm, hidden)
    else:
        keep = target.any(dim=0).nonzero().squeeze(-1)
        out = model(input_ids=input_ids, logits_to_keep=keep, **kwargs)
        logits = out.logits[target[:, keep]]
    logits = logits.float()
    loss_sum = torch.nn.functional.cross_entropy(logits, labels, reduction="sum")
    correct = (logits.detach().argmax(dim=-1) == labels).sum()
    return loss_sum, labels.numel(), correct


# ---------------------------------------------------------------------------------------------------------------
# Trainer


def _passes(batch: dict) -> list[dict]:
    """The forward/backward passes of a collated batch: its chunks (``Collator(max_tokens=...)``), or itself."""
    return batch["chunks"] if "chunks" in batch else [batch]


class RecipeTrainer(AtomicCheckpoints, Trainer):
    """Trainer with the target-positions loss, token accuracy, token-weighted validation, a replayable
    length-grouped sampler and atomic ``step-N`` checkpoints (``ml.train.common.AtomicCheckpoints``)."""

    def __init__(self, *args, recipe: dict, **kwargs):
        super().__init__(*args, recipe=recipe, **kwargs)
        self.packed: bool = recipe["packed"]
        self.flat: bool = recipe.get("flat", False)
        self.direct_head: bool = recipe["direct_head"] and self.args.world_size <= 1
        # validation runs without gradients: past DDP's wrapper is fine, past FSDP's (sharded weights) it is not
        self.eval_direct_head: bool = recipe["direct_head"] and not self.is_fsdp_enabled
        self.loss_is_scaled_for_ga = True  # compute_loss divides by the tokens of the whole accumulated batch
        # Under autocast PEFT would cast each LoRA layer's input to its fp32 weights, only for autocast to cast it
        # back to the compute dtype: a bf16 copy per adapted layer kept for the backward pass (q, k and v each
        # their own). Without that cast the adapter's matmul saves the very tensor the base layer saved: the same
        # arithmetic, 16 % faster and 0.3 GiB less at batch 8 on SmolLM2 (benchmarks/RESULTS.md, "Memory").
        self._uncast = [m for m in self.model.modules() if isinstance(m, BaseTunerLayer)] \
            if self.args.bf16 or self.args.fp16 else []
        self._acc_correct = 0.0
        self._acc_count = 0.0

    # data ------------------------------------------------------------------------------------------------------
    def _get_train_sampler(self, train_dataset=None):
        # Flat rows have no padding to save, so no grouping (grouped=False): the permutation Trainer's own sampler
        # draws for (seed, epoch), the order TRL and LLaMA-Factory train in for the same seed and data (any other
        # shuffle moved the held-out loss by up to 3 % on 160 examples, benchmarks/RESULTS.md), replayed on resume
        # and the same global batches on several ranks.
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        lengths = [len(it["input_ids"]) for it in dataset.items]
        # the global micro-batch: several ranks train the batches one process would (accelerate slices each one)
        world = self.args.world_size
        return LengthGroupedSampler(lengths, self.args.per_device_train_batch_size * world, self.args.seed,
                                    grouped=not self.flat, ranks=world)

    def _get_num_items_in_batch(self, batch_samples, device):
        count = sum(int((part["shift_labels"] != IGNORE_INDEX).sum()) for b in batch_samples for part in _passes(b))
        num = torch.tensor(count, device=device)
        if self.args.average_tokens_across_devices and self.args.world_size > 1:
            num = self.accelerator.gather(num).sum()
        return num

    def _track_num_input_tokens(self, inputs):
        for part in _passes(inputs):
            super()._track_num_input_tokens(part)

    # loss ------------------------------------------------------------------------------------------------------
    def training_step(self, model, inputs, num_items_in_batch=None):
        # A batch of more than micro_batch_tokens tokens arrives as chunks of whole examples (Collator): one
        # forward and backward pass each, every loss divided by the whole batch's target tokens, so the gradients
        # add up to the batch's exactly as one pass would give them (float summation order aside) while only one
        # chunk's activations are alive at a time. One process only (a rank's backward would all-reduce per chunk).
        parts = _passes(inputs)
        total = super().training_step(model, parts[0], num_items_in_batch)
        for part in parts[1:]:
            total = total + super().training_step(model, part, num_items_in_batch)
        return total

    @contextlib.contextmanager
    def _autocast(self):
        """The accelerator's autocast, with PEFT's input casting off for its duration (see ``__init__``)."""
        for layer in self._uncast:
            layer.cast_input_dtype_enabled = False
        try:
            with self.accelerator.autocast():
                yield
        finally:
            for layer in self._uncast:
                layer.cast_input_dtype_enabled = True

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        with self._autocast():
            loss_sum, n, correct = token_loss_sums(model, inputs, direct=self.direct_head, packed=self.packed)
        denom = num_items_in_batch if num_items_in_batch is not None else max(n, 1)
        loss = loss_sum / denom
        if self.args.average_tokens_across_devices and self.args.world_size > 1:
            loss = loss * self.args.world_size  # DDP averages gradients over ranks; the denominator is global
        if not bool(torch.isfinite(loss_sum)):
            raise TrainingError(NAN_LOSS, f"The training loss became {loss_sum.item()} at step "
                                f"{self.state.global_step + 1}. Lower the learning rate (or its multiplier), "
                                "or check the data for empty or corrupt examples.")
        self._acc_correct += float(correct)
        self._acc_count += n
        return (loss, None) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._acc_count:
            logs["mean_token_accuracy"] = self._acc_correct / self._acc_count
            self._acc_correct = 0.0
            self._acc_count = 0.0
        super().log(logs, start_time)

    # validation ------------------------------------------------------------------------------------------------
    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        if dataset is None:
            return {}
        model = self.model
        was_training = model.training
        model.eval()
        lengths = [len(it["input_ids"]) for it in dataset.items]
        total = torch.zeros((), dtype=torch.float64)
        correct = 0.0
        count = 0
        with torch.no_grad():
            for idx in eval_batches(lengths, self.args.per_device_eval_batch_size):
                for batch in _passes(self.data_collator([dataset.items[i] for i in idx])):
                    batch = self._prepare_inputs(batch)
                    with self._autocast():
                        s, n, c = token_loss_sums(model, batch, direct=self.eval_direct_head, packed=self.packed)
                    total += s.double().cpu()
                    correct += float(c)
                    count += n
        if was_training:
            model.train()
        metrics = {f"{metric_key_prefix}_loss": float(total / max(count, 1)),
                   f"{metric_key_prefix}_mean_token_accuracy": correct / max(count, 1)}
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics=metrics)
        return metrics



class SFTBridge(HooksBridge):
    """The hooks bridge (``ml.train.common``), reporting the SFT metrics: train loss, learning rate, token accuracy,
    gradient norm; validation loss and token accuracy."""

    def metrics_from_logs(self, logs: dict) -> dict[str, float]:
        metrics: dict[str, float] = {}
        if "loss" in logs:
            metrics = renamed(logs, {"loss": "train_loss", "learning_rate": "learning_rate",
                                     "mean_token_accuracy": "train_mean_token_accuracy", "grad_norm": "grad_norm"})
        if "eval_loss" in logs:
            metrics.update(renamed(logs, {"eval_loss": "valid_loss",
                                          "eval_mean_token_accuracy": "valid_mean_token_accuracy"}))
        return metrics


# ---------------------------------------------------------------------------------------------------------------
# The entry point


def _fingerprint(examples) -> str:
    import hashlib

    h = hashlib.sha256()
    for ex in examples:
        h.update(len(ex.input_ids).to_bytes(4, "little"))
        h.update(bytes(str(ex.input_ids[:64]), "ascii"))
    return h.hexdigest()[:16]


def _logging_steps(total_steps: int, requested: int | None) -> int:
    if requested:
        return requested
    return 1 if total_steps <= 1000 else math.ceil(total_steps / 1000)



def check_group(params, group: Group) -> None:
    """Refuse a run whose processes are not the ones its parameters ask for (a group is started by the worker,
    through torchrun, with ``num_processes`` ranks)."""
    if params.num_processes != group.world_size:
        raise TrainingError(INVALID_PARAMS, f"The parameters ask for {params.num_processes} process"
                            f"{'es' if params.num_processes != 1 else ''} but this run has {group.world_size}: "
                            "torchrun must start it with --nproc-per-node=num_processes.")


def fsdp_arguments(model) -> dict[str, Any]:
    """TrainingArguments for FSDP (torch's FSDP2 through accelerate): every decoder layer is its own shard unit;
    checkpoints hold whole tensors (rank 0 writes them), so they have the format of a one-process run's."""
    layers = sorted(set(getattr(_causal_lm(model), "_no_split_modules", None) or []))
    if not layers:
        raise TrainingError(UNSUPPORTED_MODEL, "strategy fsdp: the model names no decoder layer class to shard by; "
                            "use strategy ddp.")
    return {"fsdp": "full_shard", "fsdp_config": {"version": 2, "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
                                                  "transformer_layer_cls_to_wrap": layers,
                                                  "state_dict_type": "FULL_STATE_DICT",
                                                  "reshard_after_forward": True}}


def stopped_before_training(hooks, resume: Path | None, params, data_report: dict, device: str) -> RunResult | None:
    """A cancel or pause that arrived while the data was prepared: the run ends with nothing trained."""
    stopped = stop_before_training(hooks, resume)
    if stopped is None:
        return None
    return RunResult(status=stopped.status, global_step=stopped.global_step, total_steps=params.total_steps,
                     metrics={}, trained_tokens=0, adapter_dir=None, checkpoint=resume, params=params,
                     data_report=data_report, versions=library_versions(), device_info=device_info(device))


def check_memory(check: MemoryCheck | None, params: ResolvedParams, device: str, longest: int, hooks) -> None:
    """Before the model is loaded: the admitted memory estimate again, on the batch the tokenised data really gives
    (``longest``: tokens of its longest sequence after truncation and packing)."""
    if check is None:
        return
    real, refusal = check.recheck(params, device=device, tokens_per_sequence=longest)
    if refusal:
        raise TrainingError(INSUFFICIENT_MEMORY, refusal)
    _message(hooks, "info", f"Memory check: the batch that runs needs about {real.describe()}; admitted with "
             f"{check.admitted.describe()}; {check.available_bytes / 1024**3:.1f} GiB available.",
             {"memory": real.to_dict(), "admitted": check.admitted.to_dict()})


def run_training(spec: RunSpec, hooks: Hooks | None = None) -> RunResult:
    """Train one adapter. Returns succeeded/cancelled/paused; raises ``TrainingError`` on failure, and
    ``GroupFailed`` on a rank whose group lost another rank."""
    hooks = hooks or NullHooks()
    try:
        return _run(spec, hooks)
    except Exception as exc:
        if current_group().distributed and peer_failure(exc):
            raise GroupFailed(f"another process of the group failed: {exc}") from exc
        if isinstance(exc, TrainingError):
            raise
        raise classify(exc) from exc  # every failure leaves here classified


def _message(hooks, level: str, message: str, data: dict | None = None) -> None:
    fn = getattr(hooks, "on_message", None)
    if fn is not None:
        fn(level, message, data)
    logger.log(logging.WARNING if level == "warning" else logging.INFO, message)


def _run(spec: RunSpec, hooks: Hooks) -> RunResult:
    """data → params → model → trainer → save, each a step below."""
    device = resolve_device(spec.device)
    group = current_group()
    backend = init_group(group, device)
    hooks = GroupHooks(hooks, group, device) if group.distributed else hooks
    base, run_dir, resume = check_folders(spec, group)
    data = prepare_data(spec, hooks, base=base, device=device, group=group)
    params = data.params
    if resume is not None:
        check_resume(resume, params, data.fingerprint["fingerprint"], RESUME_INVARIANTS)
    stopped = stopped_before_training(hooks, resume, params, data.report, device)
    if stopped is not None:
        return stopped
    check_memory(spec.memory_check, params, device, max(len(item["input_ids"]) for item in data.train_items), hooks)
    precision = resumed_precision(resume, lambda: precision_plan(
        device, params.bf16, model_config=json.loads((base / "config.json").read_text())))
    _message(hooks, "info", f"Compute dtype: {precision['dtype']} ({precision['reason']}).", {"precision": precision})
    cdtype = getattr(torch, precision["dtype"])
    model, plan = prepare_model(base, params, device, hooks, dtype=cdtype)
    world = {"world_size": group.world_size, "strategy": params.strategy if group.distributed else "single",
             "backend": backend, "devices": group_devices(group, device)}
    if group.distributed:
        _message(hooks, "info", f"Training on {group.world_size} processes ({params.strategy} over {backend}): "
                 f"{', '.join(world['devices'])}; global batch {params.effective_batch_size} = {params.batch_size} "
                 f"per process x {group.world_size} x {params.gradient_accumulation_steps} accumulated.", world)
    bridge = SFTBridge(hooks)
    trainer = build_trainer(spec, data, model, plan, device, hooks, bridge, group=group, dtype=cdtype,
                            precision=precision)
    if resume is not None:
        _message(hooks, "info", f"Resuming from {resume.name}.")
    t0 = time.monotonic()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*MatMul8bitLt.*")
        trainer.train(resume_from_checkpoint=str(resume) if resume is not None else None)
    return save_result(spec, data, trainer, bridge, plan, device, base=base, run_dir=run_dir,
                       wall=time.monotonic() - t0, group=group, world=world, precision=precision)


def check_folders(spec: RunSpec, group: Group) -> tuple[Path, Path, Path | None]:
    """The base model folder, the run folder (its ``checkpoints/`` made, stale temporaries removed by rank 0) and
    the checkpoint to resume from, checked."""
    base = Path(spec.base_model_path)
    if not (base / "config.json").is_file():
        raise TrainingError(MODEL_MISSING, f"The base model folder {base} is missing or has no config.json.")
    run_dir = Path(spec.run_dir)
    checkpoints_dir = run_dir / "checkpoints"
    checkpoints_dir.mkdir(parents=True, exist_ok=True)
    if group.is_main:
        ckpt.remove_stale_temp(checkpoints_dir)
    resume = Path(spec.resume_from) if spec.resume_from else None
    check_resume_folder(resume)
    return base, run_dir, resume


@dataclass
class RunData:
    """The run's tokenizer (its template installed), resolved parameters and dataset items."""

    tokenizer: Any
    template: str
    params: ResolvedParams
    train_items: list[dict]
    valid_items: list[dict] | None
    report: dict[str, Any]
    fingerprint: dict[str, Any]


def install_run_template(tokenizer, template: str = "auto") -> str:
    """Install the run's chat template as the tokenizer's (``ml.templates.resolve_template``: the model's own, else
    the fallback) and return its name. The saved adapter's tokenizer keeps it, so inference renders alike."""
    name = resolve_template(template, has_chat_template=has_chat_template(tokenizer))
    install_template(tokenizer, name)
    return name


def _parse(params: ResolvedParams | TrainingParams | dict) -> ResolvedParams | TrainingParams:
    try:
        return params if isinstance(params, ResolvedParams) else parse_params(params)
    except InvalidParams as exc:
        raise TrainingError(INVALID_PARAMS, exc.message) from exc


def resolve_run_params(params_in: TrainingParams, train_full: list, *, base: Path, device: str,
                       has_chat_template: bool, has_validation: bool, world_size: int = 1) -> ResolvedParams:
    """``auto`` parameters resolved from the real token lengths and the device."""
    mean_len, max_len = length_stats(train_full)
    gpu_gb = torch.cuda.get_device_properties(0).total_memory / 1024**3 if device == "cuda" else None
    model_config = json.loads((base / "config.json").read_text(encoding="utf-8"))
    try:
        return resolve_params(
            params_in, n_examples=len(train_full), n_tokens_mean=mean_len, n_tokens_max=max_len, device=device,
            gpu_memory_gb=gpu_gb, has_chat_template=has_chat_template,
            model_max_length=model_config.get("max_position_embeddings"), has_validation=has_validation,
            gpu_count=world_size,
        )
    except InvalidParams as exc:
        raise TrainingError(INVALID_PARAMS, exc.message) from exc


def prepare_data(spec: RunSpec, hooks: Hooks, *, base: Path, device: str, group: Group | None = None) -> RunData:
    """Tokenise once untruncated (the lengths feed "auto"), resolve the parameters, then truncate and batch."""
    group = group or current_group()
    params_in = _parse(spec.params)
    tokenizer = load_tokenizer(base)
    had_template = has_chat_template(tokenizer)
    template = install_run_template(tokenizer, params_in.template)
    loss_on = params_in.loss_on
    train_full, _ = encode_records(tokenizer, spec.train, loss_on=loss_on)
    valid_full = None
    if spec.validation is not None:
        valid_full, _ = encode_records(tokenizer, spec.validation, loss_on=loss_on)
    if isinstance(params_in, ResolvedParams):
        params = params_in
    else:
        params = resolve_run_params(params_in, train_full, base=base, device=device, has_chat_template=had_template,
                                    has_validation=valid_full is not None, world_size=group.world_size)
    check_group(params, group)
    if params.device != device:
        _message(hooks, "warning", f"Parameters were resolved for {params.device} but the run uses {device}.")

    train_examples, train_report = truncate_examples(train_full, params.max_seq_length)
    report: dict[str, Any] = {"train": train_report.to_dict()}
    valid_examples = None
    if valid_full is not None:
        valid_examples, valid_report = truncate_examples(valid_full, params.max_seq_length)
        report["validation"] = valid_report.to_dict()
    _message(hooks, "info", f"Tokenised {train_report.examples} training examples: {train_report.tokens:,} tokens, "
             f"{train_report.target_tokens:,} of them trained (loss on {loss_on}, template {template}).", report)
    if train_report.truncated:
        _message(hooks, "warning", f"{train_report.truncated} of {len(train_full)} training examples were longer "
                 f"than {params.max_seq_length} tokens and were truncated.", report)
    if train_report.dropped_no_target:
        _message(hooks, "warning", f"{train_report.dropped_no_target} examples had no trained tokens left and were "
                 "skipped.", report)

    if params.packing:
        train_items = pack_items(train_examples, params.max_seq_length, seed=params.seed)
        valid_items = pack_items(valid_examples, params.max_seq_length) if valid_examples else None
    else:
        train_items = [to_item(e) for e in train_examples]
        valid_items = [to_item(e) for e in valid_examples] if valid_examples else None
    fingerprint = {"train_examples": len(train_examples), "train_tokens": train_report.tokens,
                   "fingerprint": _fingerprint(train_examples)}
    return RunData(tokenizer=tokenizer, template=template, params=params, train_items=train_items,
                   valid_items=valid_items or None, report=report, fingerprint=fingerprint)


def prepare_model(base: Path, params: ResolvedParams, device: str, hooks: Hooks, *, dtype: torch.dtype | None = None):
    """The base model (computing in ``dtype``, the device's default without one) with LoRA attached and its
    attention path chosen (``attention_plan``)."""
    from transformers import set_seed

    cdtype = dtype or compute_dtype(device)
    model = load_base_model(base, quantization=params.quantization, device=device, dtype=cdtype)
    set_seed(params.seed)  # LoRA initialisation depends on it
    model = add_lora(model, params)
    plan = attention_plan(model, device)
    if plan["flat"]:
        enable_flat_batches(model)
    _message(hooks, "info", f"Attention: {plan['path']} ({plan['reason']}).", {"attention": plan})
    trainable, total_params = model.get_nb_trainable_parameters()
    _message(hooks, "info", f"Loaded {base.name} on {device} ({params.quantization}, {str(cdtype).split('.')[-1]}); "
             f"{trainable:,} trainable LoRA parameters of {total_params:,}.",
             {"trainable_parameters": trainable, "parameters": total_params})
    return model, plan


def trainer_arguments(params: ResolvedParams, spec, *, output_dir: Path, device: str, has_valid: bool) -> dict:
    """The TrainingArguments the SFT and preference recipes share: schedule, optimizer, logging, checkpoints and
    evaluation by steps, from the resolved parameters (each recipe adds its precision and its own keys)."""
    return dict(
        output_dir=str(output_dir),
        per_device_train_batch_size=params.batch_size,
        per_device_eval_batch_size=max(params.batch_size, 1),
        gradient_accumulation_steps=params.gradient_accumulation_steps,
        num_train_epochs=params.n_epochs,
        max_steps=params.max_steps or -1,
        learning_rate=params.learning_rate,
        lr_scheduler_type=params.lr_scheduler,
        warmup_steps=params.warmup_ratio,  # < 1: a ratio of the total steps
        weight_decay=0.0,
        max_grad_norm=1.0,
        optim="paged_adamw_8bit" if device == "cuda" else "adamw_torch",
        use_cpu=device == "cpu",
        logging_strategy="steps",
        logging_steps=_logging_steps(params.total_steps, spec.logging_steps),
        save_strategy="steps",
        save_steps=params.save_steps,
        save_total_limit=None,
        eval_strategy="steps" if has_valid else "no",
        eval_steps=params.eval_steps if has_valid else None,
        seed=params.seed,
        report_to="none",
        disable_tqdm=True,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        ddp_find_unused_parameters=False,  # LoRA: every adapter gets a gradient; required with checkpointing
    )


def build_trainer(spec: RunSpec, data: RunData, model, plan: dict, device: str, hooks: Hooks,
                  bridge: SFTBridge, *, group: Group, dtype: torch.dtype | None = None,
                  precision: dict | None = None) -> RecipeTrainer:
    """The Trainer of the run: its arguments from the resolved parameters, the hooks bridged, tracking attached
    (by rank 0 alone), the ranks' strategy."""
    params = data.params
    strategy_args = fsdp_arguments(model) if group.distributed and params.strategy == "fsdp" else {}
    cdtype = dtype or compute_dtype(device)
    run_dir = Path(spec.run_dir)
    checkpoints_dir = run_dir / "checkpoints"
    bridge_metrics = bridge.last_metrics

    def on_checkpoint(step: int, path: Path) -> None:
        hooks.on_checkpoint(step, path, dict(bridge_metrics))

    has_valid = data.valid_items is not None
    train_args = TrainingArguments(
        **trainer_arguments(params, spec, output_dir=checkpoints_dir, device=device, has_valid=has_valid),
        bf16=cdtype == torch.bfloat16,  # autocast; on CPU too (the LoRA weights and optimizer stay fp32)
        fp16=cdtype == torch.float16,
        include_num_input_tokens_seen="non_padding",
        ddp_backend=backend_for(device) if group.distributed else None,
        **strategy_args,
    )
    flat = bool(plan["flat"])
    recipe = {
        "packed": params.packing, "direct_head": uses_direct_head(model), "flat": flat,
        "checkpoints_dir": str(checkpoints_dir),
        "run_dir": str(run_dir), "keep_checkpoints": spec.keep_checkpoints, "params": params.to_dict(),
        "data_fingerprint": data.fingerprint, "on_checkpoint": on_checkpoint, "precision": precision,
    }
    tokenizer = data.tokenizer
    return RecipeTrainer(
        model=model, args=train_args,
        train_dataset=ListDataset(data.train_items, pad=pad_item(tokenizer.pad_token_id, packed=params.packing)),
        eval_dataset=ListDataset(data.valid_items) if has_valid else None, processing_class=tokenizer,
        data_collator=Collator(tokenizer.pad_token_id, flat=flat,
                               max_tokens=params.micro_batch_tokens if not group.distributed else 0), recipe=recipe,
        # rank 0 alone writes the run's TensorBoard and MLflow records
        callbacks=[bridge, *(tracking_callbacks(run_dir, params, spec.summary_extra) if group.is_main else [])],
    )


def save_result(spec: RunSpec, data: RunData, trainer: RecipeTrainer, bridge: SFTBridge, plan: dict,
                device: str, *, base: Path, run_dir: Path, wall: float, group: Group, world: dict,
                precision: dict) -> RunResult:
    """How the run ended, its metrics and, when it succeeded, the adapter written with its summary."""
    params, model = data.params, trainer.model
    state = trainer.state
    status = {"cancel": "cancelled", "pause": "paused"}.get(bridge.stop_reason or "", "succeeded")
    metrics = dict(bridge.last_metrics)
    if status == "succeeded" and data.valid_items is not None and (
            not bridge.history or "valid_loss" not in bridge.history[-1]
            or bridge.history[-1]["step"] != state.global_step):
        trainer.evaluate()
        metrics.update(bridge.last_metrics)
    trainable, _ = model.get_nb_trainable_parameters()
    session_tokens = state.num_input_tokens_seen - bridge._tokens0
    metrics.update({
        "trainable_parameters": float(trainable),
        "train_runtime_s": round(wall, 3),
        "session_tokens": float(session_tokens),
        "tokens_per_s": round(session_tokens / wall, 2) if wall > 0 else 0.0,
        **{k: float(v) for k, v in peak_memory().items()},
    })
    if "train_loss" in bridge.final_logs:
        metrics["train_loss_mean"] = bridge.final_logs["train_loss"]

    versions = library_versions()
    info = device_info(device) | {"quantization": params.quantization, "compute_dtype": precision["dtype"],
                                  "precision": precision, "direct_head": trainer.direct_head,
                                  "flat_batches": bool(plan["flat"]), "attention": plan, **world}
    adapter_dir = None
    # FSDP: the adapter's tensors are sharded over the ranks; every rank takes part in gathering them whole
    state_dict = trainer.accelerator.get_state_dict(trainer.model) \
        if status == "succeeded" and trainer.is_fsdp_enabled else None
    if status == "succeeded" and group.is_main:
        summary = {
            "base_model": str(base.resolve()), "params": params.to_dict(), "metrics": metrics,
            "global_step": state.global_step, "trained_tokens": int(state.num_input_tokens_seen),
            "data": data.report | {"fingerprint": data.fingerprint}, "versions": versions, "device": info,
            "template": data.template, "trainable_parameters": trainable, "history": bridge.history,
            **spec.summary_extra,
        }
        adapter_dir = ckpt.save_adapter(model, data.tokenizer, spec.adapter_dir, summary, base_model_path=base,
                                        state_dict=state_dict)
    return RunResult(
        status=status, global_step=state.global_step, total_steps=state.max_steps, metrics=metrics,
        trained_tokens=int(state.num_input_tokens_seen), adapter_dir=adapter_dir,
        checkpoint=ckpt.latest_good_checkpoint(run_dir), params=params, data_report=data.report,
        versions=versions, device_info=info, history=bridge.history,
    )


def result_to_dict(result: RunResult) -> dict:
    out = asdict(result)
    for key in ("adapter_dir", "checkpoint"):
        out[key] = str(out[key]) if out[key] is not None else None
    return out
