from __future__ import annotations

from ninja import Schema
from pydantic import model_validator

from jobs.schemas import JobOut, job_fields


class ClassifierTaskIn(Schema):
    name: str | None = None
    team: str | None = None
    base_model: str
    train_version: str | int
    validation_version: str | int | None = None
    params: dict = {}
    priority: int = 0


class ClassifierTaskOut(JobOut):
    base_model: str
    train_version: int
    validation_version: int | None
    params: dict
    resolved_params: dict
    label_map: dict
    report: dict
    trainable_parameters: int
    total_parameters: int
    adapter_id: int | None

    @staticmethod
    def from_task(task, *, waiting: bool = True) -> dict:
        return {
            **job_fields(task, waiting=waiting), "base_model": task.base_model.name,
            "train_version": task.train_version_id, "validation_version": task.validation_version_id,
            "params": task.params, "resolved_params": task.resolved_params, "label_map": task.label_map,
            "report": task.report, "trainable_parameters": task.trainable_parameters,
            "total_parameters": task.total_parameters, "adapter_id": task.adapter_id,
        }


class PredictIn(Schema):
    """One text (``text``) or a batch (``texts``), not both."""

    text: str | None = None
    texts: list[str] | None = None

    @model_validator(mode="after")
    def _one_of(self):
        if (self.text is None) == (self.texts is None):
            raise ValueError("send either 'text' or 'texts'")
        return self


class PredictionOut(Schema):
    label: str
    confidence: float
    probabilities: dict[str, float]


class PredictOut(Schema):
    adapter_id: int
    adapter: str
    predictions: list[PredictionOut]
