"""Fixtures for classifier tests: a tiny BERT on disk, classification dataset versions, the real worker."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.classifier.tiny import records, save_tiny_bert
from tests.training.conftest import make_version, worker, worker_env  # noqa: F401 - shared fixtures


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> Path:
    return save_tiny_bert(tmp_path_factory.mktemp("tiny") / "tiny-bert")


@pytest.fixture
def tiny_encoder(db, tiny_bert_dir):
    from catalog.model_scan import inspect_hf_dir
    from catalog.models import BaseModel

    info = inspect_hf_dir(tiny_bert_dir)
    return BaseModel.objects.create(name="tiny-bert", kind=BaseModel.Kind.ENCODER, path=str(tiny_bert_dir),
                                    architecture=info.architecture, parameter_count=info.parameter_count,
                                    size_bytes=info.size_bytes, tokenizer_present=True, config=info.config)


@pytest.fixture
def make_cls_version(make_version):  # noqa: F811 - the imported fixture
    """make_cls_version(team, rows=None, name="questions") -> a ready classification DatasetVersion."""

    def make(team, rows=None, *, name: str = "questions", **kwargs):
        return make_version(team, records(12) if rows is None else rows, name=name, fmt="classification", **kwargs)

    return make


@pytest.fixture
def fast_params() -> dict:
    return {"n_epochs": 2, "batch_size": 8, "learning_rate": 0.02}
