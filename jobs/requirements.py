"""What a job needs of the worker that runs it: a device kind, a number of GPUs, GPU memory, labels.

A job's ``requirements`` JSON is validated here (the API schemas and every kind's create service share
``requirements_parse``) and matched against a worker's recorded hardware by ``requirements_unmet``: the
claim skips a job its worker cannot run, and the job's page says which live worker could.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, model_validator

from core.errors import ApplicationError

if TYPE_CHECKING:  # jobs.models imports nothing of this module; only the type is needed here
    from jobs.models import Worker

GiB = 1024**3
Label = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64)]


class Requirements(BaseModel):
    """Empty: any worker. ``gpus`` or ``gpu_memory_gb`` imply ``device="cuda"``; ``gpu_memory_gb`` is per GPU."""

    model_config = ConfigDict(extra="forbid")

    device: Literal["cpu", "cuda"] | None = None
    gpus: int | None = Field(None, ge=1, le=64, description="CUDA GPUs the worker must have (default 1 on cuda).")
    gpu_memory_gb: float | None = Field(None, gt=0, le=100_000, description="Total memory of each of those GPUs.")
    labels: list[Label] = Field(default_factory=list, max_length=32,
                                description="Labels the worker must carry (WORKER_LABELS), all of them.")

    @model_validator(mode="after")
    def _gpus_mean_cuda(self) -> Requirements:
        if self.device == "cpu" and (self.gpus or self.gpu_memory_gb):
            raise ValueError("a job that requires device cpu cannot require GPUs")
        if self.gpus or self.gpu_memory_gb:
            self.device = "cuda"
        return self

    @property
    def gpu_count(self) -> int:
        return (self.gpus or 1) if self.device == "cuda" else 0

    def to_dict(self) -> dict:
        """What the job row stores: only what was asked for (``{}`` for "any worker")."""
        return self.model_dump(exclude_defaults=True)

    def describe(self) -> str:
        parts = []
        if self.device == "cuda":
            gpus = f"{self.gpu_count} CUDA GPU{'s' if self.gpu_count > 1 else ''}"
            if self.gpu_memory_gb:
                gpus += f" with {self.gpu_memory_gb:g} GiB{' each' if self.gpu_count > 1 else ''}"
            parts.append(gpus)
        elif self.device == "cpu":
            parts.append("a CPU worker")
        if self.labels:
            parts.append("labels " + ", ".join(self.labels))
        return " and ".join(parts) or "any worker"


def requirements_parse(data: object, *, param: str = "requirements") -> Requirements:
    """Validate user JSON; an error names the offending field (``requirements.gpus``)."""
    if isinstance(data, Requirements):
        return data
    if data in (None, ""):
        data = {}
    if not isinstance(data, dict):
        raise ApplicationError("requirements must be a JSON object.", code="invalid_parameter", param=param)
    try:
        return Requirements.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(part) for part in first.get("loc", ()) if part != "__root__")
        field = f"{param}.{loc}" if loc else param
        message = first.get("msg", "invalid value").removeprefix("Value error, ")
        raise ApplicationError(f"{field}: {message}", code="invalid_parameter", param=field,
                               details=[{"param": f"{param}.{'.'.join(str(p) for p in e.get('loc', ()))}".rstrip("."),
                                         "message": e.get("msg")} for e in exc.errors()]) from None


def requirements_unmet(requirements: Requirements | dict, worker: Worker) -> str | None:
    """None when ``worker`` can run a job with these requirements, else what it lacks (one short phrase)."""
    req = requirements_parse(requirements)
    if req.device == "cpu" and worker.device != "cpu":
        return f"it trains on {worker.device}, not cpu"
    if req.device == "cuda":
        if worker.device != "cuda":
            return "it has no CUDA GPU" if not worker.gpus else "its TRAINING_DEVICE is cpu"
        wanted = (req.gpu_memory_gb or 0) * GiB
        fitting = [m for m in worker.gpu_memory_bytes if m >= wanted]
        if len(fitting) < req.gpu_count:
            have = ", ".join(f"{m / GiB:.0f} GiB" for m in worker.gpu_memory_bytes)
            return f"it has {len(worker.gpus)} GPU{'s' if len(worker.gpus) != 1 else ''} ({have})"
    missing = [label for label in req.labels if label not in (worker.labels or [])]
    if missing:
        return f"it lacks the label{'s' if len(missing) > 1 else ''} {', '.join(missing)}"
    return None
