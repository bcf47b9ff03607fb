"""Fixtures of the /v1/ tests: the training fixtures (tiny model, dataset versions, worker, live server)."""

from __future__ import annotations

from tests.training.conftest import (  # noqa: F401 - fixtures re-exported for this folder
    live_url,
    make_version,
    tiny_base_model,
    tiny_model_dir,
    worker,
    worker_env,
)
