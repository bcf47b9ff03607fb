"""The test suite's settings: the project's, plus a job kind that only the tests register (``tests.jobkind``),
which shows that a new kind runs through the job system with no change to ``jobs/``."""

from config.settings import *  # noqa: F403
from config.settings import INSTALLED_APPS

INSTALLED_APPS = [*INSTALLED_APPS, "tests.jobkind"]

# The webhook tests' receivers listen on 127.0.0.1.
WEBHOOK_ALLOW_LOOPBACK = True
