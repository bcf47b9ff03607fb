"""The evaluation job's child-process body, registered as the ``evaluation`` kind (``jobs.registry``).

Computes the chosen metric groups (``perplexity``, ``samples``, ``style``, ``overlap``; ``classifier`` for
classifier adapters) on the run's dataset version, stores the samples, and reports progress and events
through the shared ``JobContext`` (same queue, claim, heartbeat, cancel flag and crash recovery as training).
"""

from __future__ import annotations

import json
import logging
import threading
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

from django.conf import settings
from django.db import transaction

from core.errors import RateLimited
from datasets_app.services import iter_records
from evaluation import metrics as m
from evaluation.models import EvaluationRun, EvaluationSample
from jobs import runtime
from jobs.models import JobStatus
from jobs.runner import Cancelled, Outcome
from ml.classifier_data import classification_metrics, load_for_inference, predict_texts
from ml.hparams import DEFAULT_BETA
from ml.model import load_tokenizer, load_with_adapter, tokenizer_source
from ml.probe import resolve_device
from serving.client import engine_generate
from serving.inference import GenerationRequest, generate
from training.models import Adapter
from training.runner import RecipeRunner

log = logging.getLogger(__name__)

DEFAULT_GENERATION = {"max_new_tokens": 128, "temperature": 0.0, "top_p": 1.0, "seed": 0, "n_samples": 8,
                      "batch_size": 8}


def settings_for(run: EvaluationRun) -> dict:
    gen = {**DEFAULT_GENERATION, **(run.generation or {})}
    if not gen.get("max_seq_length"):
        gen["max_seq_length"] = (run.adapter.metrics or {}).get("max_seq_length") or \
            run.adapter.base_model.max_position_embeddings or 1024
    return gen


def _device() -> str:
    return resolve_device(settings.TRAINING_DEVICE)


def _tokenizer(adapter: Adapter):
    return load_tokenizer(tokenizer_source(adapter.path, adapter.base_model.path))


def split_prompt(record: dict) -> tuple[list[dict], str] | None:
    """(messages before the last assistant turn, that turn's content), or None for plain-text records."""
    messages = record.get("messages") or []
    last = max((i for i, msg in enumerate(messages) if msg.get("role") == "assistant"), default=None)
    if last is None or last == 0:
        return None
    return messages[:last], str(messages[last].get("content") or "")


def prompt_text(messages: list[dict]) -> str:
    return next((str(x.get("content") or "") for x in reversed(messages) if x.get("role") == "user"),
                str(messages[-1].get("content") or ""))


class Progress:
    def __init__(self, ctx: runtime.JobContext, total: int) -> None:
        self.ctx, self.total, self.step = ctx, max(1, total), 0
        ctx.update(step=0, total_steps=self.total)

    def advance(self, n: int = 1) -> None:
        self.step = min(self.total, self.step + n)
        self.ctx.update(step=self.step)
        if self.ctx.control() == "cancel":
            raise Cancelled


def compute_perplexity(run: EvaluationRun, records: list[dict], gen: dict, progress: Progress) -> dict:
    """Loss on assistant tokens for the baseline (base model, or the other adapter) and for the adapter."""
    import torch

    device = _device()
    tok = _tokenizer(run.adapter)
    examples, report = m.encode_for_loss(tok, records, max_seq_length=int(gen["max_seq_length"]))
    model = load_with_adapter(run.adapter.base_model.path, run.adapter.path, device=device, adapter_name="adapter")
    kwargs = {"pad_token_id": tok.pad_token_id, "batch_size": int(gen["batch_size"]), "device": device}
    if run.other_adapter_id:
        model.load_adapter(run.other_adapter.path, adapter_name="other")
        model.set_adapter("other")
        baseline = m.loss_on_examples(model, examples, **kwargs)
    else:
        with model.disable_adapter():
            baseline = m.loss_on_examples(model, examples, **kwargs)
    progress.advance()
    model.set_adapter("adapter")
    adapted = m.loss_on_examples(model, examples, **kwargs)
    progress.advance()
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    return {"base": baseline["perplexity"], "adapter": adapted["perplexity"],
            "base_loss": baseline["loss"], "adapter_loss": adapted["loss"], "tokens": adapted["tokens"],
            "relative_change": m.relative_change(baseline["perplexity"], adapted["perplexity"]),
            "baseline": run.baseline_label, "examples": report["examples"], "truncated": report["truncated"]}


