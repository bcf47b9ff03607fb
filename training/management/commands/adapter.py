from __future__ import annotations

import json
from pathlib import Path

from accounts.commands import USER_HELP, command_actor
from core.commands import ServiceCommand
from core.errors import ApplicationError
from jobs.cli import wait_with_progress
from training import lifecycle
from training.services import adapter_get


class Command(ServiceCommand):
    help = ("An adapter's lifecycle: merge (queue a merge into its base model), export (zip with a model card), "
            "ollama (Ollama bundle), promote STAGE, approve, archive, restore, delete (files), lineage, reproduce.")

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True)

        def add(name: str, help_text: str):
            p = sub.add_parser(name, help=help_text)
            p.add_argument("adapter", help="Adapter id or name.")
            p.add_argument("--user", default=None, metavar="USERNAME", help=USER_HELP)
            p.add_argument("--team", default=None, help="The adapter's team: its first admin acts when --user is "
                                                        "left out (default: the first superuser).")
            return p

        p = add("merge", "Queue a merge job (base + adapter -> new base model).")
        p.add_argument("--name", default=None, help="Name of the new base model (default: <adapter>-merged).")
        p.add_argument("--wait", action="store_true", help="Show progress until the merge ends.")
        for name, text in (("export", "Write the adapter zip with its README.md model card."),
                           ("ollama", "Write an Ollama bundle (Modelfile + adapter + README).")):
            p = add(name, text)
            p.add_argument("-o", "--output", default=None, help="Zip file to write (default: ./<name>.zip).")
            if name == "ollama":
                p.add_argument("--from", dest="from_ref", default=None,
                               help="FROM of the Modelfile: a path or an Ollama model name (default: base folder).")
                p.add_argument("--name", default=None, help="Model name for `ollama create`.")
                p.add_argument("--temperature", type=float, default=None)
        p = add("promote", "Change the stage: draft, candidate or production (production may need approval).")
        p.add_argument("stage", choices=["draft", "candidate", "production"])
        p.add_argument("--note", default="")
        for name, text in (("approve", "Approve a candidate for production (a team admin, not the author)."),
                           ("archive", "Archive the adapter."), ("restore", "Restore an archived adapter."),
                           ("delete", "Delete the adapter's files; the row stays, archived.")):
            add(name, text).add_argument("--note", default="")
        add("lineage", "Print the lineage as JSON.")
        add("reproduce", "Clone the adapter's task with identical inputs.").add_argument("--name", default=None)

    def run(self, *args, **opts):
        ref = opts["adapter"]
        # The adapter is looked up as the acting user, through visibility like any door.
        user = command_actor(username=opts["user"], team=opts["team"])
        adapter = adapter_get(user=user, ref=ref)
        action = opts["action"]
        if action == "merge":
            job = lifecycle.adapter_merge(user=user, adapter=adapter, name=opts["name"])
            self.stdout.write(f"Queued merge job {job.pk}: {adapter.name} -> base model {job.output_name} "
                              f"({job.output_path}).")
            if opts["wait"]:
                job = wait_with_progress(job, self.stderr._out)
                if job.status != "succeeded":
                    raise ApplicationError(f"Merge job {job.pk} {job.status}: {job.error_message}",
                                           code=f"merge_{job.status}")
                self.stdout.write(self.style.SUCCESS(f"Registered base model {job.result.name} at {job.result.path}."))
        elif action in ("export", "ollama"):
            if action == "export":
                filename, stream = lifecycle.adapter_export(user=user, adapter=adapter)
            else:
                filename, stream = lifecycle.adapter_ollama_bundle(user=user, adapter=adapter,
                                                                   from_ref=opts["from_ref"], name=opts["name"],
                                                                   temperature=opts["temperature"])
            target = Path(opts["output"] or filename)
            tmp = target.with_name(f".{target.name}.part")
            with tmp.open("wb") as fh:
                for chunk in stream:
                    fh.write(chunk)
            tmp.replace(target)
            self.stdout.write(f"Wrote {target} ({target.stat().st_size:,} bytes).")
            if action == "ollama":
                self.stdout.write(f"Unzip it, then: ollama create {lifecycle.ollama_model_name(adapter, opts['name'])}"
                                  " -f Modelfile")
        elif action == "promote":
            adapter = lifecycle.adapter_promote(user=user, adapter=adapter, stage=opts["stage"], note=opts["note"])
            pending = " (waiting for approval)" if adapter.approval_requested_at else ""
            self.stdout.write(f"{adapter.name}: stage {adapter.stage}{pending}.")
        elif action in ("approve", "archive", "restore", "delete"):
            fn = getattr(lifecycle, f"adapter_{action}")
            adapter = fn(user=user, adapter=adapter, note=opts["note"])
            self.stdout.write(f"{adapter.name}: stage {adapter.stage}, status {adapter.status}"
                              + (", files deleted" if adapter.files_deleted_at else "") + ".")
        elif action == "lineage":
            self.stdout.write(json.dumps(lifecycle.adapter_lineage(user=user, adapter=adapter), indent=2, default=str))
        elif action == "reproduce":
            task = lifecycle.adapter_reproduce(user=user, adapter=adapter, name=opts["name"])
            self.stdout.write(f"Queued {task.name!r} (id {task.pk}, {task.status}) with the inputs of "
                              f"{adapter.name}.")
