"""/api/ endpoints for the caller, teams, members and API tokens."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from ninja import Router, Status
from ninja.pagination import paginate

from accounts import services
from accounts.auth import principal
from accounts.models import ApiToken, Membership, Team
from accounts.schemas import MemberIn, MemberOut, MeOut, TeamIn, TeamOut, TokenCreatedOut, TokenIn, TokenOut
from accounts.selectors import api_tokens_visible
from accounts.visibility import get_visible, resolve_team, teams
from core.errors import NotFound
from core.pagination import Mapped, Pagination
from core.schemas import ErrorOut

router = Router(tags=["accounts"])
ERRORS = {400: ErrorOut, 401: ErrorOut, 403: ErrorOut, 404: ErrorOut, 409: ErrorOut}


def _team_out(team: Team, roles: dict[int, str]) -> dict:
    return {"id": team.pk, "name": team.name, "display_name": team.display_name, "role": roles.get(team.pk)}


def _roles_of(user) -> dict[int, str]:
    return dict(Membership.objects.filter(user=user).values_list("team_id", "role"))


@router.get("/me", response={200: MeOut, **ERRORS})
def me(request):
    who = principal(request)
    roles = _roles_of(who.user)
    return {"username": who.user.username, "is_superuser": who.is_superuser,
            "token_team": who.team.name if who.team else None,
            "teams": [_team_out(t, roles) for t in teams(who)]}


@router.get("/teams", response=list[TeamOut])
@paginate(Pagination)
def team_list(request):
    who = principal(request)
    roles = _roles_of(who.user)
    return [_team_out(t, roles) for t in teams(who)]


@router.post("/teams", response={201: TeamOut, **ERRORS})
def team_create(request, payload: TeamIn):
    team = services.team_create(user=principal(request), name=payload.name, display_name=payload.display_name)
    return Status(201, _team_out(team, {}))


@router.get("/teams/{name}/members", response={200: list[MemberOut], **ERRORS})
def member_list(request, name: str):
    who = principal(request)
    team = resolve_team(who, name, write=False)
    rows = Membership.objects.filter(team=team).select_related("user")
    return [{"username": m.user.username, "team": team.name, "role": m.role} for m in rows]


@router.post("/teams/{name}/members", response={201: MemberOut, **ERRORS})
def member_set(request, name: str, payload: MemberIn):
    who = principal(request)
    team = resolve_team(who, name, write=False)
    User = get_user_model()
    try:
        user = User.objects.get(username=payload.username)
    except User.DoesNotExist:
        raise NotFound(f"User {payload.username!r} not found.", param="username") from None
    membership = services.membership_set(team=team, user=user, role=payload.role, actor=who)
    return Status(201, {"username": user.username, "team": team.name, "role": membership.role})


@router.delete("/teams/{name}/members/{username}", response={204: None, **ERRORS})
def member_remove(request, name: str, username: str):
    who = principal(request)
    team = resolve_team(who, name, write=False)
    user = get_user_model().objects.filter(username=username).first()
    if user is None:
        raise NotFound(f"User {username!r} not found.", param="username")
    services.membership_remove(team=team, user=user, actor=who)
    return Status(204, None)


def _token_out(token: ApiToken) -> dict:
    return {"id": token.pk, "name": token.name, "prefix": token.prefix, "team": token.team.name,
            "created_at": token.created_at, "expires_at": token.expires_at, "last_used_at": token.last_used_at,
            "revoked_at": token.revoked_at}


@router.get("/tokens", response=list[TokenOut])
@paginate(Pagination)
def token_list(request):
    return Mapped(api_tokens_visible(principal(request)), _token_out)  # the page is cut in SQL


@router.post("/tokens", response={201: TokenCreatedOut, **ERRORS})
def token_create(request, payload: TokenIn):
    who = principal(request)
    team = resolve_team(who, payload.team, write=False)
    token, secret = services.api_token_create(user=who.user, team=team, name=payload.name,
                                              expires_days=payload.expires_days)
    return Status(201, {**_token_out(token), "token": secret})


@router.post("/tokens/{token_id}/revoke", response={200: TokenOut, **ERRORS})
def token_revoke(request, token_id: int):
    who = principal(request)
    token = get_visible(who, api_tokens_visible(who), team_field="team", pk=token_id)
    return _token_out(services.api_token_revoke(token=token, actor=who))