def generate_samples(run: EvaluationRun, records: list[dict], gen: dict, progress: Progress) -> list[dict]:
    """Both answers (baseline and adapter) to the first ``n_samples`` prompts: through the model server when
    ``SERVING_URL`` is set (no second copy of the model in this process; ``batch_size`` requests in flight, batched
    there with everyone else's), else in this process one after another. Greedy answers are the same either way."""
    prompts = [p for p in (split_prompt(r) for r in records) if p is not None][: int(gen["n_samples"])]
    other = run.other_adapter if run.other_adapter_id else None
    sides = [(f"adapter-{other.pk}", other.path) if other else (None, None),
             (f"adapter-{run.adapter.pk}", run.adapter.path)]
    jobs = [(i, side, GenerationRequest(messages=messages, max_new_tokens=int(gen["max_new_tokens"]),
                                        temperature=float(gen["temperature"]), top_p=float(gen["top_p"]),
                                        seed=gen.get("seed")))
            for i, (messages, _reference) in enumerate(prompts) for side in (0, 1)]
    base_path = run.adapter.base_model.path
    answers: dict[tuple[int, int], str] = {}
    if settings.SERVING_URL:
        _generate_on_server(base_path, sides, jobs, answers, progress, in_flight=int(gen["batch_size"]))
    else:
        for i, side, req in jobs:
            answers[i, side] = generate(base_path, *sides[side], req).text
            if side == 1:
                progress.advance()
    rows = []
    for i, (messages, reference) in enumerate(prompts):
        baseline, answer = answers[i, 0], answers[i, 1]
        rows.append({"index": i, "prompt": prompt_text(messages), "reference": reference, "base_answer": baseline,
                     "adapter_answer": answer,
                     "metrics": {"base": m.overlap(baseline, reference), "adapter": m.overlap(answer, reference)}})
    return rows


def _generate_on_server(base_path: str, sides: list[tuple[str | None, str | None]], jobs: list[tuple],
                        answers: dict, progress: Progress, *, in_flight: int) -> None:
    """``jobs`` sent to the model server ``in_flight`` at a time; a full server (429) is waited for, as its
    ``Retry-After`` says, while the run can still be cancelled (checked every few seconds)."""
    stop = threading.Event()

    def one(side: int, req: GenerationRequest) -> str:
        key, path = sides[side]
        while True:
            try:
                return engine_generate(base_path=base_path, adapter_key=key, adapter_path=path, request=req).text
            except RateLimited as exc:
                if stop.wait(exc.retry_after):
                    raise Cancelled from None

    pool = ThreadPoolExecutor(max_workers=max(1, in_flight), thread_name_prefix="eval-samples")
    try:
        pending = {pool.submit(one, side, req): (i, side) for i, side, req in jobs}
        done_sides: dict[int, int] = {}
        while pending:
            finished, _ = wait(pending, timeout=5, return_when=FIRST_COMPLETED)
            for future in finished:
                i, side = pending.pop(future)
                answers[i, side] = future.result()  # a model server error fails the run with its message
                done_sides[i] = done_sides.get(i, 0) + 1
                if done_sides[i] == 2:
                    progress.advance()
            if not finished:
                progress.advance(0)  # raises Cancelled when the run was cancelled meanwhile
    finally:
        stop.set()
        pool.shutdown(wait=False, cancel_futures=True)


def compute_preference(run: EvaluationRun, records: list[dict], gen: dict, progress: Progress) -> dict:
    """DPO's implicit reward of the adapter against its reference on held-out preference pairs: reward accuracy
    (share of pairs whose chosen answer gets the higher reward) and mean margin. The reference is the other
    adapter when the run has one, else the adapter's own start adapter when it was trained from one, else the base
    model (the adapter disabled). Also each model's own log-probability accuracy (chosen more likely than
    rejected)."""
    import torch

    from ml.train.preference import encode_preference_rows, pair_logps, preference_scores, truncate_rows

    device = _device()
    tok = _tokenizer(run.adapter)
    rows, report = truncate_rows(encode_preference_rows(tok, records, "dpo"), int(gen["max_seq_length"]), "dpo")
    task = run.adapter.task
    beta = float(((task.resolved_params or {}).get("beta") if task else None) or DEFAULT_BETA)
    reference = run.other_adapter if run.other_adapter_id else (task.start_adapter if task else None)
    model = load_with_adapter(run.adapter.base_model.path, run.adapter.path, device=device, adapter_name="adapter")
    kwargs = {"pad_token_id": tok.pad_token_id, "batch_size": int(gen["batch_size"]), "device": device}
    if reference is not None:
        model.load_adapter(reference.path, adapter_name="reference")
        model.set_adapter("reference")
        ref = pair_logps(model, rows, **kwargs)
    else:
        with model.disable_adapter():
            ref = pair_logps(model, rows, **kwargs)
    progress.advance()
    model.set_adapter("adapter")
    policy = pair_logps(model, rows, **kwargs)
    progress.advance()
    del model
    if device == "cuda":
        torch.cuda.empty_cache()

    def logp_accuracy(scores: list[tuple[float, float]]) -> float:
        return sum(1 for c, r in scores if c > r) / max(len(scores), 1)

    return {**preference_scores(policy, ref, beta=beta),
            "reference": reference.name if reference is not None else run.adapter.base_model.name,
            "adapter_logp_accuracy": logp_accuracy(policy), "reference_logp_accuracy": logp_accuracy(ref),
            "truncated": report.truncated, "dropped": report.dropped_no_target}


