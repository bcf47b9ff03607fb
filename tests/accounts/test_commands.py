from __future__ import annotations

import io

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command

from accounts.models import Membership, Team
from accounts.services import api_token_authenticate

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def root(django_user_model):
    """Commands act as a real user: without --user and outside a team, the first superuser."""
    return django_user_model.objects.create_superuser("root", password="x")


def run(*args) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command(*args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def test_create_team_and_refuse_duplicate_or_bad_name():
    run("create_team", "nlp")
    assert Team.objects.filter(name="nlp").exists()
    with pytest.raises(CommandError, match="already exists"):
        run("create_team", "nlp")
    with pytest.raises(CommandError, match="lowercase"):
        run("create_team", "Bad Name!")


def test_only_superusers_create_teams_even_from_the_shell():
    run("create_team", "nlp")
    run("add_member", "nlp", "ann", "--role", "admin")
    with pytest.raises(CommandError, match="Only superusers create teams"):
        run("create_team", "vision", "--user", "ann")
    assert not Team.objects.filter(name="vision").exists()


def test_add_member_acts_as_the_team_admin_and_a_member_cannot_manage():
    run("create_team", "nlp")
    run("add_member", "nlp", "ann", "--role", "admin")
    run("add_member", "nlp", "bob", "--role", "member")
    run("add_member", "nlp", "carl", "--role", "viewer")  # acts as ann, the team's first admin
    with pytest.raises(CommandError, match="Only team admins"):
        run("add_member", "nlp", "dora", "--user", "bob")
    assert not get_user_model().objects.filter(username="dora").exists()


def test_add_member_creates_user_with_unusable_password_and_staff_access():
    run("create_team", "nlp")
    out, _ = run("add_member", "nlp", "bob", "--role", "viewer")
    assert "Created user bob" in out
    bob = get_user_model().objects.get(username="bob")
    assert not bob.has_usable_password()
    assert bob.is_staff and not bob.is_superuser
    assert bob.has_perm("catalog.view_basemodel")
    assert not bob.has_perm("catalog.change_basemodel")
    assert Membership.objects.get(user=bob).role == "viewer"


def test_add_member_changes_role_and_permissions_follow():
    run("create_team", "nlp")
    run("add_member", "nlp", "bob", "--role", "viewer", "--password", "s3cret-Pass-42")
    bob = get_user_model().objects.get(username="bob")
    assert bob.check_password("s3cret-Pass-42")
    run("add_member", "nlp", "bob", "--role", "admin")
    bob = get_user_model().objects.get(username="bob")
    assert Membership.objects.get(user=bob).role == "admin"
    assert bob.has_perm("catalog.change_basemodel") and bob.has_perm("accounts.add_membership")


def test_add_member_unknown_team_is_a_clean_error():
    with pytest.raises(CommandError, match="Team 'nope' not found"):
        run("add_member", "nope", "bob")


def test_create_api_token_prints_the_token_alone_on_the_last_line():
    run("create_team", "nlp")
    run("add_member", "nlp", "bob")
    out, err = run("create_api_token", "bob", "--team", "nlp", "--expires-days", "7")
    secret = out.strip().splitlines()[-1]
    assert secret.startswith("lst_") and " " not in secret
    assert "not shown again" in err
    token = api_token_authenticate(secret)
    assert token is not None and token.team.name == "nlp" and token.expires_at is not None


def test_create_api_token_refuses_a_team_the_user_is_not_in():
    run("create_team", "nlp")
    run("create_team", "vision")
    run("add_member", "nlp", "bob")
    with pytest.raises(CommandError, match="not a member"):
        run("create_api_token", "bob", "--team", "vision")
