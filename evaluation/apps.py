from __future__ import annotations

from django.apps import AppConfig


class EvaluationConfig(AppConfig):
    name = "evaluation"
    verbose_name = "Evaluation"

    def ready(self) -> None:
        from evaluation.hooks import evaluate_trained_adapter
        from evaluation.models import METRIC_CHOICES
        from training import signals

        signals.adapter_trained.connect(evaluate_trained_adapter, dispatch_uid="evaluation-on-success")
        signals.evaluation_metric_names.update(m for m in METRIC_CHOICES if m != "classifier")
