"""One training run on several processes (torchrun ranks): who this process is, its process group, and the hooks
each rank gets.

Plain module (no Django); torch is imported by the functions that use it. torchrun tells every rank its place in
the environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``); a process started without it
is a group of one and nothing here changes what it does.

Only rank 0 reports: the other ranks' hooks write nothing. Rank 0 alone reads the host's stop request (cancel,
pause), and sends its answer to every rank each time the loop asks, so all ranks stop after the same micro-batch
and none is left waiting in a collective for a rank that already stopped.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ml.train.hooks import Hooks, NullHooks, StopRequest


class GroupFailed(Exception):  # noqa: N818 - an ending, not this rank's error
    """Another rank of the group failed (its connection broke in a collective operation): this rank's run
    cannot go on, and its error is not the run's; the launcher stops the group and the run is recovered."""


# What gloo and NCCL say when a peer is gone (torch raises them as RuntimeError or DistError).
PEER_GONE = ("Connection closed by peer", "Connection reset by peer", "Read error", "Broken pipe", "NCCL error",
             "ProcessGroupNCCL", "ProcessGroupGloo")


def peer_failure(exc: BaseException) -> bool:
    """Whether ``exc`` (or its cause) is a collective operation that failed because another rank is gone."""
    import torch.distributed as dist

    while exc is not None:
        if isinstance(exc, dist.DistError) or (isinstance(exc, RuntimeError)
                                               and any(words in str(exc) for words in PEER_GONE)):
            return True
        exc = exc.__cause__
    return False


STOP_CODES: dict[StopRequest, int] = {None: 0, "cancel": 1, "pause": 2}
STOP_REQUESTS = {code: request for request, code in STOP_CODES.items()}


@dataclass(frozen=True)
class Group:
    """This process's place in its run: rank ``rank`` of ``world_size``, ``local_rank`` of the ranks on this host."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def current_group() -> Group:
    """The group torchrun (or accelerate launch) started this process in; a group of one otherwise."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    return Group(rank=int(os.environ.get("RANK", 0)), world_size=world,
                 local_rank=int(os.environ.get("LOCAL_RANK", 0)),
                 local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", world)))


def backend_for(device: str) -> str:
    return "nccl" if device == "cuda" else "gloo"


def init_group(group: Group, device: str) -> str:
    """Join the process group (NCCL on CUDA, gloo on CPU) unless already joined; returns its backend ("" alone).

    Joined here, before the Trainer exists, because the stop request is exchanged before training starts too;
    accelerate then uses this group.
    """
    if not group.distributed:
        return ""
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        if device == "cuda":
            torch.cuda.set_device(group.local_rank)
        dist.init_process_group(backend=backend_for(device))
    return str(dist.get_backend())


def group_devices(group: Group, device: str) -> list[str]:
    """The devices the ranks train on (one GPU per rank on CUDA: ``cuda:<local rank>``, by name)."""
    if device != "cuda":
        return [device] * group.world_size
    import torch

    return [f"cuda:{i} {torch.cuda.get_device_properties(i).name}" for i in range(group.local_world_size)]


class GroupHooks:
    """The hooks of one rank: rank 0's are the host's, the others' write nothing; ``should_stop`` is rank 0's
    answer on every rank (a broadcast each time it is asked, which every rank does at the same points)."""

    def __init__(self, hooks: Hooks, group: Group, device: str) -> None:
        self.group = group
        self.hooks: Hooks = hooks if group.is_main else NullHooks()
        self.device = f"cuda:{group.local_rank}" if device == "cuda" else "cpu"

    def on_start(self, total_steps: int) -> None:
        self.hooks.on_start(total_steps)

    def on_progress(self, step, total_steps, epoch, tokens_seen, tokens_per_s, eta_s) -> None:
        self.hooks.on_progress(step, total_steps, epoch, tokens_seen, tokens_per_s, eta_s)

    def on_metrics(self, step: int, metrics: dict[str, float]) -> None:
        self.hooks.on_metrics(step, metrics)

    def on_checkpoint(self, step: int, path: Path, metrics: dict[str, float]) -> None:
        self.hooks.on_checkpoint(step, path, metrics)

    def on_message(self, level: str, message: str, data: dict | None = None) -> None:
        fn = getattr(self.hooks, "on_message", None)
        if fn is not None:
            fn(level, message, data)

    def should_stop(self) -> StopRequest:
        answer = self.hooks.should_stop() if self.group.is_main else None
        if not self.group.distributed:
            return answer
        import torch
        import torch.distributed as dist

        code = torch.tensor([STOP_CODES.get(answer, 0)], dtype=torch.int64, device=self.device)
        dist.broadcast(code, src=0)
        return STOP_REQUESTS[int(code.item())]
