from __future__ import annotations

from accounts.commands import add_user_argument, command_actor
from core.commands import ServiceCommand
from core.errors import ApplicationError
from core.params import parse_param_options
from jobs.cli import wait_with_progress
from ml.hparams import MemoryEstimate
from training.recipes import training_recipe_task_create
from training.services import training_task_create


class Command(ServiceCommand):
    help = "Create a training task (and wait for it with --wait, showing progress)."

    def add_arguments(self, parser):
        parser.add_argument("--name", default=None, help="Required unless the recipe (--config) names the task.")
        parser.add_argument("--team", required=True)
        parser.add_argument("--config", default=None, metavar="RECIPE.yaml",
                            help="A YAML recipe (our keys or LLaMA-Factory's); the options given here override it.")
        parser.add_argument("--base-model", default=None, help="Base model name or id (required without --config).")
        parser.add_argument("--dataset", default=None, help="Dataset version: id, NAME (latest) or NAME@N "
                                                            "(required without --config).")
        parser.add_argument("--validation-dataset", default=None)
        parser.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                            help="Hyperparameter, repeatable (values parsed as JSON when possible).")
        parser.add_argument("--method", default="sft", choices=["sft", "dpo", "orpo", "kto"],
                            help="sft (chat/text data), dpo or orpo (preference pairs), kto (labelled answers).")
        parser.add_argument("--start-adapter", default=None,
                            help="Train this adapter (same base model) further, e.g. DPO on an SFT adapter.")
        parser.add_argument("--priority", type=int, default=0)
        add_user_argument(parser)
        parser.add_argument("--wait", action="store_true", help="Show progress until the task ends.")
        parser.add_argument("--evaluate", action="store_true",
                            help="Queue an evaluation run of the adapter when the task succeeds.")
        parser.add_argument("--evaluation-metrics", default=None, metavar="M1,M2",
                            help="With --evaluate: perplexity, samples, style, overlap (default all).")

    def run(self, *args, **opts):
        user = command_actor(username=opts["user"], team=opts["team"])
        if opts["config"]:
            try:
                with open(opts["config"], "rb") as fh:
                    config = fh.read()
            except OSError as exc:
                raise ApplicationError(f"Cannot read the recipe: {exc}.", param="config") from None
            task = training_recipe_task_create(
                user=user, config=config, team=opts["team"], name=opts["name"], base_model=opts["base_model"],
                train_version=opts["dataset"], validation_version=opts["validation_dataset"],
                params=parse_param_options(opts["param"]), priority=opts["priority"] or None,
                evaluate=opts["evaluate"] or None, evaluation_metrics=opts["evaluation_metrics"])
        else:
            if not (opts["name"] and opts["base_model"] and opts["dataset"]):
                raise ApplicationError("Give --name, --base-model and --dataset, or a recipe with --config.",
                                       param="config")
            task = training_task_create(user=user, team=opts["team"], name=opts["name"],
                                        base_model=opts["base_model"], train_version=opts["dataset"],
                                        validation_version=opts["validation_dataset"],
                                        params=parse_param_options(opts["param"]), priority=opts["priority"],
                                        evaluate=opts["evaluate"], evaluation_metrics=opts["evaluation_metrics"],
                                        method=opts["method"], start_adapter=opts["start_adapter"])
        self.stdout.write(f"Created training task {task.pk} {task.name!r} ({task.status}).")
        for key, why in (task.auto_explanation or {}).items():
            self.stdout.write(f"  auto {key}: {why}")
        if task.memory_estimate:
            self.stdout.write(f"  estimated memory: {MemoryEstimate.from_dict(task.memory_estimate).describe()}")
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
