"""Experiment tracking of a training run, as transformers ``TrainerCallback``s (plain module, no Django).

Every run writes TensorBoard event files under ``<run folder>/tensorboard`` (``tensorboard --logdir`` on the run
folder, or on DATA_DIR/runs for all of them): train loss, learning rate, token accuracy, gradient norm, epoch,
validation loss and accuracy, any other metric the trainer logs (preference rewards, say), tokens per second,
tokens seen and peak memory. When ``MLFLOW_TRACKING_URI`` is set the run is also logged to MLflow: the resolved
parameters, the same metrics, and the adapter's files once training completes. A resumed run appends to the same
TensorBoard folder and the same MLflow run. Tracking never fails a training run: a tracker that errors is
switched off with a warning.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.tensorboard import SummaryWriter
from transformers import TrainerCallback

log = logging.getLogger(__name__)

TENSORBOARD_DIR = "tensorboard"
MLFLOW_RUN_FILE = "mlflow_run.json"
DEFAULT_EXPERIMENT = "lora-studio"
# Trainer log keys and the tags they are written under (the rest: train/<key>, or eval/<key> for eval_<key>).
TAGS = {"loss": "train/loss", "learning_rate": "train/learning_rate",
        "mean_token_accuracy": "train/mean_token_accuracy", "grad_norm": "train/grad_norm", "epoch": "train/epoch",
        "eval_loss": "eval/loss", "eval_mean_token_accuracy": "eval/mean_token_accuracy"}
# The end-of-training summary the Trainer logs once (train_runtime, train_samples_per_second, ...).
SUMMARY_KEYS = {"train_runtime", "train_samples_per_second", "train_steps_per_second", "total_flos", "train_loss"}


def metric_tag(key: str) -> str:
    if key in TAGS:
        return TAGS[key]
    if key in SUMMARY_KEYS:
        return f"summary/{key.removeprefix('train_')}"
    if key.startswith("eval_"):
        return f"eval/{key.removeprefix('eval_')}"
    return f"train/{key}"


def peak_memory_bytes() -> float:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return float(torch.cuda.max_memory_allocated())
    return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)


def _flat(params: dict, prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in params.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        elif isinstance(value, list | tuple):
            out[f"{prefix}{key}"] = ",".join(map(str, value))
        else:
            out[f"{prefix}{key}"] = str(value)
    return out


class _Tracker(TrainerCallback):
    """What both trackers share: the metrics of each log, with throughput and memory added; errors disable it."""

    name = "tracker"

    def __init__(self) -> None:
        self.enabled = True
        self._t0 = 0.0
        self._tokens0 = 0

    def _guard(self, fn, *args) -> None:
        if not self.enabled:
            return
        try:
            fn(*args)
        except Exception as exc:  # noqa: BLE001 - tracking must never end a training run
            self.enabled = False
            log.warning("%s tracking switched off after an error: %s", self.name, exc)

    def on_train_begin(self, args, state, control, **kwargs):
        self._t0 = time.monotonic()
        self._tokens0 = int(state.num_input_tokens_seen or 0)
        self._guard(self.begin, state)

    def on_log(self, args, state, control, logs=None, **kwargs):
        values = {metric_tag(k): float(v) for k, v in (logs or {}).items()
                  if isinstance(v, int | float) and not isinstance(v, bool)}
        if not values:
            return
        elapsed = time.monotonic() - self._t0
        tokens = int(state.num_input_tokens_seen or 0)
        if elapsed > 0 and tokens:
            values["perf/tokens_per_second"] = (tokens - self._tokens0) / elapsed
            values["perf/tokens_seen"] = float(tokens)
        values["perf/peak_memory_bytes"] = peak_memory_bytes()
        self._guard(self.write, state.global_step, values)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        completed = state.max_steps > 0 and state.global_step >= state.max_steps
        self._guard(self.end, completed, model)

    def begin(self, state) -> None:
        raise NotImplementedError

    def write(self, step: int, values: dict[str, float]) -> None:
        raise NotImplementedError

    def end(self, completed: bool, model) -> None:
        raise NotImplementedError


class TensorBoardTracker(_Tracker):
    """Event files under ``<run folder>/tensorboard``; a resumed run adds a file to the same folder."""

    name = "TensorBoard"

    def __init__(self, log_dir: Path, params: dict, run_name: str) -> None:
        super().__init__()
        self.log_dir = Path(log_dir)
        self.params = params
        self.run_name = run_name
        self.writer: SummaryWriter | None = None

    def begin(self, state) -> None:
        self.writer = SummaryWriter(log_dir=str(self.log_dir), flush_secs=10)
        if state.global_step == 0:
            table = "\n".join(f"| {k} | {v} |" for k, v in _flat(self.params).items())
            self.writer.add_text("params", f"**{self.run_name}**\n\n| parameter | value |\n|---|---|\n{table}", 0)

    def write(self, step: int, values: dict[str, float]) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)
        self.writer.flush()

    def end(self, completed: bool, model) -> None:
        if self.writer is not None:
            self.writer.close()


class MLflowTracker(_Tracker):
    """One MLflow run per training task (a resumed run continues it): parameters, metrics, then the adapter."""

    name = "MLflow"

    def __init__(self, tracking_uri: str, run_dir: Path, params: dict, run_name: str, tags: dict[str, str]) -> None:
        super().__init__()
        self.tracking_uri = tracking_uri
        self.run_file = Path(run_dir) / MLFLOW_RUN_FILE
        self.params = params
        self.run_name = run_name
        self.tags = tags
        self.client = None
        self.run_id: str | None = None

    def begin(self, state) -> None:
        # MLflow is imported only for runs that use it: it takes seconds to import.
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=self.tracking_uri)
        if self.run_file.is_file():
            self.run_id = json.loads(self.run_file.read_text(encoding="utf-8"))["run_id"]
            self.client.update_run(self.run_id, status="RUNNING")
            return
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT
        experiment = self.client.get_experiment_by_name(name)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(name)
        run = self.client.create_run(experiment_id, run_name=self.run_name, tags=self.tags)
        self.run_id = run.info.run_id
        self.run_file.write_text(json.dumps({"run_id": self.run_id, "experiment_id": experiment_id,
                                             "tracking_uri": self.tracking_uri}), encoding="utf-8")
        params = [Param(k, v[:6000]) for k, v in _flat(self.params).items()]
        for start in range(0, len(params), 100):  # MLflow takes at most 100 parameters per batch
            self.client.log_batch(self.run_id, params=params[start:start + 100])

    def write(self, step: int, values: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in values.items()])

    def end(self, completed: bool, model) -> None:
        if self.client is None or self.run_id is None:
            return
        if completed and model is not None and hasattr(model, "peft_config"):
            with tempfile.TemporaryDirectory() as tmp:
                model.save_pretrained(tmp)
                self.client.log_artifacts(self.run_id, tmp, artifact_path="adapter")
        self.client.set_terminated(self.run_id, status="FINISHED" if completed else "KILLED")


def tracking_callbacks(run_dir: str | Path, params: Any, extra: dict | None = None) -> list[TrainerCallback]:
    """The trackers of one run: TensorBoard always, MLflow when ``MLFLOW_TRACKING_URI`` is set."""
    run_dir = Path(run_dir)
    values = params.to_dict() if hasattr(params, "to_dict") else dict(params)
    values.pop("auto", None)
    task = (extra or {}).get("task") or {}
    run_name = str(task.get("name") or run_dir.name)
    callbacks: list[TrainerCallback] = [TensorBoardTracker(run_dir / TENSORBOARD_DIR, values, run_name)]
    # The worker's child process has no Django settings to read here (a plain module); MLflow's own variable
    # decides, as it does for every MLflow client.
    uri = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if uri:
        tags = {f"lora_studio.task.{k}": str(v) for k, v in task.items()}
        callbacks.append(MLflowTracker(uri, run_dir, values, run_name, tags))
    return callbacks