def classifier_metrics(run: EvaluationRun, records: list[dict]) -> dict:
    """Accuracy, macro-F1, per-class table and confusion matrix (the classifier app's own functions)."""
    device = _device()
    model, tok, id2label = load_for_inference(run.adapter.path, run.adapter.base_model.path, device=device)
    rows = [r for r in records if "text" in r and "label" in r]
    labels = [id2label[i] for i in sorted(id2label)]
    index = {label: i for i, label in enumerate(labels)}
    rows = [r for r in rows if str(r["label"]) in index]
    preds = predict_texts(model, tok, id2label, [r["text"] for r in rows], device=device)
    return classification_metrics([index[str(r["label"])] for r in rows], [index[p["label"]] for p in preds], labels)


class EvaluationRunner(RecipeRunner):
    """Computes the run's metric groups; every ending is ``JobRunner``'s (a cancel raises ``Cancelled``)."""

    job: EvaluationRun

    def run(self) -> Outcome:
        ctx = self.ctx
        run = EvaluationRun.objects.select_related("adapter__base_model", "other_adapter", "dataset_version").get(
            pk=self.job.pk)
        gen = settings_for(run)
        chosen = list(run.metric_names or [])
        records = list(iter_records(run.dataset_version))
        results: dict = {"dataset_version": run.dataset_version_id, "records": len(records),
                         "generation": gen, "baseline": run.baseline_label}
        if run.adapter.kind == Adapter.Kind.CLASSIFIER:
            progress = Progress(ctx, 1)
            results["classifier"] = classifier_metrics(run, records)
            progress.advance()
        else:
            needs_samples = bool({"samples", "style", "overlap"} & set(chosen))
            n_prompts = min(int(gen["n_samples"]), sum(1 for r in records if split_prompt(r))) if needs_samples else 0
            progress = Progress(ctx, (2 if "perplexity" in chosen else 0) + (2 if "preference" in chosen else 0)
                                + n_prompts)
            if "preference" in chosen:
                ctx.event(f"Scoring {len(records)} preference pairs against the reference.")
                results["preference"] = compute_preference(run, records, gen, progress)
                pref = results["preference"]
                ctx.event(f"Reward accuracy {pref['reward_accuracy']:.3f}, mean margin {pref['reward_margin']:.4f} "
                          f"(reference {pref['reference']}, beta {pref['beta']:g}).", data=pref)
            if "perplexity" in chosen:
                ctx.event(f"Computing loss on {len(records)} records (max {gen['max_seq_length']} tokens).")
                results["perplexity"] = compute_perplexity(run, records, gen, progress)
                ppl = results["perplexity"]
                ctx.event(f"Perplexity {ppl['base']:.4g} ({run.baseline_label}) → {ppl['adapter']:.4g} (adapter).",
                          data=ppl)
            samples = []
            if needs_samples:
                where = (f"through the model server at {settings.SERVING_URL}, {gen['batch_size']} at a time"
                         if settings.SERVING_URL else "in this process")
                ctx.event(f"Generating answers for {n_prompts} prompts {where}.")
                samples = generate_samples(run, records, gen, progress)
                results["samples_generated_by"] = "model_server" if settings.SERVING_URL else "in_process"
                with transaction.atomic():
                    EvaluationSample.objects.filter(run=run).delete()
                    EvaluationSample.objects.bulk_create([EvaluationSample(run=run, **row) for row in samples])
            refs = [s["reference"] for s in samples]
            if "style" in chosen and samples:
                outputs = {"base": [s["base_answer"] for s in samples],
                           "adapter": [s["adapter_answer"] for s in samples]}
                results["style"] = m.style_report(outputs, refs)
                results["word_frequencies"] = m.word_comparison(outputs, refs)
            if "overlap" in chosen and samples:
                results["overlap"] = {
                    "base": m.mean_overlap((s["base_answer"], s["reference"]) for s in samples),
                    "adapter": m.mean_overlap((s["adapter_answer"], s["reference"]) for s in samples)}
            if samples:
                results["samples"] = len(samples)
        headline = {}
        if "perplexity" in results:
            headline = {"ppl_base": results["perplexity"]["base"], "ppl_adapter": results["perplexity"]["adapter"]}
        if "preference" in results:
            headline.update({"reward_accuracy": results["preference"]["reward_accuracy"],
                             "reward_margin": results["preference"]["reward_margin"]})
        if "classifier" in results:
            headline = {"accuracy": results["classifier"]["accuracy"], "macro_f1": results["classifier"]["macro_f1"]}
        _write_artefacts(run, results)
        return Outcome(JobStatus.SUCCEEDED, fields={"results": results, "metrics": headline, "device": _device()},
                       data=headline)


def _write_artefacts(run: EvaluationRun, results: dict) -> None:
    """results.json and samples.jsonl in the run's folder, next to its log."""
    folder = runtime.run_dir(run)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps(results, ensure_ascii=False, indent=2, default=str),
                                         encoding="utf-8")
    with (folder / "samples.jsonl").open("w", encoding="utf-8") as fh:
        for s in EvaluationSample.objects.filter(run=run).order_by("index"):
            fh.write(json.dumps({"prompt": s.prompt, "reference": s.reference, "base_answer": s.base_answer,
                                 "adapter_answer": s.adapter_answer, "metrics": s.metrics}, ensure_ascii=False)
                     + "\n")
