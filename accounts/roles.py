"""Django permission groups that mirror team roles, so staff users get admin access matching their role.

Model permissions in Django are global; the per-team half of the rule is enforced by
``accounts.visibility`` in every admin queryset and object check. The groups only decide which
admin pages and buttons a role sees at all.
"""

from __future__ import annotations

from django.contrib.auth.models import Group, Permission

from accounts.models import Membership, Role

# Apps whose objects belong to teams (base models, datasets, jobs, adapters, evaluations, preference pairs).
TEAM_APPS = ("catalog", "datasets_app", "training", "classifier", "evaluation", "serving")

GROUP_NAMES = {
    Role.VIEWER: "Team viewers",
    Role.MEMBER: "Team members",
    Role.ADMIN: "Team admins",
}


def _perms_for(role: str) -> list[Permission]:
    qs = Permission.objects.select_related("content_type")
    wanted: list[Permission] = []
    for perm in qs.filter(content_type__app_label__in=TEAM_APPS):
        action = perm.codename.split("_", 1)[0]
        if action == "view" or role in (Role.MEMBER, Role.ADMIN):
            wanted.append(perm)
    accounts_perms = {
        Role.VIEWER: ["view_team", "view_membership"],
        Role.MEMBER: ["view_team", "view_membership", "view_apitoken", "add_apitoken", "change_apitoken"],
        Role.ADMIN: ["view_team", "view_membership", "add_membership", "change_membership", "delete_membership",
                     "view_apitoken", "add_apitoken", "change_apitoken"],
    }[Role(role)]
    wanted += list(qs.filter(content_type__app_label="accounts", codename__in=accounts_perms))
    # Webhooks send a team's events to outside URLs: every role sees them, team admins manage them.
    wanted += [perm for perm in qs.filter(content_type__app_label="notifications")
               if perm.codename.startswith("view_") or role == Role.ADMIN]
    # django-q2's queue pages: everyone on a team may look at the queue.
    wanted += list(qs.filter(content_type__app_label="django_q", codename__startswith="view_"))
    return wanted


def sync_role_groups() -> dict[str, Group]:
    """Create or refresh the three role groups; idempotent and cheap."""
    groups = {}
    for role, name in GROUP_NAMES.items():
        group, _ = Group.objects.get_or_create(name=name)
        group.permissions.set(_perms_for(role))
        groups[role] = group
    return groups


def sync_user_groups(user) -> None:
    """Give a user the role groups of all their memberships and staff access while they have any."""
    groups = {g.name: g for g in Group.objects.filter(name__in=GROUP_NAMES.values())}
    if len(groups) < len(GROUP_NAMES):
        groups = {g.name: g for g in sync_role_groups().values()}
    roles = set(Membership.objects.filter(user=user).values_list("role", flat=True))
    wanted = {groups[GROUP_NAMES[Role(r)]] for r in roles}
    current = set(user.groups.filter(name__in=GROUP_NAMES.values()))
    if wanted - current:
        user.groups.add(*(wanted - current))
    if current - wanted:
        user.groups.remove(*(current - wanted))
    should_be_staff = bool(roles) or user.is_superuser
    if user.is_staff != should_be_staff:
        user.is_staff = should_be_staff
        user.save(update_fields=["is_staff"])
