"""Look and feel shared by every app's admin: status badges, progress bars, human-readable durations,
and the related-object list filter.

One place, so that a "running" badge or a progress bar looks the same on the dashboard and in the
training, classifier, evaluation and dataset lists.
"""

from __future__ import annotations

from django.contrib import admin
from django.utils.html import format_html

from core.commands import format_bytes, format_count  # noqa: F401 - re-exported for the admins

# Job statuses, then other rows' states (dataset versions, adapters, reviews) on the same palette.
STATUS_COLOURS = {
    "validating": "#6c757d", "queued": "#6c757d", "running": "#0d6efd", "paused": "#fd7e14",
    "succeeded": "#198754", "failed": "#dc3545", "cancelled": "#495057",
    "ready": "#198754", "archived": "#495057", "open": "#0d6efd", "closed": "#495057",
    "draft": "#6c757d", "candidate": "#fd7e14", "production": "#198754",
}


def status_badge(status: str, label: str | None = None) -> str:
    colour = STATUS_COLOURS.get(status, "#6c757d")
    return format_html('<span class="job-status" data-status="{}" style="background:{};color:#fff;padding:2px 8px;'
                       'border-radius:10px;font-size:11px;white-space:nowrap">{}</span>', status, colour,
                       label or status)


def progress_bar(percent: float, label: str = "") -> str:
    return format_html(
        '<div class="job-progress" data-percent="{}" title="{}" style="width:140px;background:#e9ecef;'
        'border-radius:4px;height:14px;position:relative"><div style="width:{}%;background:#0d6efd;height:14px;'
        'border-radius:4px"></div><span style="position:absolute;top:0;left:4px;font-size:10px;line-height:14px;'
        'color:#212529;white-space:nowrap">{}</span></div>',
        f"{percent:.1f}", label, f"{percent:.1f}", label or f"{percent:.0f}%")


def format_duration(seconds: float | None) -> str:
    """42s, 3m05s, 2h07m, 3d04h: two units at most, the way one reads an ETA."""
    if seconds is None:
        return "—"
    seconds = max(0, int(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def job_progress(job) -> str:
    """The progress bar of a job row: steps, and the ETA while it runs."""
    label = f"{job.step}/{job.total_steps}" if job.total_steps else ""
    if job.eta_seconds and job.status == "running":
        label += f" · ETA {format_duration(job.eta_seconds)}"
    return progress_bar(job.progress_percent, label)


# Foreign keys other than the team: only the values present in the rows the user can see.
VisibleRelatedFilter = admin.RelatedOnlyFieldListFilter
