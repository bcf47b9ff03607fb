"""Reads of accounts rows that more than one door needs (the admin and /api/ list the same tokens)."""

from __future__ import annotations

from django.db.models import Q, QuerySet

from accounts.models import ApiToken
from accounts.visibility import Actor, acting_user, team_ids


def api_tokens_visible(who: Actor) -> QuerySet[ApiToken]:
    """The tokens ``who`` may see: their own; a team admin also sees every token of the teams they manage;
    a superuser sees all."""
    qs = ApiToken.objects.select_related("team", "user")
    manage = team_ids(who, manage=True)
    if manage is None:
        return qs
    user = acting_user(who)
    if user is None:
        return qs.none()
    return qs.filter(Q(user=user) | Q(team_id__in=manage))
