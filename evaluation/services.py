"""Business rules for evaluation runs and blind A/B reviews.

The queue, claim, supervised child, cancel and crash recovery are ``jobs.runtime``; these services add the
evaluation's own checks.

Blindness rule: which side of a pair is the adapter is revealed (in ``review_results`` and the pair
listings) only once the review is **closed**. Closing is a write action of the team (typically the run's
owner) and ends voting; nobody, the owner included, sees the mapping while votes can still be cast, so an
owner who also reviews stays blind.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict

from django.db import IntegrityError, transaction
from django.utils import timezone

from accounts.models import Membership
from accounts.visibility import acting_user, as_principal, get_visible, require_write, resolve_team, visible_to
from core.csv_export import to_csv
from core.errors import ApplicationError, Conflict, NotFound
from datasets_app.models import DatasetVersion
from datasets_app.services import dataset_version_get, iter_records, preference_version_create
from evaluation import metrics as m
from evaluation.models import METRIC_CHOICES, PAIR_METRICS, EvaluationRun, EvaluationSample, Review, ReviewPair, Vote
from evaluation.runner import split_prompt
from jobs import runtime
from jobs import services as job_services
from jobs.models import JobStatus
from jobs.services import job_check_priority, job_check_quota
from training.lifecycle import origin_task
from training.models import Adapter, TrainingTask
from training.services import adapter_get, preference_task_create

DEFAULT_METRICS = ("perplexity", "samples", "style", "overlap")
GENERATION_KEYS = {"max_new_tokens": int, "temperature": float, "top_p": float, "seed": int, "n_samples": int,
                   "max_seq_length": int, "batch_size": int}


def _clean_metrics(metrics, adapter: Adapter, version: DatasetVersion | None = None) -> list[str]:
    if adapter.kind == Adapter.Kind.CLASSIFIER:
        return ["classifier"]
    pairs = version is not None and version.kind == "preference"
    if metrics in (None, "", []):
        return list(PAIR_METRICS) if pairs else list(DEFAULT_METRICS)
    if isinstance(metrics, str):
        metrics = [x.strip() for x in metrics.split(",") if x.strip()]
    aliases = {"ppl": "perplexity", "sample": "samples"}
    out = []
    for name in metrics:
        name = aliases.get(str(name), str(name))
        if name not in METRIC_CHOICES or name == "classifier":
            raise ApplicationError(f"Unknown metric {name!r}; choose from perplexity, samples, style, overlap, "
                                   "preference.", code="invalid_parameter", param="metrics")
        if version is not None and (name in PAIR_METRICS) != pairs:
            raise ApplicationError(
                f"Metric {name!r} needs " + ("a preference dataset (prompt, chosen, rejected)" if name in PAIR_METRICS
                                             else "chat data") + f"; dataset format {version.format!r} holds "
                + ("preference pairs (metric preference)." if pairs else "other data."),
                code="invalid_parameter", param="metrics")
        if name not in out:
            out.append(name)
    return out


def _clean_generation(generation: dict | None) -> dict:
    out = {}
    for key, value in (generation or {}).items():
        if key not in GENERATION_KEYS:
            raise ApplicationError(f"Unknown generation setting {key!r}.", code="invalid_parameter",
                                   param=f"generation.{key}")
        if value is None:
            continue
        try:
            out[key] = GENERATION_KEYS[key](value)
        except (TypeError, ValueError, OverflowError):
            raise ApplicationError(f"generation.{key} must be a number.", code="invalid_parameter",
                                   param=f"generation.{key}") from None
    for key in ("max_new_tokens", "n_samples", "max_seq_length", "batch_size"):
        if key in out and not 1 <= out[key] <= 100_000:
            raise ApplicationError(f"generation.{key} is out of range.", code="invalid_parameter",
                                   param=f"generation.{key}")
    if "seed" in out and not 0 <= out["seed"] < 2**31:
        raise ApplicationError("generation.seed must be from 0 to 2**31-1.", code="invalid_parameter",
                               param="generation.seed")
    if "temperature" in out and not 0 <= out["temperature"] <= 5:
        raise ApplicationError("generation.temperature must be between 0 and 5.", code="invalid_parameter",
                               param="generation.temperature")
    if "top_p" in out and not 0 < out["top_p"] <= 1:
        raise ApplicationError("generation.top_p must be in (0, 1].", code="invalid_parameter",
                               param="generation.top_p")
    return out


def default_dataset(adapter: Adapter):
    """The validation set of the job that produced the adapter, else its training set (None when unknown)."""
    task = origin_task(adapter)
    if task is None or not hasattr(task, "train_version"):
        return None
    return task.validation_version or task.train_version


def evaluation_run_create(*, user, adapter: Adapter | str | int, dataset=None, other_adapter=None, metrics=None,
                          generation: dict | None = None, name: str | None = None, team=None,
                          priority: int = 0) -> EvaluationRun:
    """Validate, create a queued run, wake a worker on commit."""
    if not isinstance(adapter, Adapter):
        adapter = adapter_get(user=user, ref=adapter)
    else:
        adapter = adapter_get(user=user, ref=adapter.pk)
    team = resolve_team(user, team if team is not None else adapter.team)
    if adapter.team_id != team.pk:
        raise NotFound(f"Adapter {adapter.name!r} not found.", code="adapter_not_found", param="adapter")
    other = None
    if other_adapter not in (None, ""):
        other = adapter_get(user=user, ref=other_adapter.pk if isinstance(other_adapter, Adapter) else other_adapter)
        if other.base_model_id != adapter.base_model_id or other.pk == adapter.pk:
            raise ApplicationError("The second adapter must be a different adapter of the same base model.",
                                   code="invalid_parameter", param="other_adapter")
    if dataset in (None, ""):
        version = default_dataset(adapter)
        if version is None:
            raise ApplicationError(f"Adapter {adapter.name!r} has no training task to take a dataset from: "
                                   "choose one.", code="invalid_parameter", param="dataset")
    else:
        version = dataset_version_get(user=user, ref=dataset, require_ready=True)
    if version.dataset.team_id != team.pk:
        raise NotFound("Dataset version not found.", code="dataset_version_not_found", param="dataset")
    chosen = _clean_metrics(metrics, adapter, version)
    gen = _clean_generation(generation)
    priority = job_check_priority(priority)
    name = (name or "").strip() or f"eval-{adapter.name}-{version.ref}"
    with transaction.atomic():
        job_check_quota(team)
        run = EvaluationRun.objects.create(
            name=name[:200], team=team, created_by=acting_user(user), adapter=adapter, other_adapter=other,
            dataset_version=version, metric_names=chosen, generation=gen, priority=priority,
            seed=gen.get("seed", 0), status=JobStatus.QUEUED, queued_at=timezone.now())
        runtime.add_event(run, f"Created: {', '.join(chosen)} on {version.ref} for adapter {adapter.name}"
                            f" vs {other.name if other else 'its base model'}.")
        runtime.enqueue(run)
    return run


def evaluation_run_list(*, user, team: str | None = None, status: str | None = None, adapter=None):
    qs = visible_to(user, EvaluationRun.objects.all()).select_related("team", "adapter", "other_adapter",
                                                                        "dataset_version__dataset")
    if team:
        qs = qs.filter(team__name=team)
    if status:
        qs = qs.filter(status=status)
    if adapter:
        digits = str(adapter).isdigit() and len(str(adapter)) < 18
        qs = qs.filter(adapter_id=int(adapter)) if digits else qs.filter(adapter__name=str(adapter))
    return qs


def _pk(ref) -> int:
    pk = int(ref)
    if not 0 < pk < 2**63:
        raise ValueError(pk)
    return pk


def evaluation_run_get(*, user, ref: str | int) -> EvaluationRun:
    try:
        return get_visible(user, EvaluationRun.objects.select_related(
            "team", "adapter__base_model", "other_adapter", "dataset_version__dataset"), pk=_pk(ref))
    except (NotFound, ValueError):
        raise NotFound(f"Evaluation run {ref!r} not found.", code="evaluation_not_found") from None


def evaluation_run_cancel(*, user, run: EvaluationRun) -> EvaluationRun:
    return job_services.job_cancel(user=user, job=run)


def evaluation_samples(*, run: EvaluationRun):
    return EvaluationSample.objects.filter(run=run).order_by("index")


# ================================================================================================ reviews

def review_create(*, user, run: EvaluationRun, n_pairs: int | None = None, seed: int | None = None) -> Review:
    """Pairs from the run's samples; the adapter's side is drawn per pair (balanced, then shuffled by seed)."""
    require_write(user, run)
    if run.status != JobStatus.SUCCEEDED:
        raise Conflict(f"Evaluation run {run.pk} is {run.status}; review a succeeded run.", code="invalid_state")
    samples = list(evaluation_samples(run=run))
    if not samples:
        raise Conflict("The run has no generation samples to review.", code="no_samples")
    seed = random.SystemRandom().randrange(2**31) if seed is None else int(seed)
    if not 0 <= seed < 2**31:
        raise ApplicationError("seed must be from 0 to 2**31-1.", code="invalid_parameter", param="seed")
    rng = random.Random(seed)
    if n_pairs is not None:
        if n_pairs < 1:
            raise ApplicationError("n_pairs must be at least 1.", code="invalid_parameter", param="n_pairs")
        samples = rng.sample(samples, min(n_pairs, len(samples)))
    rng.shuffle(samples)
    # Exactly half (rounded at random) of the pairs put the adapter on A, in a random order.
    sides = ["a"] * (len(samples) // 2) + ["b"] * (len(samples) // 2)
    if len(samples) % 2:
        sides.append(rng.choice("ab"))
    rng.shuffle(sides)
    with transaction.atomic():
        review = Review.objects.create(run=run, created_by=acting_user(user), seed=seed)
        ReviewPair.objects.bulk_create([
            ReviewPair(review=review, sample=s, order=i, prompt=s.prompt,
                       answer_a=s.adapter_answer if side == "a" else s.base_answer,
                       answer_b=s.base_answer if side == "a" else s.adapter_answer, adapter_side=side)
            for i, (s, side) in enumerate(zip(samples, sides, strict=True))])
    return review


def review_list(*, user, run: EvaluationRun | None = None):
    qs = visible_to(user, Review.objects.select_related("run"), team_field="run__team")
    return qs.filter(run=run) if run is not None else qs


def review_get(*, user, ref: str | int) -> Review:
    try:
        return get_visible(user, Review.objects.select_related("run__team"), team_field="run__team", pk=_pk(ref))
    except (NotFound, ValueError):
        raise NotFound(f"Review {ref!r} not found.", code="review_not_found") from None


def review_close(*, user, review: Review) -> Review:
    require_write(user, review.run)
    if review.status == Review.Status.CLOSED:
        raise Conflict("The review is already closed.", code="invalid_state")
    review.status, review.closed_at = Review.Status.CLOSED, timezone.now()
    review.save(update_fields=["status", "closed_at"])
    return review


def is_revealed(review: Review) -> bool:
    return review.status == Review.Status.CLOSED


def review_next_pair(*, user, review: Review) -> ReviewPair | None:
    """The first pair this reviewer has not voted on (each reviewer sees each pair once)."""
    return review.pairs.exclude(votes__reviewer=acting_user(user)).order_by("order").first()


def _require_member(user, review: Review) -> None:
    principal = as_principal(user)
    team_id = review.run.team_id
    if principal.team is not None and principal.team.pk != team_id:
        raise NotFound("Review not found.", code="review_not_found")
    if not Membership.objects.filter(team_id=team_id, user=principal.user).exists():
        raise NotFound("Review not found.", code="review_not_found")


def vote_cast(*, user, pair: ReviewPair | int, choice: str, comment: str = "") -> Vote:
    """One vote per reviewer and pair (a second one is a 409); only members of the run's team vote."""
    if not isinstance(pair, ReviewPair):
        pair = ReviewPair.objects.select_related("review__run").filter(pk=pair).first() \
            if 0 < pair < 2**63 else None
        if pair is None:
            raise NotFound("Pair not found.", code="pair_not_found")
    review = pair.review
    _require_member(user, review)
    if review.status != Review.Status.OPEN:
        raise Conflict("Voting on this review is closed.", code="review_closed")
    if choice not in Vote.Choice.values:
        raise ApplicationError("choice must be 'a', 'b' or 'tie'.", code="invalid_parameter", param="choice")
    try:
        with transaction.atomic():
            return Vote.objects.create(pair=pair, reviewer=acting_user(user), choice=choice, comment=comment or "")
    except IntegrityError:
        raise Conflict("You already voted on this pair.", code="already_voted", param="pair") from None


