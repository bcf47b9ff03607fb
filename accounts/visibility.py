"""The one visibility rule every door uses (admin, JSON APIs, commands, worker).

A user sees the objects of the teams they belong to; viewers only read; members and team admins
write; team admins also manage memberships; superusers see and do everything. A request made with
an API token is further narrowed to the token's team.

Objects with a nullable ``team`` (e.g. global base models) are readable by every authenticated
user when ``include_global=True``, and writable by superusers only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeAlias

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db.models import Model, Q, QuerySet

from accounts.models import WRITE_ROLES, Membership, Role, Team
from core.errors import ApplicationError, NotFound, PermissionDenied


@dataclass(frozen=True)
class Principal:
    """Who is acting: a user, optionally narrowed to one team (an API token's team)."""

    user: Any
    team: Team | None = None

    @property
    def is_superuser(self) -> bool:
        return bool(getattr(self.user, "is_superuser", False)) and self.team is None


# Who acts in a service: a Django user (admin session, command) or a principal (an API token's user and team).
Actor: TypeAlias = "AbstractBaseUser | AnonymousUser | Principal"


def as_principal(who: Any) -> Principal:
    if isinstance(who, Principal):
        return who
    return Principal(user=who)


def acting_user(who: Actor | None) -> AbstractBaseUser | None:
    """The Django user behind an actor, for ``created_by`` and audit rows (None when anonymous)."""
    user = who.user if isinstance(who, Principal) else who
    return user if getattr(user, "pk", None) else None


def _roles(principal: Principal) -> dict[int, str]:
    """team_id -> role for the principal, cached on the user object for the request."""
    user = principal.user
    if user is None or not getattr(user, "is_authenticated", False):
        return {}
    cache = getattr(user, "_team_roles_cache", None)
    if cache is None:
        cache = dict(Membership.objects.filter(user=user).values_list("team_id", "role"))
        user._team_roles_cache = cache
    if principal.team is not None:
        role = cache.get(principal.team.pk)
        if role is None and getattr(user, "is_superuser", False):
            role = Role.ADMIN
        return {principal.team.pk: role} if role else {}
    return cache


def forget_roles(user: Any) -> None:
    """Drop the per-request role cache (after memberships change)."""
    if hasattr(user, "_team_roles_cache"):
        del user._team_roles_cache


def team_ids(who: Any, *, write: bool = False, manage: bool = False) -> set[int] | None:
    """Team ids the principal may read (or write, or manage); None means every team."""
    principal = as_principal(who)
    if principal.is_superuser:
        return None
    roles = _roles(principal)
    if manage:
        return {tid for tid, role in roles.items() if role == Role.ADMIN}
    if write:
        return {tid for tid, role in roles.items() if role in WRITE_ROLES}
    return set(roles)


def teams(who: Any, *, write: bool = False, manage: bool = False) -> QuerySet[Team]:
    ids = team_ids(who, write=write, manage=manage)
    qs = Team.objects.all()
    return qs if ids is None else qs.filter(pk__in=ids)


def visible_to(who: Any, queryset: QuerySet, *, team_field: str = "team", include_global: bool = False,
               write: bool = False) -> QuerySet:
    """Narrow ``queryset`` to what the principal may read (or write, with ``write=True``)."""
    ids = team_ids(who, write=write)
    if ids is None:
        return queryset
    principal = as_principal(who)
    if principal.user is None or not getattr(principal.user, "is_authenticated", False):
        return queryset.none()
    cond = Q(**{f"{team_field}__in": ids})
    if include_global and not write:
        cond |= Q(**{f"{team_field}__isnull": True})
    return queryset.filter(cond)


def _team_id_of(obj: Model, team_field: str) -> int | None:
    *path, last = team_field.split("__")
    value: Any = obj
    for part in path:
        value = getattr(value, part, None)
        if value is None:
            return None
    return getattr(value, f"{last}_id", None)


def can_read(who: Any, obj: Model, *, team_field: str = "team") -> bool:
    ids = team_ids(who)
    if ids is None:
        return True
    team_id = _team_id_of(obj, team_field)
    return team_id is None or team_id in ids


def can_write(who: Any, obj_or_team: Model | None, *, team_field: str = "team") -> bool:
    ids = team_ids(who, write=True)
    if ids is None:
        return True
    if obj_or_team is None:
        return False
    team_id = obj_or_team.pk if isinstance(obj_or_team, Team) else _team_id_of(obj_or_team, team_field)
    return team_id is not None and team_id in ids


def can_manage(who: Any, team: Team) -> bool:
    ids = team_ids(who, manage=True)
    return ids is None or team.pk in ids


def require_write(who: Any, obj_or_team: Model | None, *, team_field: str = "team") -> None:
    """Raise NotFound if the principal cannot even read it, PermissionDenied if read-only."""
    if obj_or_team is not None and not isinstance(obj_or_team, Team) and not can_read(who, obj_or_team,
                                                                                      team_field=team_field):
        raise NotFound()
    if isinstance(obj_or_team, Team) and team_ids(who) is not None and obj_or_team.pk not in team_ids(who):
        raise NotFound("Team not found.", code="team_not_found", param="team")
    if not can_write(who, obj_or_team, team_field=team_field):
        raise PermissionDenied("Your role in this team is read-only.")


def get_visible(who: Any, queryset: QuerySet, *, team_field: str = "team", include_global: bool = False,
                **lookup: Any) -> Model:
    """Fetch one object the principal may read, or raise NotFound (other teams' objects read as missing)."""
    try:
        return visible_to(who, queryset, team_field=team_field, include_global=include_global).get(**lookup)
    except (queryset.model.DoesNotExist, ValueError, TypeError):
        raise NotFound(f"{queryset.model._meta.verbose_name.capitalize()} not found.") from None


def resolve_team(who: Any, team: Team | str | int | None, *, write: bool = True) -> Team:
    """Pick the team an object is created in: given by name/id, or the principal's only writable team."""
    principal = as_principal(who)
    if team is None and principal.team is not None:
        team = principal.team
    if team is None:
        candidates = list(teams(who, write=write)[:2])
        if len(candidates) == 1:
            return candidates[0]
        raise PermissionDenied("Choose a team: you can write to none or to several.", code="team_required") \
            if not candidates else _team_required()
    if not isinstance(team, Team):
        lookup = {"pk": team} if isinstance(team, int) or str(team).isdigit() else {"name": team}
        try:
            team = Team.objects.get(**lookup)
        except Team.DoesNotExist:
            raise NotFound(f"Team {team!r} not found.", code="team_not_found", param="team") from None
    if write:
        require_write(who, team)
    elif team_ids(who) is not None and team.pk not in team_ids(who):
        raise NotFound(f"Team {team.name!r} not found.", code="team_not_found", param="team")
    return team


def _team_required() -> Team:
    raise ApplicationError("You belong to several teams: say which one.", code="team_required", param="team")
