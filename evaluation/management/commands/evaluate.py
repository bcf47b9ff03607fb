"""manage.py evaluate ADAPTER [--dataset D] [--metrics perplexity,samples,style,overlap] [--wait] [--json]."""

from __future__ import annotations

import json

from accounts.commands import add_user_argument, command_actor
from core.commands import ServiceCommand
from core.errors import ApplicationError
from evaluation.services import evaluation_run_create
from jobs import runtime
from jobs.cli import wait_with_progress


class Command(ServiceCommand):
    help = ("Evaluate an adapter against its base model (or --other-adapter) on a dataset version: queue the run, "
            "and with --wait follow it to the end (a worker runs it) or with --foreground run it here.")

    def add_arguments(self, parser):
        parser.add_argument("adapter_ref", nargs="?", metavar="ADAPTER", help="Adapter name or id.")
        parser.add_argument("--adapter", default=None, help="Adapter name or id (instead of ADAPTER).")
        parser.add_argument("--dataset", default=None, help="Dataset version (default: the task's validation set).")
        parser.add_argument("--other-adapter", default=None, help="Compare with this adapter instead of the base.")
        parser.add_argument("--metrics", default=None, help="Comma-separated: perplexity (ppl), samples, style, "
                                                             "overlap (default: all).")
        parser.add_argument("--samples", type=int, default=None, help="Number of generation samples.")
        parser.add_argument("--max-new-tokens", type=int, default=None)
        parser.add_argument("--wait", action="store_true", help="Show progress until the run ends.")
        parser.add_argument("--foreground", action="store_true", help="Run it in this process (no worker needed).")
        parser.add_argument("--json", action="store_true", help="Print the run's results as one JSON object.")
        parser.add_argument("--team", default=None, help="The adapter's team, whose first admin acts when --user "
                                                         "is left out (default: the first superuser).")
        add_user_argument(parser)

    def run(self, *args, **opts):
        ref = opts["adapter"] or opts["adapter_ref"]
        if not ref:
            raise ApplicationError("Name the adapter to evaluate.", param="adapter")
        generation = {k: v for k, v in (("n_samples", opts["samples"]), ("max_new_tokens", opts["max_new_tokens"]))
                      if v is not None}
        user = command_actor(username=opts["user"], team=opts["team"])
        run = evaluation_run_create(user=user, adapter=ref, dataset=opts["dataset"],
                                    other_adapter=opts["other_adapter"], metrics=opts["metrics"],
                                    generation=generation)
        self.stderr.write(f"Evaluation run {run.pk} queued: {', '.join(run.metric_names)}.")
        if opts["foreground"]:
            runtime.run_foreground(run)
        elif opts["wait"]:
            wait_with_progress(run, self.stderr._out)
        run.refresh_from_db()
        if opts["json"]:
            self.stdout.write(json.dumps({"id": run.pk, "status": run.status, **(run.results or {})},
                                         ensure_ascii=False, default=str))
        elif run.is_terminal:
            self.stdout.write(report_text(run))
        if run.status == "failed":
            raise ApplicationError(f"Evaluation run {run.pk} failed: {run.error_message}", code=run.error_code)


def report_text(run) -> str:
    lines = [f"Evaluation run {run.pk} ({run.status}) of {run.adapter.name} on {run.dataset_version.ref}"]
    ppl = (run.results or {}).get("perplexity")
    if ppl:
        change = ppl.get("relative_change")
        lines.append(f"  perplexity: {ppl['base']:.4g} ({ppl['baseline']}) -> {ppl['adapter']:.4g} (adapter)"
                     + (f", {change:+.1%}" if change is not None else "") + f" over {ppl['tokens']} tokens")
    for key in ("overlap",):
        if key in (run.results or {}):
            for side, row in run.results[key].items():
                lines.append(f"  {side}: exact {row['exact_match']:.2f}, char-F1 {row['char_f1']:.3f}, "
                             f"ROUGE-L {row['rouge_l']:.3f}")
    for sample in run.samples.all()[:2]:
        lines += [f"  Q: {sample.prompt}", f"    base:    {sample.base_answer}", f"    adapter: {sample.adapter_answer}"]
    return "\n".join(lines)
