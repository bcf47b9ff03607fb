"""manage.py review_preferences REVIEW [--name NAME] [--train adapter|baseline] [--params JSON] [--user U]."""

from __future__ import annotations

import json

from accounts.commands import add_user_argument, command_actor
from core.commands import ServiceCommand
from core.errors import ApplicationError
from evaluation.services import review_get, review_to_preferences


class Command(ServiceCommand):
    help = ("Turn a closed blind A/B review into a preference dataset version (each vote a pair: the winner chosen, "
            "the loser rejected, ties left out), with its lineage; with --train, queue a DPO task on it.")

    def add_arguments(self, parser):
        parser.add_argument("review", help="Review id.")
        parser.add_argument("--name", default=None, help="Dataset name (default review-<id>-preferences).")
        parser.add_argument("--train", choices=["adapter", "baseline"], default=None,
                            help="Also queue a DPO task on the run's adapter (or its baseline).")
        parser.add_argument("--params", default=None, help='Hyperparameters as JSON, e.g. \'{"beta": 0.1}\'.')
        add_user_argument(parser)

    def run(self, *args, **opts):
        try:
            params = json.loads(opts["params"]) if opts["params"] else None
        except ValueError:
            raise ApplicationError("--params must be a JSON object.", param="params") from None
        user = command_actor(username=opts["user"])
        version, task = review_to_preferences(user=user, review=review_get(user=user, ref=opts["review"]),
                                              name=opts["name"], train=opts["train"], params=params)
        counts = version.report.get("lineage", {}).get("counts", {})
        self.stdout.write(f"Preference dataset {version.ref}: {version.row_count} pairs ({json.dumps(counts)}).")
        if task is not None:
            self.stdout.write(f"DPO task {task.pk} {task.name!r} queued ({task.status}).")
