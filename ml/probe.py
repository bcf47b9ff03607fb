"""What this host offers a run: the device, usable CPU cores, bf16 support, library versions, peak memory.

One probe for every caller: the SFT and preference recipes, the classifier, evaluation, the model server, the
worker's hardware report and the dashboard. Importing it loads no torch (the queue and web processes use
``available_cpus``); the functions that ask torch import it when called.
"""

from __future__ import annotations

import contextlib
import math
import os
import platform
import resource
from pathlib import Path
from typing import Any

from ml.errors import DEVICE_UNAVAILABLE, TrainingError


def available_cpus() -> int:
    """CPU cores this process may use (affinity and cgroup quota)."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        n = os.cpu_count() or 1
    with contextlib.suppress(OSError, ValueError):
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            n = min(n, max(1, math.floor(int(quota) / int(period))))
    return max(1, n)


def resolve_device(device: str) -> str:
    """``auto`` → ``cuda`` when a GPU is visible, else ``cpu``; ``cuda`` (or ``cuda:N``) without one is refused."""
    import torch  # only when asked: importing this module must not load torch

    if device in ("", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" or device.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise TrainingError(DEVICE_UNAVAILABLE, f"A CUDA GPU was requested ({device!r}) but none is available "
                                "on this host.")
        return device
    if device != "cpu":
        raise TrainingError(DEVICE_UNAVAILABLE, f"Unknown device {device!r}.")
    return device


def bf16_supported(device: str) -> bool:
    """Whether the device computes in bfloat16 natively (CUDA only here: on CPUs without AMX it is slower)."""
    import torch

    return device.startswith("cuda") and torch.cuda.is_bf16_supported()


def compute_dtype(device: str):
    """The dtype a model computes in on ``device``: bf16 (fp16 without bf16 support) on CUDA, fp32 on CPU."""
    import torch

    if device.startswith("cuda"):
        return torch.bfloat16 if bf16_supported(device) else torch.float16
    return torch.float32


def library_versions() -> dict[str, str]:
    import accelerate
    import peft
    import torch
    import transformers

    versions = {"python": platform.python_version(), "torch": torch.__version__,
                "transformers": transformers.__version__, "peft": peft.__version__,
                "accelerate": accelerate.__version__}
    for name in ("bitsandbytes", "trl"):
        with contextlib.suppress(Exception):
            versions[name] = __import__(name).__version__
    return versions


def device_info(device: str) -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"device": device, "host": platform.node()}
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        info.update(name=props.name, memory_gb=round(props.total_memory / 1024**3, 1),
                    bf16=bf16_supported(device), cuda=torch.version.cuda, gpus=torch.cuda.device_count())
    else:
        name = platform.processor()
        with contextlib.suppress(OSError):
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
        info.update(name=name, threads=torch.get_num_threads())
    return info


def peak_memory() -> dict[str, int]:
    import torch

    out = {"peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["peak_gpu_bytes"] = int(torch.cuda.max_memory_allocated())
    return out


def use_available_cpus(device: str) -> None:
    """On CPU, train on every core this process may use (torch's default counts the host's, not the cgroup's);
    the ranks of one run on this host (torchrun's ``LOCAL_WORLD_SIZE``) share them. For training children only:
    the web process keeps torch's own thread count."""
    import torch

    if device == "cpu":
        torch.set_num_threads(max(1, available_cpus() // int(os.environ.get("LOCAL_WORLD_SIZE") or 1)))
