"""Atomic checkpoint and adapter folders (plain module; no Django, no torch import).

A folder is written under a hidden temporary name, every file is fsynced, a manifest listing each file
and its size is written last, and only then is the folder renamed into place. A crash at any moment
leaves either no folder or a complete one; ``latest_good_checkpoint`` still checks the manifest, the
sizes and the headers, so a folder damaged afterwards (a full disk, a copy cut short) is skipped.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import struct
import time
import uuid
from collections.abc import Iterable
from pathlib import Path

MANIFEST = "lora_studio_manifest.json"
STEP_DIR = re.compile(r"^step-(\d+)$")
TRAINER_STATE = "trainer_state.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
SUMMARY = "training_summary.json"
# what a checkpoint must hold to resume with optimizer, scheduler and RNG state
CHECKPOINT_REQUIRED = (ADAPTER_CONFIG, ADAPTER_WEIGHTS, TRAINER_STATE, "scheduler.pt")
# the optimizer state: optimizer.pt (one process, DDP) or optimizer.bin (FSDP's whole-tensor optimizer state)
OPTIMIZER_FILES = ("optimizer.pt", "optimizer.bin")


def fsync_tree(folder: Path) -> None:
    for root, _dirs, files in os.walk(folder):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(root))


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem allows fsync on a directory
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_manifest(folder: Path, **info) -> None:
    files = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.name != MANIFEST:
            files[path.relative_to(folder).as_posix()] = path.stat().st_size
    data = {"complete": True, "created_at": time.time(), "files": files, **info}
    tmp = folder / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, folder / MANIFEST)


def temp_sibling(final: Path) -> Path:
    return final.parent / f".{final.name}.tmp-{uuid.uuid4().hex[:8]}"


def publish(tmp: Path, final: Path, **manifest_info) -> Path:
    """Manifest + fsync ``tmp``, then rename it to ``final`` (which must not exist or be an empty folder)."""
    write_manifest(tmp, **manifest_info)
    fsync_tree(tmp)
    if final.exists():
        if final.is_dir() and not any(final.iterdir()):
            final.rmdir()
        else:
            raise FileExistsError(f"{final} already exists")
    os.rename(tmp, final)
    _fsync_dir(final.parent)
    return final


def _safetensors_ok(path: Path) -> bool:
    try:
        with path.open("rb") as fh:
            head = fh.read(8)
            if len(head) != 8:
                return False
            (n,) = struct.unpack("<Q", head)
            if n <= 0 or n > 100_000_000:
                return False
            header = json.loads(fh.read(n))
        size = path.stat().st_size
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
        return 8 + n + end == size
    except (OSError, ValueError, KeyError, TypeError):
        return False


def checkpoint_problem(folder: Path) -> str | None:
    """Why ``folder`` is not a complete, readable checkpoint; ``None`` when it is good."""
    folder = Path(folder)
    if not folder.is_dir():
        return "not a folder"
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "no readable manifest (incomplete save)"
    if not manifest.get("complete"):
        return "manifest not marked complete"
    for rel, size in manifest.get("files", {}).items():
        path = folder / rel
        if not path.is_file():
            return f"{rel} is missing"
        if path.stat().st_size != size:
            return f"{rel} has {path.stat().st_size} bytes, expected {size}"
    for name in CHECKPOINT_REQUIRED:
        if not (folder / name).is_file():
            return f"{name} is missing"
    if not any((folder / name).is_file() for name in OPTIMIZER_FILES):
        return "optimizer.pt is missing"
    try:
        state = json.loads((folder / TRAINER_STATE).read_text(encoding="utf-8"))
        json.loads((folder / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "unreadable JSON"
    step = manifest.get("step")
    if step is not None and state.get("global_step") != step:
        return "trainer state does not match the manifest's step"
    if not _safetensors_ok(folder / ADAPTER_WEIGHTS):
        return f"{ADAPTER_WEIGHTS} is damaged"
    return None


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """``(step, path)`` of every ``step-N`` folder under ``run_dir/checkpoints`` (or ``run_dir`` itself), by step."""
    run_dir = Path(run_dir)
    base = run_dir / "checkpoints" if (run_dir / "checkpoints").is_dir() else run_dir
    if not base.is_dir():
        return []
    found = []
    for p in base.iterdir():
        m = STEP_DIR.match(p.name)
        if m and p.is_dir():
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest_good_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint of a run, skipping incomplete or damaged ones; ``None`` if there is none."""
    for _step, path in reversed(list_checkpoints(Path(run_dir))):
        if checkpoint_problem(path) is None:
            return path
    return None


def rotate_checkpoints(run_dir: Path, keep: int, protect: Iterable[Path] = ()) -> None:
    """Keep the ``keep`` newest good checkpoints (and those in ``protect``: the one just written, a run's best);
    remove older ones and stale temp folders."""
    if keep <= 0:
        return
    good = [p for _s, p in list_checkpoints(run_dir) if checkpoint_problem(p) is None]
    keep_set = set(good[-keep:]) | {Path(p) for p in protect}
    newest_good_step = int(STEP_DIR.match(good[-1].name).group(1)) if good else None
    for step, path in list_checkpoints(run_dir):
        if path in keep_set:
            continue
        # a damaged folder older than a good one is garbage; keep newer damaged ones for inspection
        if path in good or (newest_good_step is not None and step < newest_good_step):
            shutil.rmtree(path, ignore_errors=True)


def remove_stale_temp(folder: Path) -> None:
    for p in Path(folder).glob(".*.tmp-*"):
        shutil.rmtree(p, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------------------
# Adapter output


def save_adapter(model, tokenizer, out_dir: str | Path, summary: dict, *, base_model_path: str | Path | None = None,
                 state_dict: dict | None = None, extra_files: dict[str, dict] | None = None,
                 kind: str = "adapter") -> Path:
    """Write a plain-PEFT adapter folder atomically: adapter_config.json, adapter_model.safetensors,
    tokenizer files, training_summary.json and ``extra_files`` (name -> JSON content: a classifier's label map
    and report).

    ``adapter_config.json``'s ``base_model_name_or_path`` is the absolute local base model folder, so
    ``PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), out_dir)`` works offline.
    ``state_dict``: the model's whole tensors when the model itself holds only shards (FSDP).
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(out_dir)
    try:
        tmp.mkdir()
        extra = {"state_dict": state_dict} if state_dict is not None else {}
        model.save_pretrained(str(tmp), safe_serialization=True, **extra)
        config_path = tmp / ADAPTER_CONFIG
        config = json.loads(config_path.read_text(encoding="utf-8"))
        base = base_model_path or config.get("base_model_name_or_path")
        if base:
            config["base_model_name_or_path"] = str(Path(base).resolve())
        config_path.write_text(json.dumps(config, indent=2, sort_keys=True), encoding="utf-8")
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
        (tmp / SUMMARY).write_text(json.dumps(summary, indent=2, ensure_ascii=False, default=str), encoding="utf-8")
        for name, content in (extra_files or {}).items():
            (tmp / name).write_text(json.dumps(content, indent=2, ensure_ascii=False), encoding="utf-8")
        return publish(tmp, out_dir, kind=kind)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
