"""Experiment tracking of a real (tiny) training run: TensorBoard event files that tensorboard's own reader opens
with the expected tags, and, with MLFLOW_TRACKING_URI set, an MLflow run in a local file store with the parameters,
the metrics and the adapter."""

from __future__ import annotations

from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from ml.train.sft import RunSpec, run_training
from ml.train.tracking import MLFLOW_RUN_FILE, TENSORBOARD_DIR
from tests.training.tiny import chat_records

FAST = {"n_epochs": 2, "batch_size": 4, "learning_rate": 1e-2, "lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.0,
        "save_steps": 1000, "eval_steps": 2, "max_seq_length": 128}


def train(tiny_model_dir: Path, tmp: Path, **spec) -> Path:
    run_dir = tmp / "run"
    result = run_training(RunSpec(base_model_path=tiny_model_dir, train=chat_records(16), validation=chat_records(4),
                                  params=dict(FAST), run_dir=run_dir, adapter_dir=tmp / "adapter", device="cpu",
                                  summary_extra={"task": {"id": 1, "name": "faq-bot", "team": "alpha"}}, **spec))
    assert result.status == "succeeded"
    return run_dir


def test_tensorboard_event_files_hold_the_runs_metrics(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run_dir = train(tiny_model_dir, tmp_path)
    events = EventAccumulator(str(run_dir / TENSORBOARD_DIR))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/learning_rate", "train/mean_token_accuracy", "train/grad_norm", "eval/loss",
            "eval/mean_token_accuracy", "perf/tokens_per_second", "perf/peak_memory_bytes"} <= tags
    losses = events.Scalars("train/loss")
    assert [e.step for e in losses] == list(range(1, len(losses) + 1)) and len(losses) == 8
    assert events.Scalars("perf/peak_memory_bytes")[-1].value > 0
    assert "params" in "".join(events.Tags()["tensors"])  # the parameters, as a text summary
    assert not (run_dir / MLFLOW_RUN_FILE).exists()


@pytest.mark.filterwarnings("ignore::FutureWarning")  # MLflow announces the file store's deprecation
def test_an_mlflow_run_appears_in_a_local_file_store(tiny_model_dir, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    uri = (tmp_path / "mlruns").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "tests")
    # MLflow 3 keeps the file store for those who ask for it (its database stores need SQLAlchemy, i.e. full mlflow).
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    run_dir = train(tiny_model_dir, tmp_path)
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("tests")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "faq-bot" and run.info.status == "FINISHED"
    assert run.data.params["lora_r"] == "4" and run.data.params["learning_rate"] == "0.01"
    assert run.data.tags["lora_studio.task.team"] == "alpha"
    assert {"train/loss", "eval/loss", "perf/tokens_per_second"} <= set(run.data.metrics)
    history = client.get_metric_history(run.info.run_id, "train/loss")
    assert sorted(m.step for m in history) == list(range(1, 9))
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "adapter")}
    assert {"adapter/adapter_config.json", "adapter/adapter_model.safetensors"} <= artifacts
    assert (run_dir / MLFLOW_RUN_FILE).is_file()
