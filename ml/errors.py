"""Classified training failures (plain module, no Django, no torch import).

The worker stores ``code`` and ``message`` on the task; the codes are stable identifiers the admin, the
API and the tests rely on. Cancel and pause are not errors: ``run_training`` returns them as a status.
"""

from __future__ import annotations

import errno

OUT_OF_MEMORY = "out_of_memory"
# The batch that would run does not fit what the task was admitted with, or the memory available now.
INSUFFICIENT_MEMORY = "insufficient_memory"
NAN_LOSS = "nan_loss"
DATASET_ERROR = "dataset_error"
MODEL_MISSING = "model_missing"
# The files are there but the recipe cannot train them (an architecture or attention it does not support).
UNSUPPORTED_MODEL = "unsupported_model"
DISK_FULL = "disk_full"
CHECKPOINT_INVALID = "checkpoint_invalid"
DEVICE_UNAVAILABLE = "device_unavailable"
INVALID_PARAMS = "invalid_params"
INTERNAL = "internal"

CODES = (OUT_OF_MEMORY, INSUFFICIENT_MEMORY, NAN_LOSS, DATASET_ERROR, MODEL_MISSING, UNSUPPORTED_MODEL, DISK_FULL, CHECKPOINT_INVALID,
         DEVICE_UNAVAILABLE, INVALID_PARAMS, INTERNAL)

OOM_ADVICE = "Lower the batch size or the max sequence length, or use quantization=nf4 (4-bit QLoRA)."


class TrainingError(Exception):
    """A training failure with a stable ``code`` (one of ``CODES``) and a readable ``message``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"

    def to_dict(self) -> dict:
        return {"code": self.code, "message": self.message}


def _is_oom(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    name = type(exc).__name__
    if name in ("OutOfMemoryError", "CUDAOutOfMemoryError"):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and (
        "out of memory" in text.lower()
        or "DefaultCPUAllocator: can't allocate memory" in text
        or "CUBLAS_STATUS_ALLOC_FAILED" in text
    )


def _is_disk_full(exc: BaseException) -> bool:
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    # torch.save and safetensors report a full disk as RuntimeError / SafetensorError, not OSError
    text = str(exc)
    return "No space left on device" in text or "file write failed" in text


def classify(exc: BaseException) -> TrainingError:
    """Map any exception raised while training onto a ``TrainingError``."""
    if isinstance(exc, TrainingError):
        return exc
    if _is_oom(exc):
        return TrainingError(OUT_OF_MEMORY, f"Out of memory. {OOM_ADVICE}")
    if _is_disk_full(exc):
        where = getattr(exc, "filename", None) or "while writing"
        return TrainingError(DISK_FULL, f"The disk is full ({where}). Free space in the data directory (old "
                             "checkpoints, exports) and resume the task.")
    return TrainingError(INTERNAL, f"{type(exc).__name__}: {exc}")
