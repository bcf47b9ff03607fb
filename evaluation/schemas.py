"""API schemas of the evaluation app (the hidden adapter side appears in no reviewer-facing schema)."""

from datetime import datetime

from ninja import Field, Schema


class EvaluationRunIn(Schema):
    adapter: str
    dataset: str | None = None
    other_adapter: str | None = None
    metrics: list[str] | None = None
    generation: dict | None = None
    name: str | None = None
    team: str | None = None
    priority: int = 0


class EvaluationRunOut(Schema):
    id: int
    name: str
    team: str
    status: str
    adapter_id: int
    adapter: str
    other_adapter_id: int | None
    dataset_version_id: int
    metrics: list[str]
    generation: dict
    progress_percent: float
    created_at: datetime
    finished_at: datetime | None
    error_code: str
    error_message: str
    results: dict

    @staticmethod
    def from_run(run) -> dict:
        return {"id": run.pk, "name": run.name, "team": run.team.name, "status": run.status,
                "adapter_id": run.adapter_id, "adapter": run.adapter.name, "other_adapter_id": run.other_adapter_id,
                "dataset_version_id": run.dataset_version_id, "metrics": run.metric_names,
                "generation": run.generation, "progress_percent": run.progress_percent,
                "created_at": run.created_at, "finished_at": run.finished_at, "error_code": run.error_code,
                "error_message": run.error_message, "results": run.results or {}}


class SampleOut(Schema):
    index: int
    prompt: str
    reference: str
    base_answer: str
    adapter_answer: str
    metrics: dict


class ReviewIn(Schema):
    n_pairs: int | None = None
    seed: int | None = None


class ReviewOut(Schema):
    id: int
    run_id: int
    status: str
    created_at: datetime
    closed_at: datetime | None


class PairOut(Schema):
    id: int
    order: int
    prompt: str
    answer_a: str
    answer_b: str


class VoteIn(Schema):
    choice: str
    comment: str = ""


class VoteOut(Schema):
    id: int
    pair_id: int
    choice: str
    comment: str
    created_at: datetime


class ReviewPreferencesIn(Schema):
    name: str | None = Field(None, description="Dataset name (default review-<id>-preferences).")
    train: str | None = Field(None, description="Also queue a DPO task on the run's 'adapter' or its 'baseline'.")
    params: dict = Field(default_factory=dict, description="Hyperparameters of that task (beta, n_epochs, ...).")


class ReviewPreferencesOut(Schema):
    dataset_version_id: int
    dataset_version: str = Field(..., description="name@number")
    pairs: int
    lineage: dict = Field(..., description="The review, the run, the two models and each row's pair and vote.")
    task_id: int | None
    task_name: str | None
