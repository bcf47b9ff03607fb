"""Helpers shared by the dataset commands."""

from __future__ import annotations

from django.contrib.auth import get_user_model

from accounts.visibility import Principal
from core.errors import NotFound
from datasets_app import services
from datasets_app.models import DatasetVersion

USER_HELP = ("Act as this user, with their teams and roles (default: the operator, who may write to every "
             "team).")


def principal_for(username: str | None) -> Principal:
    if not username:
        return services.OPERATOR
    try:
        return Principal(user=get_user_model().objects.get(username=username, is_active=True))
    except get_user_model().DoesNotExist:
        raise NotFound(f"User {username!r} not found.", code="user_not_found", param="user") from None


def report_lines(version: DatasetVersion, *, limit: int) -> list[str]:
    """The version's issues, errors first, each as ``line N: code: message``."""
    report = version.report or {}
    lines = []
    for severity in ("errors", "warnings"):
        issues = report.get(severity, [])
        for issue in issues[:limit]:
            where = f"line {issue['line']}: " if issue.get("line") else ""
            lines.append(f"  {severity[:-1]:7} {where}{issue['code']}: {issue['message']}")
        total = report.get(f"{severity[:-1]}_count", len(issues))
        if total > min(limit, len(issues)):
            lines.append(f"  … and {total - min(limit, len(issues))} more {severity} "
                         f"(full report: admin, or GET /api/dataset-versions/{version.pk}/report)")
    return lines
