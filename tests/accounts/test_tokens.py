from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from accounts.models import ApiToken, Membership
from accounts.services import api_token_authenticate, api_token_create, api_token_revoke

pytestmark = pytest.mark.django_db


def test_token_secret_is_shown_once_and_only_its_hash_is_stored(make_team, make_user):
    team = make_team("alpha")
    alice = make_user("alice", team)
    token, secret = api_token_create(user=alice, team=team)
    row = ApiToken.objects.get(pk=token.pk)
    assert secret.startswith("lst_") and len(secret) > 40
    assert secret not in (row.token_hash, row.prefix) and row.token_hash != secret
    assert secret.startswith(row.prefix)


def test_valid_token_authenticates_the_api_and_records_last_use(make_team, make_user, token_for, bearer):
    team = make_team("alpha")
    alice = make_user("alice", team)
    secret = token_for(alice, team)
    response = bearer(secret).get("/api/me")
    assert response.status_code == 200
    assert response.json()["username"] == "alice"
    assert response.json()["token_team"] == "alpha"
    assert ApiToken.objects.get().last_used_at is not None


@pytest.mark.parametrize("header", [None, "Bearer lst_wrong-token", "Bearer ", "Basic abc", "Bearer " + "x" * 500])
def test_missing_or_wrong_token_is_401(client, make_team, make_user, header):
    make_user("alice", make_team("alpha"))
    kwargs = {"HTTP_AUTHORIZATION": header} if header is not None else {}
    response = client.get("/api/me", **kwargs)
    assert response.status_code == 401
    assert response.json()["code"] == "unauthenticated"


def test_revoked_token_is_refused_immediately(make_team, make_user, bearer):
    team = make_team("alpha")
    alice = make_user("alice", team)
    token, secret = api_token_create(user=alice, team=team)
    assert bearer(secret).get("/api/me").status_code == 200
    api_token_revoke(token=token)
    assert bearer(secret).get("/api/me").status_code == 401


def test_expired_token_is_refused(make_team, make_user, bearer):
    team = make_team("alpha")
    alice = make_user("alice", team)
    token, secret = api_token_create(user=alice, team=team, expires_days=1)
    assert api_token_authenticate(secret) is not None
    ApiToken.objects.filter(pk=token.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert bearer(secret).get("/api/me").status_code == 401


def test_token_stops_working_when_membership_ends(make_team, make_user, bearer):
    team = make_team("alpha")
    alice = make_user("alice", team)
    _token, secret = api_token_create(user=alice, team=team)
    Membership.objects.filter(user=alice).delete()
    assert bearer(secret).get("/api/me").status_code == 401


def test_inactive_user_token_is_refused(make_team, make_user, bearer):
    team = make_team("alpha")
    alice = make_user("alice", team)
    _token, secret = api_token_create(user=alice, team=team)
    alice.is_active = False
    alice.save()
    assert bearer(secret).get("/api/me").status_code == 401


def test_token_only_for_a_team_the_user_belongs_to(make_team, make_user):
    from core.errors import PermissionDenied

    alpha, beta = make_team("alpha"), make_team("beta")
    alice = make_user("alice", alpha)
    with pytest.raises(PermissionDenied):
        api_token_create(user=alice, team=beta)


def test_api_creates_and_revokes_own_tokens(make_team, make_user, token_for, bearer):
    team = make_team("alpha")
    alice = make_user("alice", team)
    c = bearer(token_for(alice, team))
    created = c.post("/api/tokens", {"team": "alpha", "name": "ci", "expires_days": 30},
                     content_type="application/json")
    assert created.status_code == 201, created.content
    secret = created.json()["token"]
    assert bearer(secret).get("/api/me").status_code == 200
    revoked = c.post(f"/api/tokens/{created.json()['id']}/revoke")
    assert revoked.status_code == 200 and revoked.json()["revoked_at"]
    assert bearer(secret).get("/api/me").status_code == 401


def test_api_token_expiry_out_of_range_names_the_field(make_team, make_user, token_for, bearer):
    team = make_team("alpha")
    alice = make_user("alice", team)
    response = bearer(token_for(alice, team)).post("/api/tokens", {"team": "alpha", "expires_days": 0},
                                                   content_type="application/json")
    assert response.status_code == 400
    assert response.json()["param"] == "expires_days"


def test_admin_and_api_list_the_same_tokens_and_the_admin_form_uses_the_services_rule(make_team, make_user,
                                                                                        token_for, bearer, client):
    alpha, beta = make_team("alpha"), make_team("beta")
    ada, mia, bob = make_user("ada", alpha, "admin"), make_user("mia", alpha, "member"), make_user("bob", beta)
    token_for(mia, alpha, name="mia-ci")
    token_for(bob, beta, name="bob-ci")
    listed = {t["name"] for t in bearer(token_for(ada, alpha, name="ada-ci")).get("/api/tokens").json()["items"]}
    assert listed == {"mia-ci", "ada-ci"}
    client.force_login(ada)
    page = client.get("/admin/accounts/apitoken/").content.decode()
    assert "mia-ci" in page and "ada-ci" in page and "bob-ci" not in page
    # A token for a team its user is not in: the form shows the service's refusal.
    response = client.post("/admin/accounts/apitoken/add/", {"user": ada.pk, "team": beta.pk, "name": "x"})
    assert response.status_code == 200
    token = ApiToken.objects.get(name="mia-ci")
    response = client.post(f"/admin/accounts/apitoken/{token.pk}/change/", {"name": "mia-ci-2"})
    assert response.status_code == 302
    assert ApiToken.objects.get(pk=token.pk).name == "mia-ci-2"
