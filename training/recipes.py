"""Training recipes as YAML: our own keys, and LLaMA-Factory's training keys where they mean the same thing.

``training_recipe_parse`` reads a recipe (no database): every key is checked, and an unknown or unsupported key
or value is refused by name with its line, never ignored. ``training_recipe_task_create`` creates the task it
describes (explicit arguments override the recipe), through ``training_task_create`` like every other door.
``training_recipe_export`` writes the YAML that reproduces a task: its concrete, resolved hyperparameters (not
"auto", whose rules may change between releases) and the exact dataset versions and base model it used.

LLaMA-Factory keys read (with ours beside them): ``model_name_or_path`` (base_model), ``dataset``
(train_version; one dataset), ``eval_dataset`` (validation_version), ``val_size`` (a validation split cut from
the training data with ``seed``, as LLaMA-Factory does), ``finetuning_type`` (lora only), ``stage`` (sft only),
``do_train`` (true), ``lora_rank`` (lora_r), ``lora_alpha``, ``lora_dropout``, ``lora_target`` (target_modules;
``all`` is all-linear), ``cutoff_len`` (max_seq_length), ``per_device_train_batch_size`` (batch_size),
``gradient_accumulation_steps``, ``learning_rate``, ``num_train_epochs`` (n_epochs, whole numbers),
``lr_scheduler_type`` (lr_scheduler), ``warmup_ratio``, ``quantization_bit`` (4: nf4, 8: int8), ``template``,
``seed``, ``max_steps``, ``save_steps``, ``eval_steps``, ``packing``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import yaml
from django.utils import timezone

from accounts.models import Team
from accounts.visibility import Actor
from catalog.models import BaseModel
from core.errors import ApplicationError
from datasets_app.models import DatasetVersion
from datasets_app.services import dataset_version_get, dataset_version_split
from ml.hparams import AUTO, METHOD_ONLY, InvalidParams, TrainingParams, parse_params
from training.models import TrainingTask
from training.services import training_task_create

# Task-level keys of our own (the rest of our keys are TrainingParams' fields).
TASK_KEYS = ("name", "base_model", "train_version", "validation_version", "priority", "evaluate",
             "evaluation_metrics")
PARAM_KEYS = tuple(TrainingParams.model_fields)
# Derived or informational values of a resolved task that a recipe does not set.
NOT_EXPORTED = {"device", "steps_per_epoch", "total_steps", "auto", "learning_rate_multiplier"}

# LLaMA-Factory's templates for one model family format a conversation as that model's own chat template does.
FAMILY_TEMPLATES = {"llama2", "llama3", "llama4", "mistral", "qwen", "qwen2_vl", "qwen3", "gemma", "gemma3", "phi",
                    "phi4", "deepseek", "deepseek3", "glm4", "yi", "cohere", "granite3", "olmo", "smollm",
                    "smollm2"}
# LLaMA-Factory keys with no counterpart here, and why (a recipe using them is refused, not half-applied).
UNSUPPORTED = {
    "output_dir": "runs and adapters are stored under DATA_DIR",
    "overwrite_output_dir": "runs and adapters are stored under DATA_DIR",
    "logging_steps": "metrics are logged at every optimizer step",
    "plot_loss": "the task page charts the loss",
    "report_to": "every task writes its own logs",
    "deepspeed": "several processes per task are num_processes with strategy ddp or fsdp",
    "bf16": "the compute precision follows the device",
    "fp16": "the compute precision follows the device",
    "resume_from_checkpoint": "pause and resume a task instead",
    "max_samples": "upload the examples to train on as a dataset version",
    "trust_remote_code": "models' own code is never run",
    "per_device_eval_batch_size": "validation uses the training batch size",
}


class RecipeError(ApplicationError):
    """A recipe was refused: ``param`` names the first offending key, ``details`` lists every problem."""

    def __init__(self, problems: list[dict]) -> None:
        first = problems[0]
        message = "; ".join(_problem_text(p) for p in problems)
        super().__init__(message, code="invalid_recipe", param=first["param"], details=problems)


def _problem_text(problem: dict) -> str:
    where = f"line {problem['line']}: " if problem.get("line") else ""
    return f"{where}{problem['param']}: {problem['message']}"


@dataclass
class Recipe:
    """What a recipe says, in our terms: task arguments, hyperparameters, and where each came from."""

    task: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    val_size: float | None = None
    # our name -> (the recipe's key, its line)
    origin: dict[str, tuple[str, int]] = field(default_factory=dict)

    def where(self, name: str) -> tuple[str, int | None]:
        return self.origin.get(name, (name, None))


# ------------------------------------------------------------------------------------------------ converters

class _Refused(ValueError):
    pass


def _same(value: Any) -> Any:
    return value


def _number(value: Any) -> Any:
    # PyYAML reads 1e-4 (no dot) as a string, as YAML 1.1 says; LLaMA-Factory's recipes write it so.
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _epochs(value: Any) -> Any:
    value = _number(value)
    if isinstance(value, float):
        if not value.is_integer():
            raise _Refused(f"{value:g} epochs: only whole epochs are supported (or set max_steps)")
        return int(value)
    return value


def _modules(value: Any) -> Any:
    if value == "all":
        return "all-linear"
    if isinstance(value, str):
        return "all-linear" if value == "all-linear" else [m.strip() for m in value.split(",") if m.strip()]
    return value


def _quantization(value: Any) -> Any:
    if value in (None, "none", False):
        return "none"
    if value in (4, "4"):
        return "nf4"
    if value in (8, "8"):
        return "int8"
    raise _Refused(f"{value!r}: 4 (nf4) or 8 (int8) bits are supported")


def _template(value: Any) -> Any:
    if value in ("chat_template", "chatml", "alpaca", "alpaca_zh", "auto"):
        return value
    if isinstance(value, str) and value.lower() in FAMILY_TEMPLATES:
        return "chat_template"
    raise _Refused(f"{value!r} is not supported: use chat_template (the model's own), chatml, alpaca, alpaca_zh, or "
                   "a model family's template (llama3, qwen, mistral, ...)")


def _one_dataset(value: Any) -> Any:
    if isinstance(value, str) and "," in value:
        raise _Refused("one dataset per task (merge them into one dataset version)")
    return value


def _fixed(expected: Any, why: str) -> Callable[[Any], None]:
    def check(value: Any) -> None:
        if value != expected:
            raise _Refused(f"{value!r} is not supported: {why}")

    return check


# recipe key -> (our name, or None for a key that only has to hold its one supported value; converter)
LLAMA_FACTORY: dict[str, tuple[str | None, Callable[[Any], Any]]] = {
    "model_name_or_path": ("base_model", _same),
    "dataset": ("train_version", _one_dataset),
    "eval_dataset": ("validation_version", _one_dataset),
    "val_size": ("val_size", _number),
    "lora_rank": ("lora_r", _same),
    "lora_target": ("target_modules", _modules),
    "cutoff_len": ("max_seq_length", _same),
    "per_device_train_batch_size": ("batch_size", _same),
    "num_train_epochs": ("n_epochs", _epochs),
    "lr_scheduler_type": ("lr_scheduler", _same),
    "quantization_bit": ("quantization", _quantization),
    "stage": (None, _fixed("sft", "only supervised fine-tuning (sft) is supported")),
    "finetuning_type": (None, _fixed("lora", "only LoRA (and QLoRA with quantization_bit) is supported")),
    "do_train": (None, _fixed(True, "a recipe here always trains")),
}
OWN: dict[str, Callable[[Any], Any]] = {
    **dict.fromkeys(TASK_KEYS, _same), **dict.fromkeys(PARAM_KEYS, _same),
    "learning_rate": _number, "warmup_ratio": _number, "lora_dropout": _number, "lora_alpha": _number,
    "learning_rate_multiplier": _number, "n_epochs": _epochs, "template": _template, "target_modules": _modules,
}


# ------------------------------------------------------------------------------------------------ reading

def _load(text: str) -> list[tuple[str, Any, int]]:
    """(key, value, line) of the recipe's top-level mapping; line numbers start at 1."""
    try:
        loader = yaml.SafeLoader(text)
        try:
            root = loader.get_single_node()
            if root is None:
                raise RecipeError([{"param": "config", "line": None, "message": "the recipe is empty"}])
            if not isinstance(root, yaml.MappingNode):
                raise RecipeError([{"param": "config", "line": root.start_mark.line + 1,
                                    "message": "a recipe is a mapping of keys to values"}])
            pairs = []
            for key_node, value_node in root.value:
                key = loader.construct_object(key_node, deep=True)
                pairs.append((str(key), loader.construct_object(value_node, deep=True), key_node.start_mark.line + 1))
            return pairs
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise RecipeError([{"param": "config", "line": mark.line + 1 if mark else None,
                            "message": f"not valid YAML: {getattr(exc, 'problem', None) or exc}"}]) from None


