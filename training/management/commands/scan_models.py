from __future__ import annotations

from tqdm import tqdm

from accounts.commands import add_user_argument, command_actor
from accounts.services import team_get
from catalog.services import base_models_scan
from core.commands import ServiceCommand, format_bytes, format_count, table
from training.lifecycle import adapters_scan


class Command(ServiceCommand):
    help = ("Register base models from MODEL_DIRS, DATA_DIR/models, the bundled packages and the given paths. "
            "GGUF files are converted once to safetensors; vanished folders are marked unavailable. Then register "
            "adapter folders (with adapter_config.json) from DATA_DIR/adapters, MODEL_DIRS and the given paths, "
            "matched to a base model by the config's base_model_name_or_path; new adapters need --team (their "
            "owner), unmatched ones are reported and left alone.")

    def add_arguments(self, parser):
        parser.add_argument("paths", nargs="*", help="Extra folders or .gguf files to scan.")
        parser.add_argument("--team", default=None,
                            help="Register new models as this team's (default: global); required to register "
                                 "new adapters (without it they are listed as skipped).")
        parser.add_argument("--no-adapters", action="store_true", help="Do not scan for adapter folders.")
        parser.add_argument("--only-paths", action="store_true", help="Scan only the given paths.")
        add_user_argument(parser)

    def run(self, *args, **opts):
        team = team_get(opts["team"]) if opts["team"] else None
        user = command_actor(username=opts["user"], team=team)
        # tqdm writes carriage returns: give it the raw stream, not the newline-adding OutputWrapper.
        bar = tqdm(total=0, unit="model", file=self.stderr._out, dynamic_ncols=True)

        def progress(name: str, index: int, total: int) -> None:
            bar.total = total
            bar.n = index
            bar.set_description(f"scanning {name}" if name else "done")
            bar.refresh()

        try:
            report = base_models_scan(paths=opts["paths"], include_defaults=not opts["only_paths"], team=team,
                                      user=user, progress=progress)
        finally:
            bar.close()
        rows = [[r.name, r.action, r.kind, format_count(r.parameter_count) if r.parameter_count else "",
                 format_bytes(r.size_bytes) if r.size_bytes else "", r.message or r.path] for r in report.rows]
        self.stdout.write(table(rows, ["model", "result", "kind", "params", "size", "path / note"]))
        summary = ", ".join(f"{a} {report.count(a)}" for a in
                            ("added", "converted", "updated", "unchanged", "unavailable", "error")
                            if report.count(a))
        self.stdout.write(f"{len(report.rows)} models scanned: {summary or 'nothing found'}.")
        if opts["no_adapters"]:
            return
        found = adapters_scan(paths=opts["paths"], include_defaults=not opts["only_paths"], team=team, user=user)
        if not found:
            self.stdout.write("No adapter folders found.")
            return
        self.stdout.write("")
        self.stdout.write(table([[r.name, r.action, r.base_model, r.message or r.path] for r in found],
                                ["adapter", "result", "base model", "path / note"]))
        counts = {a: sum(1 for r in found if r.action == a) for a in ("added", "unchanged", "unmatched", "skipped",
                                                                      "error")}
        self.stdout.write(f"{len(found)} adapters scanned: " + ", ".join(f"{a} {n}" for a, n in counts.items() if n)
                          + ".")
