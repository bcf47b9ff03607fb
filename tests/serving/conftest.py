"""Fixtures of the serving tests: the training fixtures (tiny model, dataset versions)."""

from __future__ import annotations

from tests.training.conftest import (  # noqa: F401 - fixtures re-exported for this folder
    make_version,
    tiny_base_model,
    tiny_model_dir,
)