def review_win_rate(review: Review) -> float | None:
    """The adapter's win rate in a review (ties count half), from its pairs and their votes: prefetch
    ``pairs__votes`` to compute it for a whole list of reviews in a constant number of queries."""
    wins = ties = total = 0
    for pair in review.pairs.all():
        for vote in pair.votes.all():
            total += 1
            wins += vote.choice == pair.adapter_side
            ties += vote.choice == Vote.Choice.TIE
    return m.win_rate(wins, total - wins - ties, ties)["win_rate"]


def review_results(*, review: Review) -> dict:
    """Vote counts always; the adapter's win rate (95% Wilson CI), per-reviewer counts and agreement only
    once the review is closed (see the module docstring)."""
    votes = list(Vote.objects.filter(pair__review=review).select_related("pair", "reviewer"))
    out = {"review": review.pk, "run": review.run_id, "status": review.status, "pairs": review.pairs.count(),
           "votes": len(votes), "revealed": is_revealed(review),
           "choices": dict(Counter(v.choice for v in votes))}
    by_pair = defaultdict(list)
    for v in votes:
        by_pair[v.pair_id].append(v.choice)
    out["agreement"] = m.pairwise_agreement(by_pair.values())
    if not is_revealed(review):
        return out
    wins = sum(1 for v in votes if v.choice == v.pair.adapter_side)
    ties = sum(1 for v in votes if v.choice == Vote.Choice.TIE)
    out["adapter"] = m.win_rate(wins, len(votes) - wins - ties, ties)
    per = defaultdict(Counter)
    for v in votes:
        per[v.reviewer.get_username()]["adapter" if v.choice == v.pair.adapter_side else
                                       "tie" if v.choice == Vote.Choice.TIE else "baseline"] += 1
    out["per_reviewer"] = {k: dict(c) for k, c in per.items()}
    return out


