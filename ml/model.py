"""The one loader of tokenizers and models: training, evaluation, the model server, merges and the classifier.

Every load reads local files only (nothing is fetched from a hub), and follows the same rules:

- **tokenizer** (``load_tokenizer``): a model without a pad token pads with its EOS (else UNK) token; the adapter
  folder's own tokenizer (saved with the chat template it was trained with) is preferred to the base's
  (``tokenizer_source``). ``cached_tokenizer`` keeps a few per process for the preview and token statistics.
- **causal LM** (``load_causal_lm``): the dtype of the device (``ml.probe.compute_dtype``) unless given, the
  attention implementation the architecture needs (``attention_implementation``), optional NF4 / int8
  quantisation; ``load_base_model`` prepares it for LoRA training (k-bit preparation, gradient checkpointing),
  ``load_with_adapter`` puts a trained adapter on it for inference.
- **sequence classifier** (``load_sequence_classifier``): a base encoder with a fresh head for the label map.

Load failures are ``TrainingError``s (``model_missing``, ``unsupported_model``) with the folder's name. Importing
this module loads neither torch nor transformers (the web process imports it); the functions do, when called.
"""

from __future__ import annotations

import functools
import json
import os
import threading
from pathlib import Path
from typing import Any

from ml.errors import DATASET_ERROR, MODEL_MISSING, UNSUPPORTED_MODEL, TrainingError
from ml.probe import compute_dtype, resolve_device, use_available_cpus

# ---------------------------------------------------------------------------------------------------------------
# Tokenizers

# transformers resolves its names lazily on first use; two threads of a web worker taking their first tokenizer at
# once (the start form asks for its plan and its preview together) could see the half-initialised module and fail
# with "cannot import name 'AutoTokenizer'". The first import is taken under this lock.
_IMPORT_LOCK = threading.Lock()


def _auto_tokenizer():
    with _IMPORT_LOCK:
        from transformers import AutoTokenizer
    return AutoTokenizer


def load_tokenizer(path: str | Path):
    """The tokenizer of a local model (or adapter) folder, with a pad token."""
    AutoTokenizer = _auto_tokenizer()  # noqa: N806

    path = Path(path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path.resolve()), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise TrainingError(MODEL_MISSING, f"Cannot load the tokenizer of {path}: {exc}") from exc
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return tokenizer


def tokenizer_source(adapter_path: str | Path, base_path: str | Path) -> Path:
    """The adapter folder when it carries the tokenizer it was trained with (chat template included), else the
    base model's folder."""
    adapter_path = Path(adapter_path)
    return adapter_path if (adapter_path / "tokenizer_config.json").is_file() else Path(base_path)


def _tokenizer_mtime(path: str) -> float:
    try:
        return max((p.stat().st_mtime for p in Path(path).iterdir() if p.name.startswith(("tokenizer", "chat"))),
                   default=0.0)
    except OSError:
        return 0.0


@functools.lru_cache(maxsize=4)
def _cached(path: str, _mtime: float):
    return load_tokenizer(path)


def cached_tokenizer(path: str | os.PathLike):
    """``load_tokenizer``, kept per process and per folder change (the preview and token statistics). Callers must
    not change the tokenizer they get: the renderer passes templates per call instead of installing them."""
    path = str(path)
    return _cached(path, _tokenizer_mtime(path))


# ---------------------------------------------------------------------------------------------------------------
# Causal language models


def _transformers_version() -> str:
    import transformers

    return transformers.__version__


