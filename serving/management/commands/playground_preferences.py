"""manage.py playground_preferences --team TEAM [--pairs 1,2,3] [--name NAME] [--train adapter|MODEL]
[--params JSON] [--user U]."""

from __future__ import annotations

import json

from accounts.commands import add_user_argument, command_actor
from core.commands import ServiceCommand
from core.errors import ApplicationError
from serving.services import preference_pair_dataset_create


class Command(ServiceCommand):
    help = ("Turn a team's chat-playground preference pairs into a preference dataset version (the preferred answer "
            "chosen, the other rejected; ties and incomplete pairs left out and counted), with its lineage; with "
            "--train, queue a DPO task on it.")

    def add_arguments(self, parser):
        parser.add_argument("--team", default=None, help="The team whose pairs to use (default: your only team).")
        parser.add_argument("--pairs", default=None, help="Comma-separated pair ids (default: every pair).")
        parser.add_argument("--name", default=None, help="Dataset name (default playground-preferences).")
        parser.add_argument("--train", default=None, metavar="adapter|MODEL",
                            help="Also queue a DPO task: on the one adapter the pairs judged ('adapter'), or on the "
                                 "model named (an adapter trained further, a base model afresh).")
        parser.add_argument("--params", default=None, help='Hyperparameters as JSON, e.g. \'{"beta": 0.1}\'.')
        add_user_argument(parser)

    def run(self, *args, **opts):
        try:
            params = json.loads(opts["params"]) if opts["params"] else None
        except ValueError:
            raise ApplicationError("--params must be a JSON object.", param="params") from None
        if params is not None and not isinstance(params, dict):
            raise ApplicationError("--params must be a JSON object.", param="params")
        pairs = None
        if opts["pairs"]:
            try:
                pairs = [int(p) for p in opts["pairs"].split(",") if p.strip()]
            except ValueError:
                raise ApplicationError("--pairs must be comma-separated ids, e.g. 3,4,9.", param="pairs") from None
        user = command_actor(username=opts["user"], team=opts["team"])
        version, task = preference_pair_dataset_create(user=user, team=opts["team"], pairs=pairs, name=opts["name"],
                                                       train=opts["train"], params=params)
        counts = version.report.get("lineage", {}).get("counts", {})
        self.stdout.write(f"Preference dataset {version.ref}: {version.row_count} pairs ({json.dumps(counts)}).")
        if task is not None:
            self.stdout.write(f"DPO task {task.pk} {task.name!r} queued ({task.status}).")