def votes_csv(*, review: Review) -> str:
    reveal = is_revealed(review)
    header = ["pair", "reviewer", "choice", "comment", "created_at"] + (["adapter_side"] if reveal else [])
    votes = Vote.objects.filter(pair__review=review).select_related("pair", "reviewer").order_by("pair__order", "id")
    # Comments and usernames are user input: to_csv escapes cells a spreadsheet would read as formulas.
    return to_csv(header, ([v.pair.order, v.reviewer.get_username(), v.choice, v.comment, v.created_at.isoformat()]
                           + ([v.pair.adapter_side] if reveal else []) for v in votes))


# ================================================================================================ feedback loop

PREFERENCE_TRAIN_TARGETS = ("adapter", "baseline")


def _review_prompts(run: EvaluationRun) -> list[list[dict]]:
    """The prompt messages of the run's samples, by sample index (as ``runner.generate_samples`` chose them)."""
    return [p[0] for p in (split_prompt(r) for r in iter_records(run.dataset_version)) if p is not None]


def _model_info(run: EvaluationRun, side: str) -> dict:
    if side == "adapter":
        return {"role": "adapter", "adapter": run.adapter.pk, "name": run.adapter.name,
                "base_model": run.adapter.base_model.name}
    if run.other_adapter_id:
        return {"role": "baseline", "adapter": run.other_adapter.pk, "name": run.other_adapter.name,
                "base_model": run.other_adapter.base_model.name}
    return {"role": "baseline", "adapter": None, "name": run.adapter.base_model.name,
            "base_model": run.adapter.base_model.name}


