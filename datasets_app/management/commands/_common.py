"""Helpers shared by the dataset commands."""

from __future__ import annotations

from accounts.commands import USER_HELP, command_actor
from datasets_app.models import DatasetVersion

__all__ = ["USER_HELP", "actor_for", "report_lines"]


def actor_for(username: str | None, team: str | None):
    """The user a dataset command acts as: the one rule every command shares (``accounts.commands``)."""
    return command_actor(username=username, team=team)


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
