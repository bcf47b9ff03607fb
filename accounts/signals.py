"""Keep role groups in step with the permissions that migrations create."""

from __future__ import annotations

from django.db import connections
from django.db.models.signals import post_migrate
from django.dispatch import receiver

from accounts.roles import sync_role_groups


@receiver(post_migrate)
def refresh_role_groups(sender, using="default", **kwargs) -> None:
    # post_migrate fires once per app; the last call sees every app's permissions.
    tables = connections[using].introspection.table_names()
    if "auth_group" in tables and "accounts_membership" in tables:
        sync_role_groups()
