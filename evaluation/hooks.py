"""The evaluation app's answer to ``training.signals.adapter_trained``: a task that asked for an evaluation on
success gets a queued evaluation run of its new adapter, so the adapter arrives with its report."""

from __future__ import annotations

from core.errors import ApplicationError


def evaluate_trained_adapter(sender, *, task, adapter, **kwargs) -> str | None:
    from evaluation.services import evaluation_run_create

    if not getattr(task, "evaluate_on_success", False):
        return None
    try:
        run = evaluation_run_create(user=task.created_by, adapter=adapter, team=task.team,
                                    metrics=list(task.evaluation_metrics or []) or None,
                                    name=f"eval-{adapter.name}")
    except ApplicationError as exc:  # e.g. the author left the team: the task stays succeeded, the log says why
        return f"No evaluation queued: {exc.message}"
    return f"Evaluation run {run.pk} queued ({', '.join(run.metric_names)} on {run.dataset_version.ref})."
