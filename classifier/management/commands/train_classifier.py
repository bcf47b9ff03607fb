from __future__ import annotations

from accounts.commands import add_user_argument, command_actor
from classifier.services import classifier_task_create
from core.commands import ServiceCommand
from core.errors import ApplicationError
from core.params import parse_param_options
from jobs.cli import wait_with_progress


class Command(ServiceCommand):
    help = "Create a classifier task (LoRA on an encoder + a new head); --wait shows progress until it ends."

    def add_arguments(self, parser):
        parser.add_argument("--name", required=True, help="Task name; the adapter is named after it.")
        parser.add_argument("--team", required=True)
        parser.add_argument("--base-model", default="all-MiniLM-L6-v2", help="Encoder base model name or id.")
        parser.add_argument("--dataset", required=True, help="Classification dataset version: id, NAME or NAME@N.")
        parser.add_argument("--validation-dataset", default=None)
        parser.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                            help="Hyperparameter, repeatable (values parsed as JSON when possible).")
        parser.add_argument("--priority", type=int, default=0)
        add_user_argument(parser)
        parser.add_argument("--wait", action="store_true", help="Show progress until the task ends.")
        parser.add_argument("--timeout", type=float, default=None, help="With --wait: give up after SECONDS.")

    def run(self, *args, **opts):
        user = command_actor(username=opts["user"], team=opts["team"])
        task = classifier_task_create(user=user, team=opts["team"], name=opts["name"], base_model=opts["base_model"],
                                      train_version=opts["dataset"], validation_version=opts["validation_dataset"],
                                      params=parse_param_options(opts["param"]), priority=opts["priority"])
        labels = ", ".join(task.label_map.values())
        self.stdout.write(f"Created classifier task {task.pk} {task.name!r} ({task.status}); labels: {labels}.")
        if not opts["wait"]:
            return
        task = wait_with_progress(task, self.stderr._out, timeout=opts["timeout"])
        if task.status == "succeeded":
            m = task.metrics or {}
            self.stdout.write(self.style.SUCCESS(
                f"Task {task.name} succeeded: accuracy {m.get('accuracy', 0):.3f}, macro-F1 {m.get('macro_f1', 0):.3f} "
                f"(best epoch {m.get('best_epoch')}); trainable parameters {task.trainable_parameters:,} of "
                f"{task.total_parameters:,}" + (f"; adapter {task.adapter.name} at {task.adapter.path}"
                                                 if task.adapter_id else "") + "."))
            return
        raise ApplicationError(f"Task {task.name} {task.status}" +
                               (f": {task.error_code}: {task.error_message}" if task.error_code else "."),
                               code=f"task_{task.status}")