def training_recipe_parse(text: str | bytes) -> Recipe:
    """Read a recipe; raise ``RecipeError`` naming every unknown, unsupported, repeated or invalid key and its line."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise RecipeError([{"param": "config", "line": None, "message": "the recipe is not UTF-8 text"}]) from None
    recipe = Recipe()
    problems: list[dict] = []
    for key, value, line in _load(text):
        if key in LLAMA_FACTORY:
            name, convert = LLAMA_FACTORY[key]
        elif key in OWN:
            name, convert = key, OWN[key]
        elif key in UNSUPPORTED:
            problems.append({"param": key, "line": line, "message": f"unsupported key ({UNSUPPORTED[key]})"})
            continue
        else:
            problems.append({"param": key, "line": line, "message": "unknown key"})
            continue
        try:
            converted = convert(value)
        except _Refused as exc:
            problems.append({"param": key, "line": line, "message": str(exc)})
            continue
        if name is None:
            continue
        if name in recipe.origin:
            other, other_line = recipe.origin[name]
            problems.append({"param": key, "line": line,
                             "message": f"sets {name} again (already set by {other} on line {other_line})"})
            continue
        recipe.origin[name] = (key, line)
        if name == "val_size":
            if not isinstance(converted, float | int) or isinstance(converted, bool) or not 0 < converted < 1:
                problems.append({"param": key, "line": line, "message": "a fraction between 0 and 1 (exclusive)"})
                continue
            recipe.val_size = float(converted)
        elif name in TASK_KEYS:
            recipe.task[name] = converted
        else:
            recipe.params[name] = converted
    if recipe.val_size is not None and "validation_version" in recipe.task:
        key, line = recipe.where("val_size")
        problems.append({"param": key, "line": line, "message": "give val_size or a validation dataset, not both"})
    if not problems:
        try:
            parse_params(recipe.params)
        except InvalidParams as exc:
            for err in exc.errors or [{"loc": (exc.field or "params",), "msg": exc.message, "type": ""}]:
                name = str(err["loc"][0]) if err.get("loc") else "params"
                key, line = recipe.where(name)
                message = "unknown key" if err.get("type") == "extra_forbidden" else err["msg"]
                if not any(p["param"] == key for p in problems):  # one message per key (unions report several)
                    problems.append({"param": key, "line": line, "message": message})
    if problems:
        raise RecipeError(sorted(problems, key=lambda p: p["line"] or 0))
    return recipe


# ------------------------------------------------------------------------------------------------ creating

def _base_model_ref(value: Any) -> Any:
    """A LLaMA-Factory ``model_name_or_path`` (a hub id or a folder) as one of our base models' names, when one
    matches its folder or its last path segment; anything else is passed on (and refused there if unknown)."""
    if not isinstance(value, str) or "/" not in value:
        return value
    by_path = BaseModel.objects.filter(path=value.rstrip("/")).values_list("pk", flat=True).first()
    if by_path is not None:
        return by_path
    return value.rstrip("/").rsplit("/", 1)[-1]


def _located(exc: ApplicationError, recipe: Recipe) -> ApplicationError:
    """The service's error, pointed at the recipe key (and line) that set the offending value."""
    if not exc.param:
        return exc
    name = exc.param.split(".", 1)[0]
    if name == "dataset":
        name = "train_version"
    if name not in recipe.origin:
        return exc
    key, line = recipe.where(name)
    exc.message = f"line {line}: {key}: {exc.message}"
    exc.args = (exc.message,)
    exc.param = key
    return exc


