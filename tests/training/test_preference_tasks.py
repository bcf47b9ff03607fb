"""Preference training tasks: the method decides the formats (refused both ways), its parameters are validated by
name, a start adapter must fit, and a DPO task runs through the job machinery to a registered plain adapter."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.errors import ApplicationError
from jobs import runtime
from jobs.models import JobStatus
from tests.training.test_preference import kto_rows, pairs
from training import services
from training.models import Adapter, TrainingTask

pytestmark = pytest.mark.django_db

FAST = {"n_epochs": 2, "batch_size": 4, "learning_rate": 1e-3, "lora_r": 8, "save_steps": 1000, "max_seq_length": 128}


@pytest.fixture
def setup(make_team, make_user, tiny_base_model, make_version):
    team = make_team("alpha")
    alice = make_user("alice", team, "member")
    return team, alice


def create(user, version, model, **kwargs):
    return services.training_task_create(user=user, name=kwargs.pop("name", "pref"), base_model=model,
                                         train_version=version, **kwargs)


def test_a_preference_file_for_sft_is_refused_naming_the_format(setup, tiny_base_model, make_version):
    team, alice = setup
    version = make_version(team, pairs(12), name="pairs", fmt="preference")
    with pytest.raises(ApplicationError) as err:
        create(alice, version, tiny_base_model)
    assert err.value.param == "train_version" and err.value.code == "invalid_dataset"
    assert "'preference'" in err.value.message and "method dpo or orpo" in err.value.message


def test_an_sft_file_for_dpo_is_refused_naming_the_format(setup, tiny_base_model, make_version):
    team, alice = setup
    version = make_version(team)  # chat rows, format openai
    with pytest.raises(ApplicationError) as err:
        create(alice, version, tiny_base_model, method="dpo")
    assert err.value.param == "train_version"
    assert "'openai'" in err.value.message and "preference pairs" in err.value.message
    assert "method sft" in err.value.message


@pytest.mark.parametrize("method, fmt, rows, words", [
    ("kto", "preference", pairs(12), "method dpo or orpo"),
    ("dpo", "kto", kto_rows(12), "labelled answers"),
    ("sft", "kto", kto_rows(12), "method kto"),
])
def test_each_method_takes_only_its_own_format(setup, tiny_base_model, make_version, method, fmt, rows, words):
    team, alice = setup
    with pytest.raises(ApplicationError) as err:
        create(alice, make_version(team, rows, name=fmt, fmt=fmt), tiny_base_model, method=method)
    assert words in err.value.message and f"'{fmt}'" in err.value.message


@pytest.mark.parametrize("method, params, field", [
    ("sft", {"beta": 0.2}, "beta"),
    ("dpo", {"beta": 0}, "beta"),
    ("dpo", {"loss_type": "kto"}, "loss_type"),
    ("dpo", {"label_smoothing": 0.7}, "label_smoothing"),
    ("dpo", {"desirable_weight": 2.0}, "desirable_weight"),
    ("orpo", {"loss_type": "sigmoid"}, "loss_type"),
    ("kto", {"undesirable_weight": -1}, "undesirable_weight"),
    ("dpo", {"packing": True}, "packing"),
])
def test_method_parameters_are_validated_naming_the_field(setup, tiny_base_model, make_version, method, params,
                                                          field):
    team, alice = setup
    fmt, rows = ("kto", kto_rows(12)) if method == "kto" else ("openai", None) if method == "sft" else \
        ("preference", pairs(12))
    with pytest.raises(ApplicationError) as err:
        create(alice, make_version(team, rows, name=fmt, fmt=fmt), tiny_base_model, method=method, params=params)
    assert err.value.param == field and err.value.code == "invalid_parameter"


def test_unknown_method_is_refused(setup, tiny_base_model, make_version):
    team, alice = setup
    with pytest.raises(ApplicationError) as err:
        create(alice, make_version(team), tiny_base_model, method="ppo")
    assert err.value.param == "method"


def test_dpo_task_resolves_auto_parameters_for_the_method(setup, tiny_base_model, make_version):
    team, alice = setup
    task = create(alice, make_version(team, pairs(12), name="pairs", fmt="preference"), tiny_base_model,
                  method="dpo", params={"beta": 0.2})
    assert task.status == JobStatus.QUEUED and task.method == "dpo"
    assert task.resolved_params["beta"] == 0.2 and task.resolved_params["loss_type"] == "sigmoid"
    assert "learning_rate" in task.auto_explanation and "dpo" in task.auto_explanation["learning_rate"]
    assert task.events.filter(message__startswith="Created: DPO (beta 0.2, loss sigmoid)").exists()


def test_a_start_adapter_of_another_base_model_is_refused(setup, tiny_base_model, make_version, tiny_model_dir):
    from catalog.models import BaseModel

    team, alice = setup
    other = BaseModel.objects.create(name="other-llama", kind=tiny_base_model.kind, path=str(tiny_model_dir),
                                     config=tiny_base_model.config)
    adapter = Adapter.objects.create(name="sft-other", team=team, base_model=other, path="/nowhere")
    with pytest.raises(ApplicationError) as err:
        create(alice, make_version(team, pairs(12), name="pairs", fmt="preference"), tiny_base_model,
               method="dpo", start_adapter=adapter.name)
    assert err.value.param == "start_adapter" and "same base model" in err.value.message


def test_dpo_task_from_an_sft_adapter_runs_and_registers_a_plain_adapter_with_lineage(
        setup, tiny_base_model, make_version):
    from training.lifecycle import adapter_lineage

    team, alice = setup
    sft = create(alice, make_version(team), tiny_base_model, name="sft", params=dict(FAST, learning_rate=1e-2))
    assert runtime.run_foreground(sft) == JobStatus.SUCCEEDED
    sft_adapter = sft.adapters.get()
    task = create(alice, make_version(team, pairs(16), name="pairs", fmt="preference"), tiny_base_model,
                  name="dpo", method="dpo", start_adapter=sft_adapter.pk, params=FAST,
                  validation_version=make_version(team, pairs(4)[:4] * 3, name="pairs-val", fmt="preference"))
    assert runtime.run_foreground(task) == JobStatus.SUCCEEDED, list(task.events.values_list("message", flat=True))
    task.refresh_from_db()
    adapter = task.adapters.get()
    config = json.loads(Path(adapter.path, "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(Path(tiny_base_model.path).resolve())
    assert config["r"] == 8 and not Path(adapter.path, "ref").exists()
    assert task.metrics["valid_reward_accuracy"] >= 0.5 and "valid_reward_margin" in task.metrics
    events = list(task.events.filter(type="metrics").values_list("message", "data"))
    assert any("reward accuracy" in message for message, _d in events)
    assert any("valid_reward_margin" in data for _m, data in events)
    lineage = adapter_lineage(user=alice, adapter=adapter)
    assert lineage["task"]["method"] == "dpo" and lineage["task"]["start_adapter"]["id"] == sft_adapter.pk
    assert TrainingTask.objects.get(pk=task.pk).start_adapter == sft_adapter


def test_results_csv_of_a_dpo_task_has_the_reward_columns(setup, tiny_base_model, make_version):
    from openai_compat.files import result_file_csv

    team, alice = setup
    task = create(alice, make_version(team, pairs(12), name="pairs", fmt="preference"), tiny_base_model,
                  method="dpo", params=dict(FAST, max_steps=2))
    assert runtime.run_foreground(task) == JobStatus.SUCCEEDED
    csv = result_file_csv(alice, f"file-results-{task.pk}")
    header = csv.splitlines()[0].split(",")
    assert header[:5] == ["step", "train_loss", "train_accuracy", "valid_loss", "valid_mean_token_accuracy"]
    assert "train_reward_accuracy" in header and "train_reward_margin" in header
