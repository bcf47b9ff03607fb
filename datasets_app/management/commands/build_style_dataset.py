from __future__ import annotations

import sys

from django.core.management.base import CommandError
from tqdm import tqdm

from core.commands import ServiceCommand
from datasets_app import services
from datasets_app.management.commands._common import USER_HELP, actor_for, report_lines


class Command(ServiceCommand):
    help = ("Build a style corpus from SOURCE_DIR/**/*.md (with optional meta.json beside the articles): "
            "clean prose, chunks of --min-tokens..--max-tokens, three instruction templates per chunk "
            "(rewrite, continue, summarise-then-expand), registered as a dataset with train/validation "
            "versions and a stats JSON.")

    def add_arguments(self, parser):
        parser.add_argument("source_dir")
        parser.add_argument("--name", required=True)
        parser.add_argument("--team", required=True)
        parser.add_argument("--base-model", default=None,
                            help="Count tokens with this model's tokenizer (default: jieba words).")
        parser.add_argument("--min-tokens", type=int, default=300)
        parser.add_argument("--max-tokens", type=int, default=800)
        parser.add_argument("--val-ratio", type=float, default=0.05)
        parser.add_argument("--seed", type=int, default=42)
        parser.add_argument("--description", default="")
        parser.add_argument("--user", default=None, help=USER_HELP)

    def run(self, *args, **opts):
        who = actor_for(opts["user"], opts["team"])
        bar = tqdm(total=0, unit="article", file=sys.stderr, disable=None, dynamic_ncols=True)

        def progress(name: str, index: int, total: int) -> None:
            bar.total, bar.n = total, index
            bar.set_description(name[-40:] if name else "validating")
            bar.refresh()

        try:
            result = services.style_dataset_build(
                user=who, team=opts["team"], name=opts["name"], source_dir=opts["source_dir"],
                base_model=opts["base_model"], min_tokens=opts["min_tokens"], max_tokens=opts["max_tokens"],
                val_ratio=opts["val_ratio"], seed=opts["seed"], description=opts["description"], progress=progress)
        finally:
            bar.close()
        stats = result.stats
        out = self.stdout
        out.write(f"Articles: {stats['articles']} found, {stats['articles_used']} used, "
                  f"{stats['short_articles_skipped']} too short (under {stats['min_tokens']} tokens)")
        chunk = stats["chunk_tokens"]
        if chunk.get("count"):
            out.write(f"Chunks: {stats['chunks']} ({stats['counter']}: min {chunk['min']}, median {chunk['median']}, "
                      f"max {chunk['max']})")
        out.write("Examples: " + ", ".join(f"{k} {v}" for k, v in stats["per_template"].items())
                  + f" = {stats['examples']}")
        version = result.version
        if not version.is_ready:
            for line in report_lines(version, limit=20):
                out.write(line)
            raise CommandError(f"The generated examples failed validation ({version.error_count} error(s)); "
                               f"kept as failed version {version.ref}.")
        out.write(f"Registered: {version.ref} (all {version.row_count}), train {result.train.ref} "
                  f"({result.train.row_count}), validation {result.validation.ref} ({result.validation.row_count})")
        for line in report_lines(version, limit=10):
            out.write(line)
        out.write(f"Stats: {result.stats_path} (under DATA_DIR)")
