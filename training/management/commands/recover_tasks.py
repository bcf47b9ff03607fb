from __future__ import annotations

from accounts.commands import add_user_argument, command_actor
from accounts.visibility import as_principal
from core.commands import ServiceCommand
from core.errors import PermissionDenied
from jobs import runtime


class Command(ServiceCommand):
    help = ("Recover jobs whose worker stopped sending heartbeats (resume from the last checkpoint, or fail with "
            "the reason), then wake a worker for queued jobs. Safe to run from cron at any time.")

    def add_arguments(self, parser):
        parser.add_argument("--no-wake", action="store_true", help="Do not enqueue a dispatch message.")
        add_user_argument(parser, help_text="Act as this user (default: the first superuser); recovery touches "
                                            "every team's jobs, so it is a superuser's operation.")

    def run(self, *args, **opts):
        user = command_actor(username=opts["user"], team=None)
        if not as_principal(user).is_superuser:
            raise PermissionDenied("Recovering every team's jobs needs a superuser.")
        count = runtime.recover_stale()
        self.stdout.write(f"Recovered {count} stale job(s).")
        if not opts["no_wake"]:
            runtime.wake_worker()
