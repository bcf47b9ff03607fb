"""API schemas of the serving app: the playground's preference pairs and the preference set built from them."""

from datetime import datetime

from ninja import Field, Schema


class PreferencePairOut(Schema):
    id: int
    team: str = Field(..., alias="team.name")
    created_by: str | None = Field(None, alias="created_by.username")
    messages: list[dict]
    chosen_model: str
    chosen: str
    rejected_model: str
    rejected: str
    tie: bool
    chosen_finish_reason: str
    rejected_finish_reason: str
    params: dict
    created_at: datetime


class PairPreferencesIn(Schema):
    team: str | None = Field(None, description="The team whose pairs to use (default: your only team).")
    pairs: list[int] | None = Field(None, description="Pair ids (default: every pair of the team).")
    name: str | None = Field(None, description="Dataset name (default playground-preferences).")
    train: str | None = Field(None, description="Also queue a DPO task: 'adapter' (the one adapter the pairs judged) "
                                                "or a model name (an adapter trained further, a base model afresh).")
    params: dict = Field(default_factory=dict, description="Hyperparameters of that task (beta, n_epochs, ...).")


class PairPreferencesOut(Schema):
    dataset_version_id: int
    dataset_version: str = Field(..., description="name@number")
    pairs: int = Field(..., description="Rows of the version (the usable pairs).")
    counts: dict = Field(..., description="Pairs considered, used, and left out: ties, incomplete, identical.")
    lineage: dict = Field(..., description="Each row's pair, its two models, who chose and when.")
    task_id: int | None
    task_name: str | None
