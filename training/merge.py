"""Merging a LoRA adapter into its base model (the ``merge`` job kind runs it: ``training.runner.MergeRunner``).

``merge_to_folder`` is plain Python (no Django): it loads the base, applies the adapter with PEFT,
``merge_and_unload()``s it and writes a standalone Hugging Face folder (safetensors, tokenizer, config)
atomically: everything goes to a temporary sibling folder that is renamed into place at the end, so a
crash never leaves a half-written model that a scan would register.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path

from ml.model import load_tokenizer, load_with_adapter, tokenizer_source

log = logging.getLogger(__name__)
MERGE_MARKER = "lora_studio_merge.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "vocab.json", "merges.txt", "vocab.txt", "chat_template.jinja", "chat_template.json",
                   "added_tokens.json")


def merge_to_folder(base_path: str | Path, adapter_path: str | Path, target: str | Path, *,
                    provenance: dict | None = None) -> Path:
    """Write base + adapter, merged, as a new model folder at ``target`` (which must not exist)."""
    import torch  # the merge job's child process only

    base_path, adapter_path, target = Path(base_path), Path(adapter_path), Path(target)
    if target.exists():
        raise FileExistsError(f"{target} already exists")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        # float32 on CPU: the merged weights are then exactly base + scale * B @ A of the adapter's values.
        dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
        model = load_with_adapter(base_path, adapter_path, device="cpu", dtype=dtype)
        merged = model.merge_and_unload()
        merged.save_pretrained(tmp, safe_serialization=True)
        tokenizer = load_tokenizer(tokenizer_source(adapter_path, base_path))
        tokenizer.save_pretrained(tmp)
        generation = base_path / "generation_config.json"
        if generation.is_file() and not (tmp / "generation_config.json").exists():
            shutil.copy2(generation, tmp / "generation_config.json")
        (tmp / MERGE_MARKER).write_text(json.dumps({"base_model_path": str(base_path),
                                                    "adapter_path": str(adapter_path), **(provenance or {})},
                                                   indent=2, default=str), encoding="utf-8")
        del merged, model
        tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target
