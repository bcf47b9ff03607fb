"""Helpers of the adapter lifecycle tests: a real PEFT adapter of the tiny Llama, and adapter rows around it."""

from __future__ import annotations

import shutil
from pathlib import Path


def save_tiny_adapter(base_dir: Path, folder: Path, *, seed: int = 1) -> Path:
    """A LoRA adapter of the tiny model with random (non-zero) weights, saved with plain PEFT + the tokenizer."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(str(base_dir))
    config = LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj", "o_proj"], lora_dropout=0.0,
                        init_lora_weights=False, task_type="CAUSAL_LM")
    model = get_peft_model(base, config)
    with torch.no_grad():  # large enough that the adapter visibly changes the greedy output
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    model.save_pretrained(str(folder))
    AutoTokenizer.from_pretrained(str(base_dir)).save_pretrained(str(folder))
    return folder


def copy_adapter(source: Path, target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(source, target)
    return target
