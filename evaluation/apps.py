from __future__ import annotations

from django.apps import AppConfig


class EvaluationConfig(AppConfig):
    name = "evaluation"
    verbose_name = "Evaluation"

    def ready(self) -> None:
        # Imported once the app registry is ready (they import models).
        from evaluation.models import METRIC_CHOICES, EvaluationEvent, EvaluationRun
        from evaluation.receivers import evaluate_trained_adapter, lineage_evaluations
        from jobs.registry import JobKind, register
        from training import signals

        register(JobKind(name="evaluation", model=EvaluationRun, event_model=EvaluationEvent, event_fk="run",
                         runner="evaluation.runner.EvaluationRunner"))
        signals.adapter_trained.connect(evaluate_trained_adapter, dispatch_uid="evaluation-on-success")
        signals.lineage_requested.connect(lineage_evaluations, dispatch_uid="evaluation-lineage")
        signals.evaluation_metric_names.update(m for m in METRIC_CHOICES if m != "classifier")
