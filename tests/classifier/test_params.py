"""Classifier hyperparameters: defaults, ranges, unknown keys, each error naming its field."""

from __future__ import annotations

import pytest

from ml.classifier_params import DEFAULT_TARGET_MODULES, InvalidParams, validate_params


def test_defaults_are_the_documented_lora_settings():
    p = validate_params({})
    assert (p.lora_r, p.lora_alpha, p.lora_dropout) == (8, 16, 0.1)
    assert p.target_modules == DEFAULT_TARGET_MODULES == ["query", "key", "value", "dense"]
    assert p.class_weighting == "auto"


@pytest.mark.parametrize("params, field", [
    ({"lora_r": 0}, "lora_r"),
    ({"lora_dropout": 1.5}, "lora_dropout"),
    ({"n_epochs": 0}, "n_epochs"),
    ({"batch_size": "big"}, "batch_size"),
    ({"learning_rate": -1}, "learning_rate"),
    ({"max_seq_length": 4}, "max_seq_length"),
    ({"class_weighting": "sometimes"}, "class_weighting"),
    ({"val_ratio": 0.9}, "val_ratio"),
    ({"target_modules": []}, "target_modules"),
    ({"epochs": 3}, "epochs"),
])
def test_bad_values_are_refused_naming_the_field(params, field):
    with pytest.raises(InvalidParams) as err:
        validate_params(params)
    assert err.value.field == field
    assert err.value.message.startswith(f"{field}:")


def test_a_non_object_is_refused():
    with pytest.raises(InvalidParams) as err:
        validate_params(["n_epochs", 3])  # type: ignore[arg-type]
    assert err.value.field == "params"


def test_auto_fields_left_out_or_given_as_auto_are_resolved_from_the_data():
    from ml.classifier_params import resolve_params

    for given in ({}, {"n_epochs": "auto", "learning_rate": "auto", "lora_r": "auto"}):
        params, why = resolve_params(validate_params(given), class_counts={"a": 70, "b": 22, "c": 20})
        assert params.batch_size == 8 and params.n_epochs == 26  # 14 steps an epoch, ~360 steps
        assert params.early_stopping_patience == 8 and params.learning_rate == 3e-4 and params.lora_r == 8 and params.lora_alpha == 16
        assert params.sampling == "balanced" and params.class_weighting == "none"
        assert {"n_epochs", "batch_size", "learning_rate", "lora_r", "sampling", "class_weighting"} <= set(why)
        assert "70" in why["sampling"] and "20" in why["sampling"]


def test_given_values_are_kept_and_large_balanced_sets_get_few_epochs():
    from ml.classifier_params import resolve_params

    params, why = resolve_params(validate_params({"n_epochs": 2, "learning_rate": 0.003}),
                                 class_counts={"a": 3000, "b": 2900})
    assert (params.n_epochs, params.learning_rate) == (2, 0.003) and "n_epochs" not in why
    assert params.batch_size == 32 and params.sampling == "shuffle" and params.lora_r == 16
    assert params.early_stopping_patience == 0  # nothing to stop over two epochs
    _, why = resolve_params(validate_params({}), class_counts={"a": 3000, "b": 2900})
    assert why["n_epochs"].startswith("3 epochs")


def test_explicit_class_weights_keep_shuffled_batches():
    from ml.classifier_params import resolve_params

    params, _ = resolve_params(validate_params({"class_weighting": "balanced"}), class_counts={"a": 90, "b": 10})
    assert params.sampling == "shuffle" and params.class_weighting == "balanced"
