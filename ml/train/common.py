"""What every ``transformers.Trainer``-based recipe shares (plain module; no Django): the causal LM
(``ml.train.sft``), the preference methods (``ml.train.preference``) and the classifier (``ml.train.classifier``).

- ``HooksBridge``: the ``TrainerCallback`` that turns Trainer events into ``ml.train.hooks.Hooks`` calls (progress,
  metrics, checkpoints) and the host's cancel/pause answers into Trainer control flags;
- ``AtomicCheckpoints``: a Trainer mixin whose checkpoints are ``step-N`` folders published atomically with a
  manifest (``ml.train.checkpoints``) and rotated, keeping the run's best one where it tracks one;
- ``ListDataset``: ready items as a torch dataset (with the filler item of a short last batch on several ranks);
- the resume checks (a complete checkpoint, the same parameters, the same data) and the ending of a run stopped
  before it trained.

The device, the library versions and the loading of tokenizers and models are ``ml.probe``'s and ``ml.model``'s.
It imports torch and transformers: web-process code must not import it.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

# see ml/train/sft.py: must be set before torch is first imported
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from transformers import Trainer, TrainerCallback  # noqa: E402
from transformers.trainer_utils import SaveStrategy  # noqa: E402

from ml.errors import CHECKPOINT_INVALID, TrainingError  # noqa: E402
from ml.train import checkpoints as ckpt  # noqa: E402
from ml.train.hooks import Hooks  # noqa: E402

# ---------------------------------------------------------------------------------------------------------------
# Hooks


class HooksBridge(TrainerCallback):
    """Turns Trainer events into ``Hooks`` calls and ``should_stop`` answers into control flags.

    A cancel stops after the current micro-batch and saves and evaluates nothing more (not even the end-of-epoch
    save and evaluation of a run that does both per epoch). A pause stops at the end of the current optimizer step
    and saves a checkpoint there; a pause on the last step of an epoch, in a run that evaluates and saves per epoch,
    lets that epoch's evaluation run first, so the checkpoint holds it as an uninterrupted run's would. A pause on
    the run's very last step lets the run finish. Subclasses name the metrics (``metrics_from_logs``), or report
    them their own way (``on_log``). Several ranks: the host's ``Hooks`` are wrapped in
    ``ml.train.distributed.GroupHooks`` before they reach the bridge (rank 0 reports, stop answers broadcast).
    """

    def __init__(self, hooks: Hooks):
        self.hooks = hooks
        self.stop_reason: str | None = None
        self.history: list[dict] = []
        self.last_metrics: dict[str, float] = {}
        self.final_logs: dict[str, float] = {}
        self._t0 = 0.0
        self._tokens0 = 0
        self._step0 = 0
        self._saved_mid_epoch = False

    def on_train_begin(self, args, state, control, **kwargs):
        self._t0 = time.monotonic()
        self._tokens0 = state.num_input_tokens_seen
        self._step0 = state.global_step
        self.hooks.on_start(state.max_steps)

    def _check(self, args, state, control, step_end: bool) -> None:
        request = self.hooks.should_stop()
        if request == "cancel":
            self.stop_reason = "cancel"
            control.should_training_stop = True
            control.should_save = False
            control.should_evaluate = False
        elif request == "pause" and step_end and state.global_step < state.max_steps:
            # pause only at an optimizer-step boundary, so the checkpoint is a consistent state
            self.stop_reason = "pause"
            control.should_training_stop = True
            if _at_epoch_end(state) and args.save_strategy == SaveStrategy.EPOCH:
                return  # on_epoch_end asks for this epoch's evaluation and checkpoint, as without a pause
            self._saved_mid_epoch = True
            control.should_save = True
            control.should_evaluate = False

    def on_substep_end(self, args, state, control, **kwargs):
        self._check(args, state, control, step_end=False)

    def on_step_end(self, args, state, control, **kwargs):
        elapsed = max(time.monotonic() - self._t0, 1e-9)
        done = state.global_step - self._step0
        tokens = int(state.num_input_tokens_seen)
        tps = (tokens - self._tokens0) / elapsed
        eta = elapsed / done * max(state.max_steps - state.global_step, 0) if done > 0 else None
        self.hooks.on_progress(state.global_step, state.max_steps, float(state.epoch or 0.0), tokens, tps, eta)
        self._check(args, state, control, step_end=True)

    def on_epoch_end(self, args, state, control, **kwargs):
        # The Trainer ends the epoch it broke out of; its per-epoch log, evaluation and save would run on a
        # cancelled run, or again after a pause's checkpoint.
        if self.stop_reason == "cancel" or self._saved_mid_epoch:
            control.should_log = control.should_evaluate = control.should_save = False

    def metrics_from_logs(self, logs: dict) -> dict[str, float]:
        """Our names for the metrics of one Trainer log (``train_loss``, ``valid_loss``, ...)."""
        raise NotImplementedError

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        if "train_loss" in logs:  # the summary logged once, at the end of train()
            self.final_logs = {k: float(v) for k, v in logs.items() if isinstance(v, (int, float))}
        metrics = self.metrics_from_logs(logs)
        if metrics:
            if logs.get("epoch") is not None:
                metrics["epoch"] = float(logs["epoch"])
            self.last_metrics.update(metrics)
            self.history.append({"step": state.global_step, **metrics})
            self.hooks.on_metrics(state.global_step, metrics)


def _at_epoch_end(state) -> bool:
    epoch = float(state.epoch or 0.0)
    return epoch > 0 and abs(epoch - round(epoch)) < 1e-6


def renamed(logs: dict, names: Mapping[str, str]) -> dict[str, float]:
    """``logs[src]`` as ``dst`` for each numeric entry of ``names``."""
    return {dst: float(logs[src]) for src, dst in names.items()
            if isinstance(logs.get(src), (int, float)) and not isinstance(logs.get(src), bool)}


# ---------------------------------------------------------------------------------------------------------------
# Checkpoints


class AtomicCheckpoints:
    """Trainer checkpoints as ``step-N`` folders published atomically (``ml.train.checkpoints.publish``), rotated
    to the newest ``keep_checkpoints`` (and the best one, when the run tracks a best model).

    Mixed in before ``Trainer`` (or a TRL trainer). ``recipe`` holds ``checkpoints_dir``, ``run_dir``,
    ``keep_checkpoints``, ``params`` and ``data_fingerprint`` (both written into the manifest, for
    ``check_resume``), and optionally ``on_checkpoint(step, path)``. On several ranks every rank takes part in the
    save (FSDP gathers whole tensors) and rank 0 publishes.
    """

    recipe: dict

    def __init__(self, *args, recipe: dict, **kwargs):
        self.recipe = recipe
        self._staging: Path | None = None
        self.on_checkpoint = recipe.get("on_checkpoint")
        super().__init__(*args, **kwargs)

    def _get_output_dir(self, trial=None) -> str:
        if self._staging is not None:
            return str(self._staging)
        return super()._get_output_dir(trial)

    def _save_checkpoint(self, model, trial) -> None:
        step = self.state.global_step
        checkpoints_dir = Path(self.recipe["checkpoints_dir"])
        final = checkpoints_dir / f"step-{step}"
        if self.args.should_save and final.exists():
            if ckpt.checkpoint_problem(final) is None:
                return  # this step is already saved (a pause right after a scheduled save)
            shutil.rmtree(final)
        staging = ckpt.temp_sibling(final)
        staging.mkdir(parents=True)
        best = None
        try:
            self._staging = staging
            try:
                # Trainer's save, not a TRL subclass's: TRL's also writes a model card into the output folder
                Trainer._save_checkpoint(self, model, trial)
            finally:
                self._staging = None
            if not self.args.should_save:
                return  # DDP: rank 0 publishes (other ranks' RNG states are not kept; resume reseeds them)
            staged = staging / f"checkpoint-{step}"
            if self.state.best_global_step:
                # Trainer names the best checkpoint inside its output folder, here the staging one: name the
                # published folder instead, in the state kept in memory and in the one saved for a resume.
                best = checkpoints_dir / f"step-{self.state.best_global_step}"
                self.state.best_model_checkpoint = str(best)
                self.state.save_to_json(str(staged / ckpt.TRAINER_STATE))
            ckpt.publish(staged, final, step=step, params=self.recipe["params"], data=self.recipe["data_fingerprint"],
                         precision=self.recipe.get("precision"))
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        ckpt.rotate_checkpoints(Path(self.recipe["run_dir"]), self.recipe["keep_checkpoints"],
                                protect=[final] + ([best] if best is not None else []))
        if self.on_checkpoint is not None:
            self.on_checkpoint(step, final)


class ListDataset(torch.utils.data.Dataset):
    """Ready items (dicts of token ids and labels) as a torch dataset; index ``len(items)`` is ``pad``, the filler
    of a short last batch on several ranks."""

    def __init__(self, items: list[dict], pad: dict | None = None):
        self.items = items
        self.pad = pad

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        if i == len(self.items) and self.pad is not None:
            return self.pad
        return self.items[i]


# ---------------------------------------------------------------------------------------------------------------
# Resume, and a run stopped before training


def check_resume_folder(resume: Path | None) -> None:
    """A checkpoint to resume from must be complete and readable."""
    if resume is not None:
        problem = ckpt.checkpoint_problem(resume)
        if problem:
            raise TrainingError(CHECKPOINT_INVALID, f"Cannot resume from {resume}: {problem}.")


def check_resume(resume: Path, params, fingerprint: str, invariants: Iterable[str]) -> None:
    """Refuse to resume from a checkpoint saved with other parameters (``invariants``) or on other data."""
    manifest = json.loads((resume / ckpt.MANIFEST).read_text(encoding="utf-8"))
    saved = manifest.get("params") or {}
    changed = [k for k in invariants if k in saved and saved[k] != getattr(params, k)]
    if changed:
        raise TrainingError(CHECKPOINT_INVALID, f"The checkpoint {resume.name} was saved with different "
                            f"parameters ({', '.join(changed)}); resuming would not continue the same run.")
    if manifest.get("data", {}).get("fingerprint") not in (None, fingerprint):
        raise TrainingError(CHECKPOINT_INVALID, f"The checkpoint {resume.name} was trained on different data.")


def resumed_precision(resume: Path | None, plan: Callable[[], dict]) -> dict:
    """The compute precision of a run: ``plan()`` (the probe, for ``bf16: auto``), or on resume the one the
    checkpoint was trained in — a probe timed under other load could choose the other dtype, and the resumed run
    would not continue the same computation."""
    if resume is not None:
        saved = json.loads((resume / ckpt.MANIFEST).read_text(encoding="utf-8")).get("precision")
        if saved:
            return {**saved, "reason": f"as the run it resumes: {saved.get('reason', '')}"}
    return plan()


@dataclass
class StoppedEarly:
    """A cancel or pause that arrived while the data was prepared: the run ends with nothing trained."""

    status: Literal["cancelled", "paused"]
    global_step: int  # the checkpoint's step (0 without one)


def stop_before_training(hooks: Hooks, resume: Path | None) -> StoppedEarly | None:
    early = hooks.should_stop()
    if early not in ("cancel", "pause"):
        return None
    step = 0
    if resume is not None:
        step = json.loads((resume / ckpt.TRAINER_STATE).read_text(encoding="utf-8")).get("global_step", 0)
    return StoppedEarly(status="cancelled" if early == "cancel" else "paused", global_step=step)
