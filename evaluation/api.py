"""/api/evaluation/runs and /api/evaluation/reviews: evaluation runs (shared job machinery), samples, blind A/B reviews."""

# No `from __future__ import annotations` here: ninja resolves response types at import.
from django.http import HttpResponse
from ninja import Router, Status
from ninja.pagination import paginate

from accounts.auth import principal
from core.errors import NotFound
from core.pagination import Mapped, Pagination
from core.schemas import ErrorOut
from evaluation import services
from evaluation.schemas import (
    EvaluationRunIn,
    EvaluationRunOut,
    PairOut,
    ReviewIn,
    ReviewOut,
    ReviewPreferencesIn,
    ReviewPreferencesOut,
    SampleOut,
    VoteIn,
    VoteOut,
)

router = Router(tags=["evaluation"])
ERRORS = {400: ErrorOut, 401: ErrorOut, 403: ErrorOut, 404: ErrorOut, 409: ErrorOut}


@router.post("/evaluation/runs", response={201: EvaluationRunOut, **ERRORS})
def run_create(request, payload: EvaluationRunIn):
    run = services.evaluation_run_create(user=principal(request), adapter=payload.adapter, dataset=payload.dataset,
                                         other_adapter=payload.other_adapter, metrics=payload.metrics,
                                         generation=payload.generation, name=payload.name, team=payload.team,
                                         priority=payload.priority)
    return Status(201, EvaluationRunOut.from_run(run))


@router.get("/evaluation/runs", response=list[EvaluationRunOut])
@paginate(Pagination)
def run_list(request, team: str | None = None, status: str | None = None, adapter: str | None = None):
    qs = services.evaluation_run_list(user=principal(request), team=team, status=status, adapter=adapter)
    return Mapped(qs, EvaluationRunOut.from_run)  # the page is cut in SQL


@router.get("/evaluation/runs/{run_id}", response={200: EvaluationRunOut, **ERRORS})
def run_detail(request, run_id: int):
    return EvaluationRunOut.from_run(services.evaluation_run_get(user=principal(request), ref=run_id))


@router.post("/evaluation/runs/{run_id}/cancel", response={200: EvaluationRunOut, **ERRORS})
def run_cancel(request, run_id: int):
    who = principal(request)
    run = services.evaluation_run_cancel(user=who, run=services.evaluation_run_get(user=who, ref=run_id))
    return EvaluationRunOut.from_run(run)


@router.get("/evaluation/runs/{run_id}/samples", response={200: list[SampleOut], **ERRORS})
@paginate(Pagination)
def run_samples(request, run_id: int):
    return services.evaluation_samples(run=services.evaluation_run_get(user=principal(request), ref=run_id))


@router.post("/evaluation/runs/{run_id}/reviews", response={201: ReviewOut, **ERRORS})
def review_create(request, run_id: int, payload: ReviewIn):
    who = principal(request)
    run = services.evaluation_run_get(user=who, ref=run_id)
    return Status(201, services.review_create(user=who, run=run, n_pairs=payload.n_pairs, seed=payload.seed))


@router.get("/evaluation/reviews", response=list[ReviewOut])
@paginate(Pagination)
def review_list(request):
    return services.review_list(user=principal(request))


@router.get("/evaluation/reviews/{review_id}", response={200: ReviewOut, **ERRORS})
def review_detail(request, review_id: int):
    return services.review_get(user=principal(request), ref=review_id)


@router.get("/evaluation/reviews/{review_id}/pairs", response={200: list[PairOut], **ERRORS})
@paginate(Pagination)
def review_pairs(request, review_id: int):
    """The pairs without the hidden side (A/B order as shown to reviewers)."""
    return services.review_get(user=principal(request), ref=review_id).pairs.order_by("order")


@router.post("/evaluation/reviews/{review_id}/pairs/{pair_id}/vote", response={201: VoteOut, **ERRORS})
def vote(request, review_id: int, pair_id: int, payload: VoteIn):
    who = principal(request)
    review = services.review_get(user=who, ref=review_id)
    pair = review.pairs.filter(pk=pair_id).first() if 0 < pair_id < 2**63 else None
    if pair is None:
        raise NotFound("Pair not found.", code="pair_not_found")
    return Status(201, services.vote_cast(user=who, pair=pair, choice=payload.choice, comment=payload.comment))


@router.post("/evaluation/reviews/{review_id}/close", response={200: ReviewOut, **ERRORS})
def review_close(request, review_id: int):
    who = principal(request)
    return services.review_close(user=who, review=services.review_get(user=who, ref=review_id))


@router.get("/evaluation/reviews/{review_id}/results", response={200: dict, **ERRORS})
def review_results(request, review_id: int):
    who = principal(request)
    return services.review_results(review=services.review_get(user=who, ref=review_id))


@router.get("/evaluation/reviews/{review_id}/votes.csv", response={200: None, **ERRORS})
def review_votes_csv(request, review_id: int):
    review = services.review_get(user=principal(request), ref=review_id)
    response = HttpResponse(services.votes_csv(review=review), content_type="text/csv")
    response["Content-Disposition"] = f'attachment; filename="review-{review.pk}-votes.csv"'
    return response


@router.post("/evaluation/reviews/{review_id}/preferences", response={201: ReviewPreferencesOut, **ERRORS})
def review_preferences(request, review_id: int, payload: ReviewPreferencesIn):
    """The feedback loop: the closed review's votes become a preference dataset version (winner chosen, loser
    rejected, ties left out) with its lineage; with ``train``, a DPO task on that side is queued from it."""
    who = principal(request)
    review = services.review_get(user=who, ref=review_id)
    version, task = services.review_to_preferences(user=who, review=review, name=payload.name, train=payload.train,
                                                   params=payload.params)
    return Status(201, {"dataset_version_id": version.pk, "dataset_version": version.ref,
                        "pairs": version.row_count, "lineage": version.report.get("lineage", {}),
                        "task_id": task.pk if task else None, "task_name": task.name if task else None})
