"""Classifier hyperparameters: defaults, ranges, unknown keys, each error naming its field."""

from __future__ import annotations

import pytest

from classifier.params import DEFAULT_TARGET_MODULES, InvalidParams, validate_params


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
