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


# CPU flags of native bf16 arithmetic (Linux /proc/cpuinfo names) and how they are reported.
NATIVE_BF16_FLAGS = {"amx_bf16": "AMX-BF16", "avx512_bf16": "AVX512-BF16"}
# bf16 is chosen when the probe's bf16 matmul takes at most this share of the fp32 one's time: autocast adds
# casts and keeps element-wise work (norms, softmax, the loss) in fp32, so a GEMM barely faster does not pay.
BF16_MAX_TIME_RATIO = 0.75


def cpu_bf16_flags() -> list[str]:
    """The native bf16 instruction sets this CPU reports (empty where it has none, or off Linux)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return [label for flag, label in NATIVE_BF16_FLAGS.items() if flag in flags]


def _best_matmul_s(pairs: list[tuple[Any, Any]], seconds: float) -> list[float]:
    """The best time of each ``a @ b``, the products taken in turn for ``seconds`` in all: another process
    taking the cores then slows all of them alike (timed one after the other, a busy spell during one of them
    once made bf16 look 2.25x slower than fp32 on a CPU where it is 6x faster)."""
    import time

    for a, b in pairs:
        for _ in range(2):
            a @ b
    best = [float("inf")] * len(pairs)
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        for k, (a, b) in enumerate(pairs):
            t = time.perf_counter()
            a @ b
            best[k] = min(best[k], time.perf_counter() - t)
    return best


def cpu_precision_probe(model_config: dict | None = None, *, seconds: float = 0.15) -> dict[str, Any]:
    """Whether this CPU trains faster in bf16: native bf16 instructions, then a timed model-shaped matmul.

    The matmul is (512 tokens x hidden) @ (hidden x intermediate) of the model, at least SmolLM2-135M's 576 x 1536
    (smaller products time the call overhead, and their verdict would flip from run to run), the two taken in turn
    for 2 x ``seconds``, best of each, on the threads torch uses. Without native bf16 the CPU emulates it, which is slower than fp32
    (measured over 5x with checkpointing), so nothing is timed.
    """
    import torch

    dims = (model_config or {}).get("text_config") or model_config or {}
    hidden = max(576, int(dims.get("hidden_size") or 0))
    inter = max(1536, int(dims.get("intermediate_size") or 4 * hidden))
    flags = cpu_bf16_flags()
    out: dict[str, Any] = {"native_bf16": flags, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                           "matmul": f"512x{hidden}x{inter}"}
    if not flags:
        out.update(bf16=False, reason="no native bf16 on this CPU (neither AVX512-BF16 nor AMX): fp32")
        return out
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(512, hidden, generator=generator)
    b = torch.randn(hidden, inter, generator=generator)
    fp32_s, bf16_s = _best_matmul_s([(a, b), (a.bfloat16(), b.bfloat16())], 2 * seconds)
    ratio = bf16_s / fp32_s
    flops = 2 * 512 * hidden * inter
    out.update(fp32_gflops=round(flops / fp32_s / 1e9, 1), bf16_gflops=round(flops / bf16_s / 1e9, 1),
               bf16_time_ratio=round(ratio, 3), bf16=ratio <= BF16_MAX_TIME_RATIO)
    verdict = "bf16" if out["bf16"] else "fp32"
    out["reason"] = (f"{' and '.join(flags)}; the probe's bf16 matmul took {ratio:.2f}x the time of fp32 "
                     f"({out['bf16_gflops']:.0f} vs {out['fp32_gflops']:.0f} GFLOP/s; bf16 from "
                     f"{BF16_MAX_TIME_RATIO:g}x): {verdict}")
    return out


def precision_plan(device: str, setting: bool | str, model_config: dict | None = None) -> dict[str, Any]:
    """The compute dtype of a run and why: ``setting`` is the ``bf16`` parameter (True, False or "auto").

    True: bf16 (refused on a GPU without bf16); False: fp32 everywhere; "auto": on CUDA bf16, or fp16 without
    bf16 support; on CPU what ``cpu_precision_probe`` finds faster.
    """
    if setting is True:
        if device == "cuda" and not bf16_supported(device):
            raise TrainingError(DEVICE_UNAVAILABLE, "bf16=true, but this GPU has no bf16 support; use bf16=auto "
                                "(fp16) or bf16=false (fp32).")
        return {"dtype": "bfloat16", "setting": True, "reason": "bf16=true (given)"}
    if setting is False:
        return {"dtype": "float32", "setting": False, "reason": "bf16=false (given): fp32"}
    if device == "cuda":
        if bf16_supported(device):
            return {"dtype": "bfloat16", "setting": "auto", "reason": "CUDA with bf16 support"}
        return {"dtype": "float16", "setting": "auto", "reason": "CUDA without bf16 support: fp16"}
    probe = cpu_precision_probe(model_config)
    return {"dtype": "bfloat16" if probe["bf16"] else "float32", "setting": "auto",
            "reason": f"CPU probe: {probe['reason']}", "probe": probe}


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
        info.update(name=name, threads=torch.get_num_threads(), allocator=allocator_in_use())
    return info


# Where Debian/Ubuntu (libjemalloc2), Fedora/RHEL (jemalloc) and Homebrew put jemalloc; the loader's own search
# path is asked first (ctypes.util.find_library).
JEMALLOC_PATHS = ("/usr/lib/x86_64-linux-gnu/libjemalloc.so.2", "/usr/lib/aarch64-linux-gnu/libjemalloc.so.2",
                  "/usr/lib64/libjemalloc.so.2", "/usr/lib/libjemalloc.so.2", "/usr/local/lib/libjemalloc.so.2")


def allocator_library(setting: str) -> str | None:
    """The malloc library a job's child should preload for ``setting`` (``JOB_CHILD_ALLOCATOR``): ``jemalloc``
    (found on this host, else ``None``: the system's malloc), ``system`` (``None``) or a path to a shared library.

    Why: PyTorch's CPU tensors come from malloc, and glibc's keeps the freed blocks of each step's differently
    sized activations, so a training child's resident memory grows step after step: SmolLM2 at batch 8 peaked at
    6.3 GiB with glibc and 4.4 GiB with jemalloc, which also trained 3 % faster (benchmarks/RESULTS.md, "Memory").
    """
    if setting == "system":
        return None
    if setting != "jemalloc":
        return setting if Path(setting).is_file() else None
    import ctypes.util

    found = ctypes.util.find_library("jemalloc")
    if found:
        for folder in ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib",
                       "/usr/local/lib"):
            if (Path(folder) / found).is_file():
                return str(Path(folder) / found)
    return next((p for p in JEMALLOC_PATHS if Path(p).is_file()), None)


def allocator_in_use() -> str:
    """``jemalloc`` when this process runs on it (preloaded), else ``system``."""
    with contextlib.suppress(OSError):
        if "libjemalloc" in Path("/proc/self/maps").read_text():
            return "jemalloc"
    return "system"


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
