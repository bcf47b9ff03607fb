"""The test suite's settings: the project's, plus a job kind that only the tests register (``tests.jobkind``),
which shows that a new kind runs through the job system with no change to ``jobs/``."""

import os

from config.settings import *  # noqa: F403
from config.settings import INSTALLED_APPS

INSTALLED_APPS = [*INSTALLED_APPS, "tests.jobkind"]

# Per-process counters for the suite: a test's rate-limit and login-throttle counts must not leak into the next
# test through a shared table (transactional tests do not roll it back). The shared caches (the database, the
# project's default, and Redis) are tested across real processes in tests/reliability/test_shared_cache.py.
if "CACHE_URL" not in os.environ:  # a process a test starts with CACHE_URL set uses that one
    CACHES = {**CACHES, "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}  # noqa: F405

# The webhook tests' receivers listen on 127.0.0.1.
WEBHOOK_ALLOW_LOOPBACK = True