def review_preference_rows(*, review: Review) -> tuple[list[dict], list[dict], dict]:
    """(rows, their lineage, counts): each vote of the closed review a pair, the winner chosen and the loser rejected;
    ties, and pairs whose two answers are the same text, are left out."""
    run = review.run
    prompts = _review_prompts(run)
    votes = Vote.objects.filter(pair__review=review).select_related("pair", "pair__sample", "reviewer") \
        .order_by("pair__order", "id")
    rows: list[dict] = []
    lineage: list[dict] = []
    counts = Counter()
    for vote in votes:
        pair = vote.pair
        if vote.choice == Vote.Choice.TIE:
            counts["ties_left_out"] += 1
            continue
        if pair.answer_a.strip() == pair.answer_b.strip():
            counts["identical_left_out"] += 1
            continue
        winner, loser = (pair.answer_a, pair.answer_b) if vote.choice == Vote.Choice.A else (pair.answer_b,
                                                                                               pair.answer_a)
        chosen_side = "adapter" if vote.choice == pair.adapter_side else "baseline"
        sample_index = pair.sample.index if pair.sample_id else None
        prompt = prompts[sample_index] if sample_index is not None and sample_index < len(prompts) else \
            [{"role": "user", "content": pair.prompt}]
        rows.append({"prompt": prompt, "chosen": [{"role": "assistant", "content": winner}],
                     "rejected": [{"role": "assistant", "content": loser}]})
        lineage.append({"row": len(rows), "pair": pair.pk, "pair_order": pair.order, "vote": vote.pk,
                        "reviewer": vote.reviewer.get_username(), "prompt": pair.prompt, "sample": sample_index,
                        "chosen": chosen_side, "rejected": "baseline" if chosen_side == "adapter" else "adapter"})
        counts[f"{chosen_side}_won"] += 1
    return rows, lineage, dict(counts)


