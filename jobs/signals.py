"""Signals of the job system, for the apps above it (notifications, say) to follow every kind at once."""

from __future__ import annotations

from django.dispatch import Signal

# Sent once a job of any kind reached a terminal state (succeeded, failed, cancelled), after the commit that
# recorded it, with ``job`` (the row, refreshed) and ``kind`` (its registry name). Receivers run in whichever
# process recorded the ending (the job's child, the supervising worker, or a web process for a cancel before
# running), so they must be quick: queue any slow work.
job_finished = Signal()
