from __future__ import annotations

from accounts.commands import add_user_argument, command_actor
from core.commands import ServiceCommand
from core.errors import ApplicationError
from jobs import runtime
from jobs.services import job_get
from training.models import TrainingTask


class Command(ServiceCommand):
    help = "Run a queued training task in the foreground (for debugging); the worker normally does this."

    def add_arguments(self, parser):
        parser.add_argument("task_id", type=int)
        parser.add_argument("--team", default=None, help="The task's team: its first admin acts when --user is "
                                                         "left out (default: the first superuser).")
        add_user_argument(parser)

    def run(self, *args, **opts):
        user = command_actor(username=opts["user"], team=opts["team"])
        # Found as the acting user (other teams' tasks read as not found), and run only by someone who may write it.
        task = job_get(user=user, queryset=TrainingTask.objects.all(), ref=opts["task_id"], code="task_not_found",
                       label="Training task", for_update=True)
        try:
            status = runtime.run_foreground(task)
        except ValueError as exc:
            raise ApplicationError(str(exc)) from None
        task.refresh_from_db()
        self.stdout.write(f"Task {task.pk} {task.name}: {status}" +
                          (f" ({task.error_code}: {task.error_message})" if task.error_code else ""))
        if status != "succeeded":
            raise SystemExit(1)
