"""What the training loop tells its host, and asks it (plain module; no Django, no torch import).

The worker's child process implements ``Hooks`` to write progress, events, checkpoint rows and the
heartbeat, and to read the task's cancel/pause flags. ``NullHooks`` does nothing; subclass it and
override what you need.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

StopRequest = Literal["cancel", "pause"] | None


@runtime_checkable
class Hooks(Protocol):
    def on_start(self, total_steps: int) -> None:
        """Training starts (or resumes); ``total_steps`` optimizer steps in the whole schedule."""

    def on_progress(self, step: int, total_steps: int, epoch: float, tokens_seen: int, tokens_per_s: float,
                    eta_s: float | None) -> None:
        """After every optimizer step. ``tokens_seen``: non-padding tokens trained so far (carries over a resume);
        ``tokens_per_s``: this session's throughput; ``eta_s``: seconds left at that pace."""

    def on_metrics(self, step: int, metrics: dict[str, float]) -> None:
        """Every log: ``train_loss``, ``learning_rate``, ``train_mean_token_accuracy``, ``grad_norm``; after an
        evaluation: ``valid_loss``, ``valid_mean_token_accuracy``."""

    def on_checkpoint(self, step: int, path: Path, metrics: dict[str, float]) -> None:
        """A complete checkpoint now exists at ``path`` (it was written to a temp folder and renamed)."""

    def on_message(self, level: str, message: str, data: dict | None = None) -> None:
        """Something worth a line in the task's log (model loaded, data report, resumed from ...)."""

    def should_stop(self) -> StopRequest:
        """Checked after every micro-batch. ``"cancel"``: stop now, save nothing more; ``"pause"``: finish the
        current optimizer step, save a checkpoint, stop."""


class NullHooks:
    """Hooks that ignore everything and never stop."""

    def on_start(self, total_steps: int) -> None:
        pass

    def on_progress(self, step: int, total_steps: int, epoch: float, tokens_seen: int, tokens_per_s: float,
                    eta_s: float | None) -> None:
        pass

    def on_metrics(self, step: int, metrics: dict[str, float]) -> None:
        pass

    def on_checkpoint(self, step: int, path: Path, metrics: dict[str, float]) -> None:
        pass

    def on_message(self, level: str, message: str, data: dict | None = None) -> None:
        pass

    def should_stop(self) -> StopRequest:
        return None
