"""Merging a LoRA adapter into its base model, and the ``merge`` job kind's child-process body.

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

log = logging.getLogger(__name__)
MERGE_MARKER = "lora_studio_merge.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "vocab.json", "merges.txt", "vocab.txt", "chat_template.jinja", "chat_template.json",
                   "added_tokens.json")


def _tokenizer_source(adapter_path: Path, base_path: Path) -> Path:
    # The adapter folder carries the tokenizer it was trained with (chat template included): prefer it.
    return adapter_path if (adapter_path / "tokenizer_config.json").is_file() else base_path


def merge_to_folder(base_path: str | Path, adapter_path: str | Path, target: str | Path, *,
                    provenance: dict | None = None) -> Path:
    """Write base + adapter, merged, as a new model folder at ``target`` (which must not exist)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base_path, adapter_path, target = Path(base_path), Path(adapter_path), Path(target)
    if target.exists():
        raise FileExistsError(f"{target} already exists")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        # float32 on CPU: the merged weights are then exactly base + scale * B @ A of the adapter's values.
        dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
        base = AutoModelForCausalLM.from_pretrained(str(base_path), dtype=dtype)
        model = PeftModel.from_pretrained(base, str(adapter_path))
        merged = model.merge_and_unload()
        merged.save_pretrained(tmp, safe_serialization=True)
        tokenizer = AutoTokenizer.from_pretrained(str(_tokenizer_source(adapter_path, base_path)))
        tokenizer.save_pretrained(tmp)
        generation = base_path / "generation_config.json"
        if generation.is_file() and not (tmp / "generation_config.json").exists():
            shutil.copy2(generation, tmp / "generation_config.json")
        (tmp / MERGE_MARKER).write_text(json.dumps({"base_model_path": str(base_path),
                                                    "adapter_path": str(adapter_path), **(provenance or {})},
                                                   indent=2, default=str), encoding="utf-8")
        del merged, model, base
        tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def run_merge_job(job, ctx) -> None:
    """Body of ``manage.py run_job merge <id>``: merge, then register the folder as a new base model."""
    from django.db import transaction

    from training import lifecycle
    from training.errors import classify
    from training.models import EventLevel, JobStatus

    adapter = job.adapter
    target = Path(job.output_path)
    ctx.update(total_steps=2, step=0)
    ctx.event(f"Merging adapter {adapter.name} into {adapter.base_model.name} -> {target}.")
    try:
        if not target.exists():  # a recovered run finds the previous run's finished folder and registers it
            merge_to_folder(adapter.base_model.path, adapter.path, target,
                            provenance={"adapter_id": adapter.pk, "adapter": adapter.name, "merge_job_id": job.pk,
                                        "base_model": adapter.base_model.name})
        ctx.update(step=1)
        with transaction.atomic():
            model = lifecycle.register_merged_model(job, target)
            ctx.finish(JobStatus.SUCCEEDED, step=2, result=model, eta_seconds=None,
                       metrics={"parameter_count": model.parameter_count, "size_bytes": model.size_bytes})
        ctx.event(f"Succeeded: registered base model {model.name} ({target}).")
    except Exception as exc:  # a classified failure, never a stuck row
        from training.jobs import LostClaim

        if isinstance(exc, LostClaim):
            raise
        log.exception("merge job %s failed", job.pk)
        err = classify(exc)
        ctx.finish(JobStatus.FAILED, error_code=err.code, error_message=err.message, eta_seconds=None)
        ctx.event(f"Failed: {err.message}", level=EventLevel.ERROR, data={"code": err.code})
