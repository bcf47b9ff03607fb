from __future__ import annotations

import sys

from django.core.management.base import BaseCommand

from jobs import runtime


class Command(BaseCommand):
    help = "Internal: the supervised child process of a claimed job (started by the worker, not by hand)."

    def add_arguments(self, parser):
        parser.add_argument("kind")
        parser.add_argument("pk", type=int)
        parser.add_argument("--run-token", required=True)

    def handle(self, *args, **opts):
        sys.exit(runtime.run_child(opts["kind"], opts["pk"], opts["run_token"]))
