from __future__ import annotations

from django.contrib.auth import get_user_model

from core.commands import ServiceCommand
from core.errors import ApplicationError, NotFound
from core.params import parse_param_options
from jobs.cli import wait_with_progress
from training.services import training_task_create


def command_user(username: str | None, team_name: str):
    """The acting user of a command: --user, else the team's first admin, else a superuser."""
    from accounts.models import Membership, Role

    User = get_user_model()
    if username:
        try:
            return User.objects.get(username=username)
        except User.DoesNotExist:
            raise NotFound(f"User {username!r} not found.", param="user") from None
    membership = Membership.objects.filter(team__name=team_name, role=Role.ADMIN).select_related("user").first()
    if membership:
        return membership.user
    user = User.objects.filter(is_superuser=True).order_by("pk").first()
    if user is None:
        raise ApplicationError("No user to act as: pass --user USERNAME.", param="user")
    return user


class Command(ServiceCommand):
    help = "Create a training task (and wait for it with --wait, showing progress)."

    def add_arguments(self, parser):
        parser.add_argument("--name", required=True)
        parser.add_argument("--team", required=True)
        parser.add_argument("--base-model", required=True, help="Base model name or id.")
        parser.add_argument("--dataset", required=True, help="Dataset version: id, NAME (latest) or NAME@N.")
        parser.add_argument("--validation-dataset", default=None)
        parser.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                            help="Hyperparameter, repeatable (values parsed as JSON when possible).")
        parser.add_argument("--method", default="sft", choices=["sft", "dpo", "orpo", "kto"],
                            help="sft (chat/text data), dpo or orpo (preference pairs), kto (labelled answers).")
        parser.add_argument("--start-adapter", default=None,
                            help="Train this adapter (same base model) further, e.g. DPO on an SFT adapter.")
        parser.add_argument("--priority", type=int, default=0)
        parser.add_argument("--user", default=None, help="Act as this user (default: the team's first admin).")
        parser.add_argument("--wait", action="store_true", help="Show progress until the task ends.")
        parser.add_argument("--evaluate", action="store_true",
                            help="Queue an evaluation run of the adapter when the task succeeds.")
        parser.add_argument("--evaluation-metrics", default=None, metavar="M1,M2",
                            help="With --evaluate: perplexity, samples, style, overlap (default all).")

    def run(self, *args, **opts):
        user = command_user(opts["user"], opts["team"])
        task = training_task_create(user=user, team=opts["team"], name=opts["name"], base_model=opts["base_model"],
                                    train_version=opts["dataset"], validation_version=opts["validation_dataset"],
                                    params=parse_param_options(opts["param"]), priority=opts["priority"],
                                    evaluate=opts["evaluate"], evaluation_metrics=opts["evaluation_metrics"],
                                    method=opts["method"], start_adapter=opts["start_adapter"])
        self.stdout.write(f"Created training task {task.pk} {task.name!r} ({task.status}).")
        for key, why in (task.auto_explanation or {}).items():
            self.stdout.write(f"  auto {key}: {why}")
        if not opts["wait"]:
            return
        task = wait_with_progress(task, self.stderr._out)
        if task.status == "succeeded":
            adapter = task.adapters.first()
            self.stdout.write(self.style.SUCCESS(
                f"Task {task.name} succeeded" + (f": adapter {adapter.name} at {adapter.path}" if adapter else ".")))
            return
        raise ApplicationError(f"Task {task.name} {task.status}" +
                               (f": {task.error_code}: {task.error_message}" if task.error_code else "."),
                               code=f"task_{task.status}")
