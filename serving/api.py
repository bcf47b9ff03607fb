"""/api/serving/preference-pairs: the chat playground's preference pairs, and a preference dataset built from them."""

# No `from __future__ import annotations` here: ninja resolves response types at import.
from ninja import Router, Status
from ninja.pagination import paginate

from accounts.auth import principal
from core.pagination import Pagination
from core.schemas import ErrorOut
from serving import services
from serving.schemas import PairPreferencesIn, PairPreferencesOut, PreferencePairOut

router = Router(tags=["serving"])
ERRORS = {400: ErrorOut, 401: ErrorOut, 403: ErrorOut, 404: ErrorOut, 409: ErrorOut, 429: ErrorOut}


@router.get("/serving/preference-pairs", response=list[PreferencePairOut])
@paginate(Pagination)
def pair_list(request, team: str | None = None):
    return services.preference_pair_list(user=principal(request), team=team)


@router.post("/serving/preference-pairs/preferences", response={201: PairPreferencesOut, **ERRORS})
def pair_preferences(request, payload: PairPreferencesIn):
    """The playground's feedback loop: the team's pairs (or the ones named) become a preference dataset version
    (preferred answer chosen, the other rejected; ties and incomplete pairs left out and counted) with its lineage;
    with ``train``, a DPO task is queued on it."""
    version, task = services.preference_pair_dataset_create(user=principal(request), team=payload.team,
                                                            pairs=payload.pairs, name=payload.name,
                                                            train=payload.train, params=payload.params)
    lineage = version.report.get("lineage", {})
    return Status(201, {"dataset_version_id": version.pk, "dataset_version": version.ref,
                        "pairs": version.row_count, "counts": lineage.get("counts", {}), "lineage": lineage,
                        "task_id": task.pk if task else None, "task_name": task.name if task else None})
