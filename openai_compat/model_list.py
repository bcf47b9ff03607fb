"""/v1/models: the names a caller can chat with (``serving.services`` owns the grammar and the visibility)."""

# No `from __future__ import annotations`: ninja resolves the schemas at import.
from ninja import Router

from accounts.auth import principal
from openai_compat.ids import ts
from openai_compat.schemas import ModelList, ModelOut
from serving.services import chat_model_list, chat_model_resolve

router = Router(tags=["models"])


@router.get("/models", response=ModelList)
def model_list(request):
    data = [{"id": m.id, "created": ts(m.created), "owned_by": m.owned_by}
            for m in chat_model_list(user=principal(request))]
    return {"object": "list", "data": data, "has_more": False}


@router.get("/models/{model_id}", response=ModelOut)
def model_retrieve(request, model_id: str):
    resolved = chat_model_resolve(user=principal(request), name=model_id)
    return {"id": model_id, "created": ts(resolved.created), "owned_by": resolved.owner}
