"""The real-worker fixtures of the training tests, for the job system's own process tests."""

from tests.training.conftest import Worker, wait_for, worker, worker_env  # noqa: F401 - fixtures and helpers
