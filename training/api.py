"""/api/ endpoints for base models (tasks and adapters come with the training issue), and /v1/models."""

# No `from __future__ import annotations` here: ninja resolves Query[...] and response types at import.
from ninja import Query, Router, Schema
from ninja.pagination import paginate

from accounts.auth import principal
from accounts.visibility import team_ids
from core.errors import PermissionDenied
from core.pagination import Pagination
from core.schemas import ErrorOut
from training import services
from training.models import BaseModel
from training.schemas import BaseModelOut, OpenAIModelList, OpenAIModelOut, ScanOut

router = Router(tags=["base models"])
v1_router = Router(tags=["models"])
ERRORS = {400: ErrorOut, 401: ErrorOut, 403: ErrorOut, 404: ErrorOut, 409: ErrorOut}


class BaseModelFilter(Schema):
    kind: BaseModel.Kind | None = None
    available: bool | None = None


@router.get("/base-models", response=list[BaseModelOut])
@paginate(Pagination)
def base_model_list(request, filters: Query[BaseModelFilter]):
    return services.base_model_list(user=principal(request), kind=filters.kind,
                                    available=filters.available).select_related("team")


@router.post("/base-models/scan", response={200: ScanOut, **ERRORS})
def base_model_scan(request):
    """Rescan the configured model folders (not arbitrary paths: those are for the command line)."""
    who = principal(request)
    writable = team_ids(who, write=True)
    if writable is not None and not writable:
        raise PermissionDenied("Scanning needs a member or admin role in a team.")
    report = services.base_models_scan(user=who.user)
    return {"rows": [vars(r) for r in report.rows]}


@router.get("/base-models/{ref}", response={200: BaseModelOut, **ERRORS})
def base_model_detail(request, ref: str):
    return services.base_model_get(user=principal(request), ref=ref, require_available=False)


@v1_router.get("/models", response=OpenAIModelList)
def openai_model_list(request):
    rows = services.base_model_list(user=principal(request), available=True).select_related("team")
    data = [OpenAIModelOut(id=m.name, created=int(m.created_at.timestamp()),
                           owned_by=m.team.name if m.team_id else "system") for m in rows
            if m.kind == BaseModel.Kind.CAUSAL_LM]
    return {"object": "list", "data": data, "has_more": False}


@v1_router.get("/models/{model_id}", response={200: OpenAIModelOut, 404: dict})
def openai_model_detail(request, model_id: str):
    m = services.base_model_get(user=principal(request), ref=model_id, kind=BaseModel.Kind.CAUSAL_LM)
    return OpenAIModelOut(id=m.name, created=int(m.created_at.timestamp()),
                          owned_by=m.team.name if m.team_id else "system")
