"""Every /api/ list pages with ``?limit=&offset=``: 50 rows by default, never more than MAX_LIMIT per request."""

from __future__ import annotations

import pytest

from catalog.models import BaseModel
from core.pagination import DEFAULT_LIMIT, MAX_LIMIT

pytestmark = pytest.mark.django_db


@pytest.fixture
def many_models(make_team, make_user, token_for, bearer):
    team = make_team("alpha")
    user = make_user("mia", team, "member")
    BaseModel.objects.bulk_create(BaseModel(name=f"m{i:04d}", kind="causal-lm", path=f"/nowhere/{i}")
                                  for i in range(MAX_LIMIT + 20))
    return bearer(token_for(user, team))


def test_the_default_page_is_the_declared_size(many_models):
    body = many_models.get("/api/base-models").json()
    assert body["count"] == MAX_LIMIT + 20 and len(body["items"]) == DEFAULT_LIMIT == 50


def test_a_huge_limit_is_capped_to_the_declared_maximum(many_models):
    body = many_models.get("/api/base-models?limit=100000").json()
    assert body["count"] == MAX_LIMIT + 20 and len(body["items"]) == MAX_LIMIT == 500
    tail = many_models.get(f"/api/base-models?limit=100000&offset={MAX_LIMIT}").json()
    assert len(tail["items"]) == 20


def test_a_smaller_limit_is_honoured_and_a_nonsense_one_refused(many_models):
    assert len(many_models.get("/api/base-models?limit=7").json()["items"]) == 7
    response = many_models.get("/api/base-models?limit=0")
    assert 400 <= response.status_code < 500
    assert "limit" in response.content.decode()


def test_the_openapi_schema_declares_the_cap(client, django_user_model):
    client.force_login(django_user_model.objects.create_superuser("root", password="x"))
    spec = client.get("/api/openapi.json").json()
    params = spec["paths"]["/api/base-models"]["get"]["parameters"]
    limit = next(p for p in params if p["name"] == "limit")
    assert limit["schema"]["default"] == DEFAULT_LIMIT and str(MAX_LIMIT) in limit["schema"]["description"]
