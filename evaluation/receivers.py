"""The evaluation app's answers to the training app's signals: an evaluation queued when a task that asked
for one succeeds, and the evaluation section of an adapter's lineage."""

from __future__ import annotations

from django.db.models import Count

from core.errors import ApplicationError
from evaluation.models import Vote
from evaluation.services import evaluation_run_create
from training.models import Adapter, TrainingTask


def evaluate_trained_adapter(sender, *, task: TrainingTask, adapter: Adapter, **kwargs) -> str | None:
    if not task.evaluate_on_success:
        return None
    try:
        run = evaluation_run_create(user=task.created_by, adapter=adapter, team=task.team,
                                    metrics=list(task.evaluation_metrics or []) or None,
                                    name=f"eval-{adapter.name}")
    except ApplicationError as exc:  # e.g. the author left the team: the task stays succeeded, the log says why
        return f"No evaluation queued: {exc.message}"
    return f"Evaluation run {run.pk} queued ({', '.join(run.metric_names)} on {run.dataset_version.ref})."


def lineage_evaluations(sender, *, adapter: Adapter, **kwargs) -> dict:
    """The adapter's evaluation runs, newest first, each with its reviews and their vote counts."""
    # Vote counts of every review in one query (one query per review grew with the reviews).
    counts: dict[int, dict[str, int]] = {}
    for review_id, choice, n in (Vote.objects.filter(pair__review__run__adapter=adapter)
                                 .values_list("pair__review_id", "choice").annotate(n=Count("id"))
                                 .values_list("pair__review_id", "choice", "n")):
        counts.setdefault(review_id, {})[choice] = n
    evaluations = []
    for run in adapter.evaluation_runs.order_by("-created_at").prefetch_related("reviews"):
        reviews = [{"id": review.pk, "status": review.status, "created_at": review.created_at,
                    "votes": counts.get(review.pk, {})} for review in run.reviews.all()]
        evaluations.append({"id": run.pk, "name": run.name, "status": run.status, "metrics": run.metric_names,
                            "dataset_version": run.dataset_version_id, "summary": run.ppl_summary,
                            "results": {k: v for k, v in (run.results or {}).items() if k != "samples"},
                            "created_at": run.created_at, "reviews": reviews})
    return {"evaluations": evaluations}
