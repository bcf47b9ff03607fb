from __future__ import annotations

from core.commands import ServiceCommand
from core.errors import ApplicationError
from jobs import runtime
from training.models import TrainingTask


class Command(ServiceCommand):
    help = "Run a queued training task in the foreground (for debugging); the worker normally does this."

    def add_arguments(self, parser):
        parser.add_argument("task_id", type=int)

    def run(self, *args, **opts):
        task = TrainingTask.objects.filter(pk=opts["task_id"]).first()
        if task is None:
            raise ApplicationError(f"Training task {opts['task_id']} not found.", param="task_id")
        try:
            status = runtime.run_foreground(task)
        except ValueError as exc:
            raise ApplicationError(str(exc)) from None
        task.refresh_from_db()
        self.stdout.write(f"Task {task.pk} {task.name}: {status}" +
                          (f" ({task.error_code}: {task.error_message})" if task.error_code else ""))
        if status != "succeeded":
            raise SystemExit(1)
