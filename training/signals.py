"""Extension points other apps plug into, so that ``training`` never imports them (dependencies point one way:
``training <- classifier, evaluation``)."""

from __future__ import annotations

from django.dispatch import Signal

# Sent by the worker once a training task has succeeded and its adapter is registered (after the commit),
# with ``task`` and ``adapter``. The evaluation app answers it for tasks that asked for an evaluation.
adapter_trained = Signal()

# Sent when an adapter's lineage is assembled, with ``adapter``; a receiver returns a dict of sections to add
# (the evaluation app returns {"evaluations": [...]}).
lineage_requested = Signal()

# Metric names an evaluation requested at task creation may use; filled by the evaluation app when it loads.
# Empty means no app evaluates adapters, and asking for an evaluation is refused.
evaluation_metric_names: set[str] = set()