def review_preference_version_create(*, user, review: Review, name: str | None = None) -> DatasetVersion:
    """A preference dataset version built from a closed blind A/B review, with its lineage on the version
    (``report["lineage"]``: the review, the run, the two models and where every row came from)."""
    require_write(user, review.run)
    if review.status != Review.Status.CLOSED:
        raise Conflict("Close the review first: its votes become training data only once voting has ended.",
                       code="invalid_state", param="review")
    rows, lineage, counts = review_preference_rows(review=review)
    run = review.run
    return preference_version_create(
        user=user, team=run.team, name=name or f"review-{review.pk}-preferences", rows=rows,
        filename=f"review-{review.pk}.jsonl",
        description=f"Preference pairs from the votes of review {review.pk} of evaluation run {run.name!r}.",
        lineage={"source": "review", "review": review.pk, "run": run.pk, "run_name": run.name,
                 "dataset_version": run.dataset_version_id,
                 "closed_at": review.closed_at.isoformat() if review.closed_at else None,
                 "models": {"adapter": _model_info(run, "adapter"), "baseline": _model_info(run, "baseline")},
                 "counts": counts, "pairs": lineage},
        too_few=f"The review has {len(rows)} decided votes (ties and identical answers are left out)",
        param="review")


def review_preference_task_create(*, user, version: DatasetVersion, train: str = "adapter", name: str | None = None,
                                  params: dict | None = None, method: str = "dpo") -> TrainingTask:
    """Queue a preference task (DPO by default) on a version built from a review: on the run's adapter
    (``train="adapter"``) or on its baseline (the other adapter, or a fresh adapter on the base model)."""
    lineage = (version.report or {}).get("lineage") or {}
    if lineage.get("source") != "review":
        raise ApplicationError(f"Dataset version {version.ref} was not built from a review.",
                               code="invalid_parameter", param="dataset")
    if train not in PREFERENCE_TRAIN_TARGETS:
        raise ApplicationError("train must be 'adapter' or 'baseline'.", code="invalid_parameter", param="train")
    run = EvaluationRun.objects.select_related("adapter__base_model", "other_adapter", "team").get(
        pk=lineage["run"])
    start = run.adapter if train == "adapter" else run.other_adapter
    base = run.adapter.base_model
    label = start.name if start else base.name
    return preference_task_create(user=user, version=version, base_model=base, start_adapter=start,
                                  name=name or f"{label}-{method}-review-{lineage['review']}", params=params,
                                  method=method, metadata={"review": str(lineage["review"]),
                                                           "evaluation_run": str(run.pk), "trained": train})


def review_to_preferences(*, user, review: Review, name: str | None = None, train: str | None = None,
                          params: dict | None = None) -> tuple[DatasetVersion, TrainingTask | None]:
    """The feedback loop in one action: the closed review's votes -> a preference version (-> a DPO task)."""
    if train is not None and train not in PREFERENCE_TRAIN_TARGETS:
        raise ApplicationError("train must be 'adapter' or 'baseline'.", code="invalid_parameter", param="train")
    with transaction.atomic():
        version = review_preference_version_create(user=user, review=review, name=name)
        task = review_preference_task_create(user=user, version=version, train=train, params=params) if train \
            else None
    return version, task
