"""Small helpers of the reliability suite."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path


def pid_alive(pid: int | None) -> bool:
    """True while ``pid`` runs (a zombie counts as gone)."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def safetensors_header(path: Path) -> dict:
    with open(path, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(n))
    header.pop("__metadata__", None)
    return {name: (v["dtype"], tuple(v["shape"])) for name, v in header.items()}


def adapter_format(folder: str | Path) -> dict:
    """What makes two adapter folders interchangeable for PEFT: the files, the LoRA configuration and every
    tensor's name, dtype and shape (not the values, nor paths and timestamps)."""
    folder = Path(folder)
    config = json.loads((folder / "adapter_config.json").read_text())
    config.pop("base_model_name_or_path", None)
    config.pop("revision", None)
    for key in ("target_modules", "modules_to_save"):  # PEFT writes these sets in no fixed order
        if isinstance(config.get(key), list):
            config[key] = sorted(config[key])
    return {"files": sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()),
            "config": config, "tensors": safetensors_header(folder / "adapter_model.safetensors")}