def training_recipe_task_create(*, user: Actor, config: str | bytes, team: Team | str | None = None,
                                name: str | None = None, base_model: BaseModel | str | int | None = None,
                                train_version: DatasetVersion | str | int | None = None,
                                validation_version: DatasetVersion | str | int | None = None,
                                params: dict | None = None, priority: int | None = None,
                                evaluate: bool | None = None,
                                evaluation_metrics: list[str] | str | None = None) -> TrainingTask:
    """The task a recipe describes; each argument given here overrides the recipe's value (``params`` key by key)."""
    recipe = training_recipe_parse(config)
    task = dict(recipe.task)
    for key, value in (("name", name), ("base_model", base_model), ("train_version", train_version),
                       ("validation_version", validation_version), ("priority", priority), ("evaluate", evaluate),
                       ("evaluation_metrics", evaluation_metrics)):
        if value not in (None, ""):
            task[key] = value
            recipe.origin.pop(key, None)
    for key in params or {}:
        recipe.origin.pop(key, None)
    merged = {**recipe.params, **(params or {})}
    missing = [k for k in ("base_model", "train_version") if task.get(k) in (None, "")]
    if missing:
        hint = {"base_model": "base_model (or model_name_or_path)", "train_version": "train_version (or dataset)"}
        raise RecipeError([{"param": k, "line": None, "message": f"missing: give {hint[k]}"} for k in missing])
    try:
        base = task["base_model"]
        if recipe.where("base_model")[0] == "model_name_or_path":
            base = _base_model_ref(base)
        train = task["train_version"]
        validation = task.get("validation_version")
        if recipe.val_size is not None and validation in (None, ""):
            # LLaMA-Factory's val_size: a validation split of the training data, cut with the recipe's seed (the same
            # seed and size give back the same pair).
            source = dataset_version_get(user=user, ref=train, require_ready=True)
            train, validation = dataset_version_split(user=user, version=source, val_ratio=recipe.val_size,
                                                      seed=int(merged.get("seed", 42)))
        return training_task_create(user=user, team=team, name=task.get("name"), base_model=base,
                                    train_version=train, validation_version=validation, params=merged,
                                    priority=task.get("priority", 0), evaluate=bool(task.get("evaluate", False)),
                                    evaluation_metrics=task.get("evaluation_metrics"))
    except RecipeError:
        raise
    except ApplicationError as exc:
        raise _located(exc, recipe) from None


