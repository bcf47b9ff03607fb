"""Who acts in a management command: one rule for every command of every app.

``--user NAME`` when given; otherwise the team's admin (the first by id) when the command works in a team;
otherwise a superuser (the first by id). The result is always a real, active ``User`` row, so the services
apply the same visibility and role rules as for any other door and audit rows name a person.
"""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser

from accounts.models import Membership, Role, Team
from core.errors import ApplicationError, NotFound

USER_HELP = ("Act as this user, with their teams and roles (default: the team's first admin when the command "
             "works in a team, else the first superuser).")


def add_user_argument(parser, *, help_text: str = USER_HELP) -> None:
    parser.add_argument("--user", default=None, metavar="USERNAME", help=help_text)


def command_actor(*, username: str | None, team: Team | str | int | None = None) -> AbstractBaseUser:
    """The user a command acts as (see the module docstring); ``ApplicationError`` when there is none."""
    User = get_user_model()
    if username:
        user = User.objects.filter(username=username).first()
        if user is None:
            raise NotFound(f"User {username!r} not found.", code="user_not_found", param="user")
        if not user.is_active:
            raise ApplicationError(f"User {username!r} is inactive.", code="user_inactive", param="user")
        return user
    if team is not None and team != "":
        memberships = Membership.objects.filter(role=Role.ADMIN, user__is_active=True)
        if isinstance(team, Team):
            memberships = memberships.filter(team=team)
        elif isinstance(team, int) or str(team).isdigit():
            memberships = memberships.filter(team_id=int(team))
        else:
            memberships = memberships.filter(team__name=str(team))
        membership = memberships.select_related("user").order_by("pk").first()
        if membership is not None:
            return membership.user
    user = User.objects.filter(is_superuser=True, is_active=True).order_by("pk").first()
    if user is None:
        where = " and the team has no admin" if team not in (None, "") else ""
        raise ApplicationError(f"No user to act as: there is no superuser{where}. Pass --user USERNAME "
                               "(or create one with `manage.py createsuperuser`).", code="no_actor", param="user")
    return user
