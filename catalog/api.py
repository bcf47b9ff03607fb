"""/api/ endpoints for base models."""

# No `from __future__ import annotations` here: ninja resolves Query[...] and response types at import.
from ninja import Query, Router, Schema
from ninja.pagination import paginate

from accounts.auth import principal
from catalog import services
from catalog.models import BaseModel
from catalog.schemas import BaseModelOut, ScanOut
from core.pagination import Pagination
from core.schemas import ERRORS

router = Router(tags=["base models"])


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
    report = services.base_models_scan(user=principal(request))
    return {"rows": [vars(r) for r in report.rows]}


@router.get("/base-models/{ref}", response={200: BaseModelOut, **ERRORS})
def base_model_detail(request, ref: str):
    return services.base_model_get(user=principal(request), ref=ref, require_available=False)
