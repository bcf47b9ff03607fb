"""One rule for who acts in a management command: ``--user`` if given, else the team's first admin when the
command works in a team, else the first superuser; always a real user row, never a stand-in."""

from __future__ import annotations

import io

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command

from accounts.commands import command_actor
from core.errors import ApplicationError, NotFound
from tests.training.conftest import tiny_model_dir  # noqa: F401 - the fixture

pytestmark = pytest.mark.django_db


@pytest.fixture
def people(make_team, make_user, django_user_model):
    alpha, beta = make_team("alpha"), make_team("beta")
    return {"alpha": alpha, "beta": beta,
            "root2": django_user_model.objects.create_superuser("root2", password="x"),
            "mia": make_user("mia", alpha, "member"),
            "ada": make_user("ada", alpha, "admin"),
            "abe": make_user("abe", alpha, "admin"),
            "bob": make_user("bob", beta, "member")}


def test_the_named_user_acts_whatever_the_team(people):
    assert command_actor(username="mia", team="alpha") == people["mia"]
    assert command_actor(username="bob", team="alpha") == people["bob"]  # visibility decides what bob may do


def test_without_a_user_the_teams_first_admin_acts(people):
    assert command_actor(username=None, team="alpha") == people["ada"]
    assert command_actor(username=None, team=people["alpha"]) == people["ada"]
    assert command_actor(username=None, team=people["alpha"].pk) == people["ada"]


def test_without_a_team_admin_or_a_team_the_first_superuser_acts(people, django_user_model):
    first = people["root2"]
    django_user_model.objects.create_superuser("root3", password="x")
    assert command_actor(username=None, team="beta") == first  # beta has no admin
    assert command_actor(username=None, team=None) == first
    assert type(command_actor(username=None, team=None)) is get_user_model()


def test_unknown_or_inactive_users_and_no_one_to_act_as_are_clean_errors(people, django_user_model):
    with pytest.raises(NotFound, match="'nobody' not found"):
        command_actor(username="nobody", team=None)
    django_user_model.objects.filter(username="mia").update(is_active=False)
    with pytest.raises(ApplicationError, match="inactive"):
        command_actor(username="mia", team=None)
    django_user_model.objects.filter(is_superuser=True).delete()
    with pytest.raises(ApplicationError, match="No user to act as") as exc:
        command_actor(username=None, team="beta")
    assert exc.value.param == "user"


def test_commands_of_every_app_use_the_rule(people, tiny_model_dir, tmp_path):  # noqa: F811 - the fixture
    """A command without --user in team alpha acts as its admin ada; with --user as that user (refused when
    read-only); without a team as the superuser."""
    from catalog.models import BaseModel
    from datasets_app.models import DatasetVersion

    def run(*args):
        call_command(*args, stdout=io.StringIO(), stderr=io.StringIO())

    path = tmp_path / "faq.jsonl"
    line = '{"messages":[{"role":"user","content":"q%s"},{"role":"assistant","content":"a"}]}\n'
    path.write_text("".join(line.replace("%s", str(i)) for i in range(12)))
    run("import_dataset", str(path), "--name", "faq", "--team", "alpha")
    assert DatasetVersion.objects.get(dataset__name="faq").created_by == people["ada"]
    get_user_model().objects.create_user("val")
    from accounts.services import membership_set

    membership_set(team=people["alpha"], user=get_user_model().objects.get(username="val"), role="viewer")
    with pytest.raises(CommandError, match="read-only"):
        run("import_dataset", str(path), "--name", "faq2", "--team", "alpha", "--user", "val")
    # scan_models without a team: the superuser scans; a viewer may not.
    run("scan_models", "--only-paths", str(tiny_model_dir.parent), "--no-adapters")
    assert BaseModel.objects.get(name="tiny-llama").created_by == people["root2"]
    with pytest.raises(CommandError, match="member or admin"):
        run("scan_models", "--only-paths", str(tiny_model_dir.parent), "--no-adapters", "--user", "val")
    # The adapter command finds adapters as the acting user: bob (team beta) cannot see alpha's.
    with pytest.raises(CommandError, match="not found"):
        run("adapter", "lineage", "no-such-adapter", "--user", "bob")


def test_no_fake_operator_is_left():
    import datasets_app.services as services

    assert not hasattr(services, "OPERATOR") and not hasattr(services, "_Operator")
