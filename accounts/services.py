"""Business rules for teams, memberships and API tokens."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from datetime import timedelta

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import IntegrityError, transaction
from django.utils import timezone

from accounts.models import ApiToken, Membership, Role, Team
from accounts.roles import sync_user_groups
from accounts.visibility import Actor, as_principal, can_manage, forget_roles
from core.errors import ApplicationError, Conflict, NotFound, PermissionDenied

TEAM_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
# Token writes of last_used_at are throttled to one a minute per token: a busy script must not
# turn every read into a write.
LAST_USED_RESOLUTION = timedelta(seconds=60)


def team_check_name(name: str) -> str:
    """The name, stripped, or ``ApplicationError`` when it is not a valid team name."""
    name = (name or "").strip()
    if not TEAM_NAME_RE.match(name):
        raise ApplicationError(
            "Team name must be 1-64 lowercase letters, digits, '-' or '_', starting with a letter or digit.",
            code="invalid_team_name", param="name")
    return name


def team_create(*, user: Actor | None = None, name: str, display_name: str = "") -> Team:
    """Create a team. Only superusers create teams: every door (``/api/``, the admin, ``manage.py create_team``)
    passes its acting user. ``user=None`` is for setup code that runs before any door (test fixtures, benchmarks)."""
    if user is not None and not as_principal(user).is_superuser:
        raise PermissionDenied("Only superusers create teams.", code="permission_denied")
    name = team_check_name(name)
    try:
        with transaction.atomic():
            return Team.objects.create(name=name, display_name=display_name or name)
    except IntegrityError:
        raise Conflict(f"Team {name!r} already exists.", code="team_exists", param="name") from None


def team_get(name: str) -> Team:
    try:
        return Team.objects.get(name=name)
    except Team.DoesNotExist:
        raise NotFound(f"Team {name!r} not found.", code="team_not_found", param="team") from None


def membership_set(*, team: Team, user, role: str, actor=None) -> Membership:
    """Add ``user`` to ``team`` with ``role`` (or change their role); syncs admin permissions."""
    if role not in Role.values:
        raise ApplicationError(f"Role must be one of {', '.join(Role.values)}.", code="invalid_role", param="role")
    if actor is not None and not can_manage(actor, team):
        raise PermissionDenied("Only team admins can manage members.")
    with transaction.atomic():
        membership, created = Membership.objects.get_or_create(user=user, team=team, defaults={"role": role})
        if not created and membership.role != role:
            membership.role = role
            membership.save(update_fields=["role"])
        sync_user_groups(user)
    forget_roles(user)
    return membership


def membership_remove(*, team: Team, user, actor=None) -> None:
    if actor is not None and not can_manage(actor, team):
        raise PermissionDenied("Only team admins can manage members.")
    with transaction.atomic():
        Membership.objects.filter(team=team, user=user).delete()
        sync_user_groups(user)
    forget_roles(user)


def member_add(*, team_name: str, username: str, role: str, password: str | None = None,
               email: str = "", actor: Actor | None = None) -> tuple[object, Membership, bool]:
    """Create the user if missing (with ``password`` or an unusable one) and give them ``role`` in the team.
    ``actor`` (a command's acting user) must manage the team."""
    team = team_get(team_name)
    if actor is not None and not can_manage(actor, team):
        raise PermissionDenied("Only team admins can manage members.")
    User = get_user_model()
    username = (username or "").strip()
    if not username:
        raise ApplicationError("Username is required.", code="invalid_username", param="username")
    with transaction.atomic():
        user, created = User.objects.get_or_create(username=username, defaults={"email": email})
        if created:
            if password:
                user.set_password(password)
            else:
                user.set_unusable_password()
            user.save()
        elif password:
            user.set_password(password)
            user.save(update_fields=["password"])
        membership = membership_set(team=team, user=user, role=role, actor=actor)
    return user, membership, created


def _hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def api_token_check_owner(*, user, team: Team) -> None:
    """A token is scoped to a team its user belongs to (superusers: any team)."""
    if not user.is_superuser and not Membership.objects.filter(user=user, team=team).exists():
        raise PermissionDenied(f"{user} is not a member of team {team.name!r}.", code="not_a_member", param="team")


def api_token_create(*, user, team: Team, name: str = "", expires_days: int | None = None) -> tuple[ApiToken, str]:
    """Create a token for ``user`` scoped to ``team``; returns the row and the secret (shown once)."""
    api_token_check_owner(user=user, team=team)
    if expires_days is not None and expires_days < 1:
        raise ApplicationError("expires_days must be at least 1.", code="invalid_expiry", param="expires_days")
    secret = settings.API_TOKEN_PREFIX + secrets.token_urlsafe(32)
    expires_at = timezone.now() + timedelta(days=expires_days) if expires_days else None
    token = ApiToken.objects.create(user=user, team=team, name=name[:100], prefix=secret[:12],
                                    token_hash=_hash_secret(secret), expires_at=expires_at)
    return token, secret


def api_token_authenticate(secret: str | None) -> ApiToken | None:
    """Return the active token for ``secret``, or None (unknown, revoked, expired, ex-member, inactive user)."""
    if not secret or len(secret) > 200:
        return None
    digest = _hash_secret(secret)
    token = ApiToken.objects.select_related("user", "team").filter(token_hash=digest).first()
    # The lookup is by hash (an index), so it leaks nothing about the secret; the explicit
    # constant-time compare guards against a collation that folds case on MySQL.
    if token is None or not hmac.compare_digest(token.token_hash, digest):
        return None
    if not token.is_active or not token.user.is_active:
        return None
    if not token.user.is_superuser and not Membership.objects.filter(user_id=token.user_id,
                                                                     team_id=token.team_id).exists():
        return None
    now = timezone.now()
    if token.last_used_at is None or now - token.last_used_at > LAST_USED_RESOLUTION:
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
        token.last_used_at = now
    return token


def api_token_rename(*, token: ApiToken, name: str, actor: Actor | None = None) -> ApiToken:
    """Rename a token (its owner or an admin of its team); only the name column is written."""
    if actor is not None:
        principal = as_principal(actor)
        if principal.user.pk != token.user_id and not can_manage(actor, token.team):
            raise NotFound("Token not found.")
    name = (name or "")[:100]
    if name != token.name:
        ApiToken.objects.filter(pk=token.pk).update(name=name)
        token.name = name
    return token


def api_token_revoke(*, token: ApiToken, actor=None) -> ApiToken:
    if actor is not None:
        principal = as_principal(actor)
        if principal.user.pk != token.user_id and not can_manage(actor, token.team):
            raise NotFound("Token not found.")
    if token.revoked_at is None:
        token.revoked_at = timezone.now()
        token.save(update_fields=["revoked_at"])
    return token
