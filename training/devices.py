"""Which device training would run on, and how much memory it offers.

Kept out of the qcluster parent's hot path: CUDA is only touched here on demand (the web process at
task creation, the child process at run time), never at import.
"""

from __future__ import annotations

from functools import lru_cache

from django.conf import settings


@lru_cache(maxsize=1)
def detect_device() -> str:
    wanted = settings.TRAINING_DEVICE
    if wanted in ("cpu", "cuda"):
        return wanted
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except Exception:  # pragma: no cover - a broken CUDA install means CPU
        return "cpu"


def available_memory_bytes(device: str) -> int:
    """Memory a new run may use: free RAM on CPU, the GPU's total memory on CUDA (runs are one per GPU)."""
    override = settings.TRAINING_MEMORY_LIMIT_BYTES
    if override:
        return int(override)
    if device == "cuda":
        import torch

        return int(torch.cuda.get_device_properties(0).total_memory)
    import psutil

    return int(psutil.virtual_memory().available)


def gpu_count() -> int:
    """CUDA GPUs this host shows (0 on CPU, or on a host that plans for CUDA without having a GPU)."""
    if detect_device() != "cuda":
        return 0
    import torch

    return torch.cuda.device_count()


def gpu_memory_gb() -> float | None:
    if detect_device() != "cuda":
        return None
    return available_memory_bytes("cuda") / 1024**3