def model_config(path: str | Path):
    """The model's transformers config, or ``unsupported_model`` when no causal-LM class exists for it."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    path = Path(path)
    try:
        raw = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise TrainingError(MODEL_MISSING, f"Cannot read {path / 'config.json'}: {exc}") from exc
    model_type = raw.get("model_type")
    try:
        config = AutoConfig.from_pretrained(str(path.resolve()), local_files_only=True)
    except (KeyError, ValueError) as exc:
        raise TrainingError(UNSUPPORTED_MODEL, f"{path.name}: the architecture {model_type!r} is not one that "
                            f"transformers {_transformers_version()} knows ({exc}).") from exc
    if type(config) not in MODEL_FOR_CAUSAL_LM_MAPPING:
        raise TrainingError(UNSUPPORTED_MODEL, f"{path.name}: {model_type!r} models have no causal language-model "
                            "head in transformers, so this recipe cannot fine-tune them as chat or text models.")
    return config


def attention_implementation(path_or_config) -> tuple[str, str]:
    """The attention implementation a model is loaded with, and why.

    SDPA wherever transformers supports it for the architecture and the model needs nothing SDPA lacks; eager
    where attention scores are soft-capped (Gemma 2's ``attn_logit_softcapping``: SDPA cannot apply it and
    transformers refuses SDPA for such models) or the architecture has no SDPA support at all.
    """
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    config = model_config(path_or_config) if isinstance(path_or_config, (str, Path)) else path_or_config
    softcap = getattr(config, "attn_logit_softcapping", None)
    if softcap:
        return "eager", f"attention scores are soft-capped at {softcap}, which SDPA cannot compute"
    model_class = MODEL_FOR_CAUSAL_LM_MAPPING.get(type(config), None)
    if model_class is not None and not getattr(model_class, "_supports_sdpa", False):
        return "eager", f"{model_class.__name__} has no SDPA attention in transformers"
    return "sdpa", "SDPA supports this architecture"


def load_causal_lm(path: str | Path, *, device: str = "auto", dtype=None, quantization: str = "none"):
    """A causal LM from a local folder on ``device`` (``auto``: CUDA when present), in ``dtype`` (default: the
    device's compute dtype), with the architecture's attention implementation and optional ``nf4`` / ``int8``
    quantisation. In eval mode; ``load_base_model`` prepares it for training instead."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    path = Path(path)
    if not (path / "config.json").is_file():
        raise TrainingError(MODEL_MISSING, f"The base model folder {path} is missing or has no config.json.")
    device = resolve_device(device)
    dtype = dtype or compute_dtype(device)
    implementation, _ = attention_implementation(path)
    kwargs: dict[str, Any] = {"dtype": dtype, "local_files_only": True, "attn_implementation": implementation}
    if quantization == "nf4":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype,
        )
    elif quantization == "int8":
        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
    elif quantization != "none":
        raise TrainingError(DATASET_ERROR, f"Unknown quantization {quantization!r}.")
    if device == "cuda":
        kwargs["device_map"] = {"": int(os.environ.get("LOCAL_RANK", 0))}
    else:
        kwargs["device_map"] = {"": device}

    try:
        model = AutoModelForCausalLM.from_pretrained(str(path.resolve()), **kwargs)
    except OSError as exc:
        if getattr(exc, "errno", None) is not None:
            raise  # disk errors are classified by the caller
        # transformers' way of saying that the weights are missing or unreadable
        raise TrainingError(MODEL_MISSING, f"Cannot load the base model from {path}: {exc}") from exc
    except (ValueError, ImportError) as exc:
        # The files are there: transformers refuses an attention, quantisation or layer it cannot run for this
        # architecture, or a package it needs for it is not installed.
        raise TrainingError(UNSUPPORTED_MODEL, f"{path.name} cannot be trained by this recipe: {exc}") from exc
    model.eval()
    return model


def load_base_model(path: str | Path, *, quantization: str, device: str, dtype=None,
                    gradient_checkpointing: bool | None = None):
    """Load a causal LM for LoRA training, prepared for the device.

    CUDA: NF4 4-bit with double quantisation (or int8, or none), bf16/fp16 compute, gradient checkpointing.
    CPU: fp32 compute, no checkpointing, ``torch.set_num_threads(available cores)``; nf4/int8 work too.
    """
    from peft import prepare_model_for_kbit_training

    device = resolve_device(device)
    use_available_cpus(device)  # the training child has the host (or its cgroup share) to itself
    if gradient_checkpointing is None:
        gradient_checkpointing = device == "cuda"
    model = load_causal_lm(path, device=device, dtype=dtype, quantization=quantization)
    if quantization in ("nf4", "int8"):
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    elif gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    model.config.use_cache = False
    return model


def load_with_adapter(base_path: str | Path, adapter_path: str | Path, *, device: str = "auto", dtype=None,
                      adapter_name: str = "default"):
    """The base causal LM with a trained LoRA adapter on it (PEFT, eval mode), as a user would load it."""
    from peft import PeftModel

    base = load_causal_lm(base_path, device=device, dtype=dtype)
    model = PeftModel.from_pretrained(base, str(adapter_path), adapter_name=adapter_name)
    model.eval()
    return model


# ---------------------------------------------------------------------------------------------------------------
# Sequence classifiers


def load_sequence_classifier(path: str | Path, *, id2label: dict[int, str], device: str = "cpu", dtype=None):
    """A sequence-classification model of a local base folder with a head for ``id2label`` (fp32 by default)."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification
    from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING

    path = Path(path)
    if not (path / "config.json").is_file():
        raise TrainingError(MODEL_MISSING, f"The base model folder {path} has no config.json.")
    try:
        config = AutoConfig.from_pretrained(str(path), local_files_only=True)
    except (KeyError, ValueError) as exc:
        raise TrainingError(UNSUPPORTED_MODEL, f"{path.name}: transformers does not know this architecture "
                            f"({exc}).") from None
    if type(config) not in MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING:
        raise TrainingError(UNSUPPORTED_MODEL, f"{path.name}: {config.model_type!r} models have no "
                            "sequence-classification head in transformers.")
    model = AutoModelForSequenceClassification.from_pretrained(
        str(path), num_labels=len(id2label), id2label=dict(id2label), label2id={v: k for k, v in id2label.items()},
        dtype=dtype or torch.float32, local_files_only=True)
    return model.to(device)
