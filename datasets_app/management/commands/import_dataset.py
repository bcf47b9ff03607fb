from __future__ import annotations

from pathlib import Path

from django.core.management.base import CommandError

from core.commands import ServiceCommand
from datasets_app import formats, services
from datasets_app.management.commands._common import USER_HELP, actor_for, report_lines


class Command(ServiceCommand):
    help = ("Validate a dataset file row by row and import it as a new version of dataset NAME in TEAM. "
            "Prints the format (given, or detected and why), the rows imported and the report with line numbers; "
            "exits with status 1 when the file has errors (it is then kept as a failed version, with nothing "
            "imported), unless --skip-invalid imports the valid rows and keeps the report of the others.")

    def add_arguments(self, parser):
        parser.add_argument("path", nargs="?", default=None,
                            help="JSONL, JSON array, CSV/TSV, Parquet, Arrow, a .txt/.md corpus, or a folder written "
                                 "by datasets' save_to_disk (with --dataset-info: the entry's file_name).")
        parser.add_argument("--name", required=True, help="Dataset name (an existing one gets a new version).")
        parser.add_argument("--team", required=True, help="Team name.")
        parser.add_argument("--format", default=None,
                            help=f"One of {', '.join(formats.FORMATS)}; default: detect from the first example.")
        parser.add_argument("--columns", default=None,
                            help="Column mapping our_key=file_key,... (e.g. instruction=question,input=context,"
                                 "output=answer), or a JSON object.")
        parser.add_argument("--dataset-info", default=None,
                            help="A LLaMA-Factory dataset_info.json: read the file, format and mapping of --entry.")
        parser.add_argument("--entry", default=None, help="The dataset_info.json entry to import.")
        parser.add_argument("--skip-invalid", action="store_true",
                            help="Import the valid rows and keep the report of the others (default: all or nothing).")
        parser.add_argument("--base-model", default=None,
                            help="Check example lengths with this model's tokenizer (and cut a text corpus by it).")
        parser.add_argument("--description", default="")
        parser.add_argument("--user", default=None, help=USER_HELP)
        parser.add_argument("--max-issues", type=int, default=50, help="Issues of each kind to print (default 50).")

    def run(self, *args, **opts):
        who = actor_for(opts["user"], opts["team"])
        fmt, columns, reason = opts["format"], opts["columns"], ""
        if opts["dataset_info"] or opts["entry"]:
            if not (opts["dataset_info"] and opts["entry"]):
                raise CommandError("--dataset-info and --entry go together.")
            info = services.dataset_info_read(path=opts["dataset_info"], entry=opts["entry"])
            if columns:
                raise CommandError("Give either --columns or --dataset-info, not both.")
            columns = info.mapping
            if fmt is None:
                fmt, reason = info.format, f"given by {Path(opts['dataset_info']).name} entry {info.name!r}"
            path = Path(opts["path"]).expanduser() if opts["path"] else info.path
        elif opts["path"]:
            path = Path(opts["path"]).expanduser()
        else:
            raise CommandError("Give the file to import (or --dataset-info FILE --entry NAME).")
        if path.is_dir():
            source = path
        elif path.is_file():
            source = None
        else:
            raise CommandError(f"{path} is not a file (or a save_to_disk folder).")
        kwargs = {"user": who, "team": opts["team"], "name": opts["name"], "filename": path.name, "format": fmt,
                  "description": opts["description"], "base_model": opts["base_model"], "columns": columns,
                  "skip_invalid": opts["skip_invalid"], "format_reason": reason}
        if source is not None:
            version = services.dataset_upload(fileobj=source, **kwargs)
        else:
            with path.open("rb") as fh:
                version = services.dataset_upload(fileobj=fh, **kwargs)
        report = getattr(version, "upload_report", None) or version.report or {}
        self.stdout.write(f"Format: {version.format or 'unknown'} ({format_how(report)}; "
                          f"{report.get('container') or '?'})")
        if version.mapping:
            self.stdout.write(f"Mapping: {formats.ColumnMapping.model_validate(version.mapping).describe()}")
        if not version.is_ready:
            self.stdout.write(f"Rows imported: 0 ({report.get('valid_examples', 0)} of "
                              f"{report.get('examples', 0)} examples valid)")
        elif getattr(version, "deduplicated", False):
            self.stdout.write(f"Rows imported: 0 (the same content is already {version.ref}, id {version.pk}; "
                              "no new version)")
        else:
            skipped = report.get("skipped_examples", 0)
            extra = f"; {skipped} invalid row(s) skipped, listed in the report" if skipped else ""
            self.stdout.write(f"Rows imported: {version.row_count} as {version.ref} (id {version.pk}) "
                              f"in team {version.dataset.team.name}{extra}")
        self.stdout.write(f"Report: {report.get('error_count', 0)} error(s), {report.get('warning_count', 0)} "
                          f"warning(s)")
        for line in report_lines(version, limit=opts["max_issues"]):
            self.stdout.write(line)
        if not version.is_ready:
            hint = "" if opts["skip_invalid"] else " (--skip-invalid imports the valid rows)"
            raise CommandError(f"Import failed with {version.error_count} error(s); kept as failed version "
                               f"{version.ref} (id {version.pk}), nothing was imported{hint}.")
        stats = version.stats or {}
        tokens = next(iter((stats.get("tokens") or {}).values()), None)
        if tokens and tokens.get("count"):
            self.stdout.write(f"Tokens per example: min {tokens['min']}, median {tokens['median']}, "
                              f"p95 {tokens['p95']}, max {tokens['max']} (limit {tokens.get('limit')})")
        if stats.get("labels"):
            self.stdout.write("Labels: " + ", ".join(f"{k} {v}" for k, v in stats["labels"].items()))


def format_how(report: dict) -> str:
    """``given``, ``detected from line 1: it has "messages"``, or why it is unknown."""
    if report.get("format_reason"):
        return report["format_reason"]
    if report.get("format_given"):
        return "given"
    if report.get("format_detected"):
        return "detected"
    return "not detected"
