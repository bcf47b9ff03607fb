"""Fixtures for evaluation tests: the tiny Llama and dataset versions from the training tests, and a tiny
adapter trained once per session with ``ml.train.sft.run_training``."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.training.conftest import make_version, tiny_base_model, tiny_model_dir  # noqa: F401 - shared fixtures
from tests.training.tiny import chat_records

FAST = {"n_epochs": 8, "batch_size": 4, "learning_rate": 1e-2, "lora_r": 8, "lora_alpha": 16, "lora_dropout": 0.0,
        "save_steps": 1000, "max_seq_length": 128}


@pytest.fixture(scope="session")
def tiny_adapter_dir(tiny_model_dir, tmp_path_factory) -> Path:  # noqa: F811 - the imported fixture
    from ml.train.sft import RunSpec, run_training

    tmp = tmp_path_factory.mktemp("eval-adapter")
    result = run_training(RunSpec(base_model_path=tiny_model_dir, train=chat_records(16), params=dict(FAST),
                                  run_dir=tmp / "run", adapter_dir=tmp / "adapter", device="cpu"))
    assert result.status == "succeeded"
    return result.adapter_dir


@pytest.fixture
def setup(make_team, make_user, make_version, tiny_base_model, tiny_adapter_dir):  # noqa: F811
    """(team, alice, version, adapter): alice is a member of team; the adapter is trained on the version's data."""
    from training.models import Adapter

    team = make_team("alpha")
    alice = make_user("alice", team, "member")
    version = make_version(team, chat_records(8))
    adapter = Adapter.objects.create(name="tiny-faq", team=team, base_model=tiny_base_model,
                                     path=str(tiny_adapter_dir), metrics={"max_seq_length": 128})
    return team, alice, version, adapter