# ------------------------------------------------------------------------------------------------ exporting

def training_recipe_params(task: TrainingTask) -> dict[str, Any]:
    """The hyperparameters a task ran with, as a recipe sets them (the learning rate multiplier already applied)."""
    resolved = dict(task.resolved_params or {})
    out = {}
    for key in PARAM_KEYS:
        if key in NOT_EXPORTED or key not in resolved:
            continue
        if key in METHOD_ONLY and task.method not in METHOD_ONLY[key]:
            continue  # a parameter this task's method does not read (its resolved default is not a choice)
        value = resolved[key]
        if key == "max_steps" and value is None:
            continue
        if key == "bf16" and value == AUTO:
            # decided by the probe of whichever worker runs it (left out, a recipe means the same: auto)
            continue
        out[key] = value
    return out


def training_recipe_export(*, user: Actor, task: TrainingTask) -> str:
    """The YAML recipe that reproduces ``task`` (the caller has checked that ``user`` may read it)."""
    header = [f"# LoRA Studio recipe of training task {task.pk} {task.name!r} (team {task.team.name}), exported "
              f"{timezone.now():%Y-%m-%d %H:%M} UTC by {getattr(user, 'username', None) or 'a script'}.",
              f"# Reproduce: manage.py start_training --team {task.team.name} --name {task.name}-repro "
              "--config this.yaml",
              "# Values chosen automatically for the original run, and why:"]
    header += [f"#   {key}: {why}" for key, why in sorted((task.auto_explanation or {}).items())]
    team = task.team.name
    body: dict[str, Any] = {"name": task.name, "base_model": task.base_model.name,
                            "train_version": f"{team}/{task.train_version.ref}"}
    if task.validation_version_id:
        body["validation_version"] = f"{team}/{task.validation_version.ref}"
    if task.priority:
        body["priority"] = task.priority
    if task.evaluate_on_success:
        body["evaluate"] = True
        if task.evaluation_metrics:
            body["evaluation_metrics"] = list(task.evaluation_metrics)
    body["stage"] = "sft"
    body["finetuning_type"] = "lora"
    body.update(training_recipe_params(task))
    return "\n".join(header) + "\n" + yaml.safe_dump(body, sort_keys=False, allow_unicode=True)
