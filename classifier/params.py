"""Hyperparameters of a classifier task (plain module: pydantic only, shared by the API, services and recipe)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

# Attention (query/key/value) and feed-forward (every ``dense``: attention output, intermediate, output) of
# BERT-family encoders.
DEFAULT_TARGET_MODULES = ["query", "key", "value", "dense"]


class InvalidParams(ValueError):
    """Hyperparameters that do not validate; ``field`` names the first offending one."""

    def __init__(self, message: str, field: str | None = None, errors: list[dict] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.errors = errors or []


class ClassifierParams(BaseModel):
    """LoRA + classification-head training of an encoder. Unknown keys are refused (a typo is an error)."""

    model_config = ConfigDict(extra="forbid")

    lora_r: int = Field(8, ge=1, le=256)
    lora_alpha: int = Field(16, ge=1, le=1024)
    lora_dropout: float = Field(0.1, ge=0.0, le=0.9)
    target_modules: list[str] = Field(default_factory=lambda: list(DEFAULT_TARGET_MODULES), min_length=1)
    n_epochs: int = Field(6, ge=1, le=100)
    batch_size: int = Field(16, ge=1, le=512)
    learning_rate: float = Field(1e-3, gt=0.0, le=1.0)
    weight_decay: float = Field(0.01, ge=0.0, le=1.0)
    warmup_ratio: float = Field(0.1, ge=0.0, le=0.5)
    max_seq_length: int = Field(128, ge=8, le=8192)
    class_weighting: Literal["auto", "balanced", "none"] = Field(
        "auto", description="balanced: loss weights inversely proportional to class frequency; auto: balanced "
                            "when the largest class is over 1.5 times the smallest.")
    seed: int = Field(42, ge=0, le=2**31 - 1)
    val_ratio: float = Field(0.2, gt=0.0, le=0.5, description="Held-out share per class when there is no "
                                                              "validation set (stratified split).")

    @field_validator("target_modules")
    @classmethod
    def _names(cls, value: list[str]) -> list[str]:
        cleaned = [v.strip() for v in value if isinstance(v, str) and v.strip()]
        if len(cleaned) != len(value):
            raise ValueError("module names must be non-empty strings")
        return cleaned

    def to_dict(self) -> dict:
        return self.model_dump()


def validate_params(params: dict | None) -> ClassifierParams:
    """Validate submitted hyperparameters; raises ``InvalidParams`` naming the first bad field."""
    if params is not None and not isinstance(params, dict):
        raise InvalidParams("hyperparameters must be a JSON object.", field="params")
    try:
        return ClassifierParams(**(params or {}))
    except ValidationError as exc:
        errors = exc.errors()
        first = errors[0]
        field = ".".join(str(p) for p in first.get("loc", ())) or "params"
        name = field.split(".")[0]
        msg = first.get("msg", "invalid value")
        if first.get("type") == "extra_forbidden":
            allowed = ", ".join(ClassifierParams.model_fields)
            msg = f"unknown hyperparameter (allowed: {allowed})"
        raise InvalidParams(f"{name}: {msg}", field=name, errors=errors) from None
