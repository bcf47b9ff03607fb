from __future__ import annotations

from pathlib import Path

from django.core.management.base import CommandError

from core.commands import ServiceCommand
from datasets_app import formats, services
from datasets_app.management.commands._common import USER_HELP, principal_for, report_lines


class Command(ServiceCommand):
    help = ("Validate a dataset file row by row and import it as a new version of dataset NAME in TEAM. "
            "Prints the detected format, the rows imported and the report with line numbers; exits with "
            "status 1 when the file has errors (it is then kept as a failed version, with nothing imported).")

    def add_arguments(self, parser):
        parser.add_argument("path", help="JSONL, JSON array or CSV file.")
        parser.add_argument("--name", required=True, help="Dataset name (an existing one gets a new version).")
        parser.add_argument("--team", required=True, help="Team name.")
        parser.add_argument("--format", default=None,
                            help=f"One of {', '.join(formats.FORMATS)}; default: detect from the first example.")
        parser.add_argument("--base-model", default=None, help="Check example lengths with this model's tokenizer.")
        parser.add_argument("--description", default="")
        parser.add_argument("--user", default=None, help=USER_HELP)
        parser.add_argument("--max-issues", type=int, default=50, help="Issues of each kind to print (default 50).")

    def run(self, *args, **opts):
        who = principal_for(opts["user"])
        path = Path(opts["path"]).expanduser()
        if not path.is_file():
            raise CommandError(f"{path} is not a file.")
        with path.open("rb") as fh:
            version = services.dataset_upload(user=who, team=opts["team"], name=opts["name"], fileobj=fh,
                                              filename=path.name, format=opts["format"],
                                              description=opts["description"], base_model=opts["base_model"])
        report = getattr(version, "upload_report", None) or version.report or {}
        how = "detected" if report.get("format_detected") else "given"
        self.stdout.write(f"Format: {version.format or 'unknown'} ({how}; {report.get('container') or '?'})")
        if not version.is_ready:
            self.stdout.write(f"Rows imported: 0 ({report.get('valid_examples', 0)} of "
                              f"{report.get('examples', 0)} examples valid)")
        elif getattr(version, "deduplicated", False):
            self.stdout.write(f"Rows imported: 0 (the same content is already {version.ref}, id {version.pk}; "
                              "no new version)")
        else:
            self.stdout.write(f"Rows imported: {version.row_count} as {version.ref} (id {version.pk}) "
                              f"in team {version.dataset.team.name}")
        self.stdout.write(f"Report: {report.get('error_count', 0)} error(s), {report.get('warning_count', 0)} "
                          f"warning(s)")
        for line in report_lines(version, limit=opts["max_issues"]):
            self.stdout.write(line)
        if not version.is_ready:
            raise CommandError(f"Import failed with {version.error_count} error(s); kept as failed version "
                               f"{version.ref} (id {version.pk}), nothing was imported.")
        stats = version.stats or {}
        tokens = next(iter((stats.get("tokens") or {}).values()), None)
        if tokens and tokens.get("count"):
            self.stdout.write(f"Tokens per example: min {tokens['min']}, median {tokens['median']}, "
                              f"p95 {tokens['p95']}, max {tokens['max']} (limit {tokens.get('limit')})")
        if stats.get("labels"):
            self.stdout.write("Labels: " + ", ".join(f"{k} {v}" for k, v in stats["labels"].items()))
