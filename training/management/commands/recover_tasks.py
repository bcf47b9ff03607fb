from __future__ import annotations

from core.commands import ServiceCommand
from jobs import runtime


class Command(ServiceCommand):
    help = ("Recover jobs whose worker stopped sending heartbeats (resume from the last checkpoint, or fail with "
            "the reason), then wake a worker for queued jobs. Safe to run from cron at any time.")

    def add_arguments(self, parser):
        parser.add_argument("--no-wake", action="store_true", help="Do not enqueue a dispatch message.")

    def run(self, *args, **opts):
        count = runtime.recover_stale()
        self.stdout.write(f"Recovered {count} stale job(s).")
        if not opts["no_wake"]:
            runtime.wake_worker()
