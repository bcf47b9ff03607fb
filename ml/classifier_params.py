"""Hyperparameters of a classifier task (plain module: pydantic only; shared by the API, services and the recipe
``ml.train.classifier``)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

# Attention (query/key/value) and feed-forward (every ``dense``: attention output, intermediate, output) of
# BERT-family encoders. The recipe maps these onto each architecture's own names (DistilBERT's ``q_lin`` ...,
# DeBERTa-v2's ``query_proj`` ...) and never onto the classification head, which is trained in full.
DEFAULT_TARGET_MODULES = ["query", "key", "value", "dense"]

# Hyperparameters that "auto" (leaving them out, or giving the string "auto") resolves from the training data.
AUTO_FIELDS = ("n_epochs", "batch_size", "learning_rate", "lora_r", "lora_alpha", "early_stopping_patience")

# The number of optimizer steps a small set needs to converge at the auto learning rate (``AUTO_LEARNING_RATE``).
# Measured on all-MiniLM-L6-v2 with 90-240 short questions: 36 steps, the old 6-epoch default on 90, left the
# minority classes unlearned, macro-F1 0.66. On the 156 questions of tests/classifier/test_imbalanced_minilm.py
# (90 training after the validation split, 12 steps an epoch) ~250 steps at 1e-3 trained unstably (validation
# loss jumping 4x within an epoch; held-out macro-F1 0.779 at seed 42, 0.853 over seeds 1-4), while 360 steps
# (30 epochs) at 3e-4 scored 0.859 at seed 42 and 0.883 on average over seeds 42 and 1-5 (0.859-0.915; see
# benchmarks/RESULTS.md). Early stopping on validation macro-F1 ends the run sooner when it stops improving.
TARGET_STEPS = 360
AUTO_LEARNING_RATE = 3e-4
MAX_AUTO_EPOCHS = 30


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
    sampling: Literal["auto", "shuffle", "balanced"] = Field(
        "auto", description="balanced: each class drawn equally often in an epoch (then no class weights); auto: "
                            "balanced when the largest class is over 1.5 times the smallest.")
    early_stopping_patience: int = Field(
        0, ge=0, le=100, description="Stop after this many epochs without a better validation macro-F1 (0: never). "
                                     "Resolved from the number of epochs when not given.")
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
    """Validate submitted hyperparameters; raises ``InvalidParams`` naming the first bad field.

    A field of ``AUTO_FIELDS`` left out or given as ``"auto"`` keeps its default here and is not in the result's
    ``model_fields_set``: ``resolve_params`` then chooses it from the data.
    """
    if params is not None and not isinstance(params, dict):
        raise InvalidParams("hyperparameters must be a JSON object.", field="params")
    given = {k: v for k, v in (params or {}).items() if not (k in AUTO_FIELDS and v == "auto")}
    try:
        return ClassifierParams(**given)
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


def resolve_params(params: ClassifierParams, *, class_counts: dict[str, int]) -> tuple[ClassifierParams, dict[str, str]]:
    """Choose every hyperparameter the user left to "auto" from the training split's size and balance.

    Returns the resolved parameters (only numbers, as the recipe runs them) and, per resolved field, why.
    Small sets get small batches and as many epochs as it takes to reach ``TARGET_STEPS`` optimizer steps, with
    early stopping on validation macro-F1; imbalanced ones get class weights (``class_weighting="auto"``) and the
    best epoch by macro-F1, so the minority classes count as much as the majority one.
    """
    given = params.model_fields_set
    n = sum(class_counts.values())
    smallest, largest = min(class_counts.values()), max(class_counts.values())
    values: dict = {}
    why: dict[str, str] = {}
    if "batch_size" not in given:
        values["batch_size"] = 8 if n < 500 else 16 if n < 5000 else 32
        why["batch_size"] = (f"{values['batch_size']} for {n} training examples: small batches give a small set "
                             "more updates per epoch")
    batch = values.get("batch_size", params.batch_size)
    steps_per_epoch = max(1, -(-n // batch))
    if "n_epochs" not in given:
        values["n_epochs"] = min(MAX_AUTO_EPOCHS, max(3, -(-TARGET_STEPS // steps_per_epoch)))
        why["n_epochs"] = (f"{values['n_epochs']} epochs of {steps_per_epoch} steps: about {TARGET_STEPS} optimizer "
                           f"steps (at least 3, at most {MAX_AUTO_EPOCHS} epochs)")
    epochs = values.get("n_epochs", params.n_epochs)
    if "early_stopping_patience" not in given:
        values["early_stopping_patience"] = max(3, epochs // 3) if epochs > 5 else 0
        why["early_stopping_patience"] = (
            f"stop after {values['early_stopping_patience']} epochs without a better validation macro-F1"
            if values["early_stopping_patience"] else "no early stopping over so few epochs")
    if "lora_r" not in given:
        values["lora_r"] = 8 if n < 2000 else 16
        why["lora_r"] = f"rank {values['lora_r']} for {n} examples (a larger rank only pays off on larger sets)"
    if "lora_alpha" not in given:
        values["lora_alpha"] = 2 * values.get("lora_r", params.lora_r)
        why["lora_alpha"] = "twice the rank"
    if "learning_rate" not in given:
        values["learning_rate"] = AUTO_LEARNING_RATE
        why["learning_rate"] = (f"{AUTO_LEARNING_RATE:g} over about {TARGET_STEPS} steps: on a 156-question "
                                "imbalanced MiniLM set it trained stably (held-out macro-F1 0.88 on average over six "
                                "seeds) where 1e-3 over 250 steps did not (0.78-0.89)")
    # Balanced sampling rather than class weights on imbalanced sets: measured on 156 questions (96/31/29, 44 held
    # out) over five seeds, held-out macro-F1 0.87 on average (0.81-0.89) against 0.84 (0.65-0.92) with weights.
    imbalanced = largest > 1.5 * smallest
    sizes = f"the largest class has {largest} examples, the smallest {smallest}"
    if params.sampling == "auto":
        values["sampling"] = "balanced" if imbalanced and params.class_weighting != "balanced" else "shuffle"
        why["sampling"] = (f"balanced: {sizes}" if values["sampling"] == "balanced" else
                           "shuffle: class weights were asked for" if imbalanced else
                           f"shuffle: classes are balanced ({smallest} to {largest} examples)")
    if values.get("sampling", params.sampling) == "balanced":
        values["class_weighting"] = "none"
        if params.class_weighting == "auto":
            why["class_weighting"] = "none: balanced sampling already weighs the classes equally"
    elif params.class_weighting == "auto":
        why["class_weighting"] = f"balanced: {sizes}" if imbalanced else "none: classes are balanced"
    return params.model_copy(update=values), why
