"""Teams in the admin: a new team goes through team_create (superusers only, the service's name rule); a
team's name is fixed once created, because model ids that clients saved contain it."""

from __future__ import annotations

import pytest

from accounts.models import Team

pytestmark = pytest.mark.django_db


def _management(response) -> dict:
    data = {}
    for inline in response.context["inline_admin_formsets"]:
        formset = inline.formset
        for name in formset.management_form.fields:
            data[f"{formset.prefix}-{name}"] = formset.management_form[name].value()
        for sub in formset.forms:
            for name in sub.fields:
                value = sub[name].value()
                if value is not None:
                    data[sub.add_prefix(name)] = value
    return data


def test_a_superuser_adds_a_team_through_the_service(client, django_user_model, make_team, make_user):
    root = django_user_model.objects.create_superuser("root", password="x")
    client.force_login(root)
    page = client.get("/admin/accounts/team/add/")
    data = {**_management(page), "name": "vision", "display_name": ""}
    response = client.post("/admin/accounts/team/add/", data)
    assert response.status_code == 302, response.content.decode()[:3000]
    assert Team.objects.get(name="vision").display_name == "vision"  # the service's default
    bad = client.post("/admin/accounts/team/add/", {**data, "name": "Upper"})  # a slug, not a team name
    assert bad.status_code == 200, bad.status_code
    assert "lowercase" in str(bad.context["adminform"].form.errors), bad.context["adminform"].form.errors
    ada = make_user("ada", make_team("alpha"), "admin")
    client.force_login(ada)
    assert client.post("/admin/accounts/team/add/", {**data, "name": "mine"}).status_code == 403
    assert not Team.objects.filter(name="mine").exists()


def test_a_team_admin_cannot_rename_the_team(client, make_team, make_user):
    alpha = make_team("alpha")
    ada = make_user("ada", alpha, "admin")
    client.force_login(ada)
    url = f"/admin/accounts/team/{alpha.pk}/change/"
    page = client.get(url)
    assert page.status_code == 200
    data = {**_management(page), "name": "renamed", "display_name": "Alpha team"}
    response = client.post(url, data)
    assert response.status_code == 302, response.content.decode()[:3000]
    alpha.refresh_from_db()
    assert alpha.name == "alpha" and alpha.display_name == "Alpha team"
