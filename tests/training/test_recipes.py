"""YAML recipes: LLaMA-Factory's keys give the same task as our parameters, unknown and unsupported keys are refused
by name and line, and a task's exported recipe re-imports to exactly its parameters (service, API, command, admin)."""

from __future__ import annotations

import textwrap

import pytest
import yaml

from core.errors import ApplicationError
from training import recipes
from training.models import TrainingTask
from training.recipes import RecipeError, training_recipe_parse
from training.services import training_task_create

LLAMA_FACTORY = textwrap.dedent("""\
    ### model
    model_name_or_path: HuggingFaceTB/tiny-llama
    ### method
    stage: sft
    do_train: true
    finetuning_type: lora
    lora_rank: 4
    lora_alpha: 8
    lora_dropout: 0.05
    lora_target: q_proj,v_proj
    ### dataset
    dataset: faq
    template: qwen
    cutoff_len: 256
    ### train
    per_device_train_batch_size: 2
    gradient_accumulation_steps: 2
    learning_rate: 1e-4
    num_train_epochs: 3.0
    lr_scheduler_type: cosine
    warmup_ratio: 0.1
    seed: 7
    """)
OURS = {"lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.05, "target_modules": ["q_proj", "v_proj"],
        "template": "chat_template", "max_seq_length": 256, "batch_size": 2, "gradient_accumulation_steps": 2,
        "learning_rate": 1e-4, "n_epochs": 3, "lr_scheduler": "cosine", "warmup_ratio": 0.1, "seed": 7}


def test_llama_factory_keys_read_as_our_parameters():
    recipe = training_recipe_parse(LLAMA_FACTORY)
    assert recipe.params == OURS
    assert recipe.task == {"base_model": "HuggingFaceTB/tiny-llama", "train_version": "faq"}
    assert recipe.where("lora_r") == ("lora_rank", 7)


@pytest.mark.parametrize("text, key, line, words", [
    ("lora_rank: 8\nnum_beams: 4\n", "num_beams", 2, "unknown key"),
    ("seed: 1\n\noutput_dir: saves/x\n", "output_dir", 3, "unsupported key"),
    ("stage: dpo\n", "stage", 1, "sft"),
    ("finetuning_type: full\n", "finetuning_type", 1, "LoRA"),
    ("num_train_epochs: 2.5\n", "num_train_epochs", 1, "whole epochs"),
    ("quantization_bit: 2\n", "quantization_bit", 1, "4 (nf4) or 8"),
    ("template: vicuna\n", "template", 1, "not supported"),
    ("dataset: a,b\n", "dataset", 1, "one dataset"),
    ("lora_rank: 8\nlora_r: 16\n", "lora_r", 2, "already set by lora_rank on line 1"),
    ("seed: 3\nlora_rank: 0\n", "lora_rank", 2, "greater than or equal to 1"),
    ("lr_scheduler_type: polynomial\n", "lr_scheduler_type", 1, "linear"),
    ("val_size: 1.5\n", "val_size", 1, "fraction"),
    ("- a\n- b\n", "config", 1, "mapping"),
    ("seed: [1\n", "config", 2, "not valid YAML"),
])
def test_unknown_and_unsupported_keys_are_refused_by_name_and_line(text, key, line, words):
    with pytest.raises(RecipeError) as err:
        training_recipe_parse(text)
    assert err.value.param == key and err.value.code == "invalid_recipe"
    assert f"line {line}: {key}:" in err.value.message and words in err.value.message


def test_every_bad_key_is_listed_not_only_the_first():
    with pytest.raises(RecipeError) as err:
        training_recipe_parse("foo: 1\nlora_rank: 8\nbar: 2\n")
    assert [(p["param"], p["line"]) for p in err.value.details] == [("foo", 1), ("bar", 3)]


# ------------------------------------------------------------------------------------------------ with the database

@pytest.fixture
def setup(make_team, make_user, tiny_base_model, make_version):
    team = make_team("alpha")
    alice = make_user("alice", team, "member")
    return team, alice, make_version(team)


COMPARED = ("params", "resolved_params", "auto_explanation", "seed", "total_steps", "estimated_memory_bytes",
            "base_model_id", "train_version_id", "validation_version_id")


def same_task(a: TrainingTask, b: TrainingTask) -> None:
    assert {k: getattr(a, k) for k in COMPARED} == {k: getattr(b, k) for k in COMPARED}


@pytest.mark.django_db
def test_a_llama_factory_recipe_creates_the_same_task_as_the_equivalent_parameters(setup, tiny_base_model):
    team, alice, version = setup
    from_yaml = recipes.training_recipe_task_create(user=alice, config=LLAMA_FACTORY, team=team, name="lf")
    direct = training_task_create(user=alice, team=team, name="ours", base_model=tiny_base_model,
                                  train_version=version, params=OURS)
    same_task(from_yaml, direct)
    assert from_yaml.resolved_params["lora_r"] == 4 and from_yaml.resolved_params["learning_rate"] == 1e-4


@pytest.mark.django_db
def test_val_size_cuts_a_validation_split_with_the_recipes_seed(setup, tiny_base_model):
    team, alice, version = setup
    text = "model_name_or_path: tiny-llama\ndataset: faq\nval_size: 0.25\nseed: 5\n"
    task = recipes.training_recipe_task_create(user=alice, config=text, team=team)
    assert task.train_version.parent_id == version.pk and task.train_version.split_role == "train"
    assert task.validation_version.split_role == "validation" and task.validation_version.row_count == 4
    again = recipes.training_recipe_task_create(user=alice, config=text, team=team)
    assert (again.train_version_id, again.validation_version_id) == (task.train_version_id,
                                                                     task.validation_version_id)


@pytest.mark.django_db
def test_a_value_the_service_refuses_is_reported_at_its_recipe_line(setup):
    team, alice, _version = setup
    with pytest.raises(ApplicationError) as err:
        recipes.training_recipe_task_create(user=alice, config="model_name_or_path: tiny-llama\ndataset: nope\n",
                                            team=team)
    assert err.value.param == "dataset" and err.value.message.startswith("line 2: dataset:")


@pytest.mark.django_db
def test_explicit_arguments_override_the_recipe(setup):
    team, alice, _version = setup
    task = recipes.training_recipe_task_create(user=alice, config=LLAMA_FACTORY, team=team, name="over",
                                               params={"lora_r": 2})
    assert task.params["lora_r"] == 2 and task.params["lora_alpha"] == 8 and task.name == "over"


@pytest.mark.django_db
@pytest.mark.parametrize("params", [
    None,  # every value "auto"
    OURS,
    {"learning_rate_multiplier": 2.0, "max_steps": 3, "quantization": "none", "packing": True, "loss_on": "all"},
])
def test_export_then_import_reproduces_the_parameters_exactly(setup, tiny_base_model, make_version, params):
    team, alice, version = setup
    validation = make_version(team, name="faq-val")
    task = training_task_create(user=alice, team=team, name="orig", base_model=tiny_base_model, train_version=version,
                                validation_version=validation, params=params, priority=3)
    text = recipes.training_recipe_export(user=alice, task=task)
    body = yaml.safe_load(text)
    assert "auto" not in body.values() and body["train_version"] == f"alpha/{version.ref}"
    again = recipes.training_recipe_task_create(user=alice, config=text, team=team)
    assert again.name == "orig-2" and again.priority == 3
    assert (again.base_model_id, again.train_version_id, again.validation_version_id) == (
        task.base_model_id, task.train_version_id, task.validation_version_id)
    assert recipes.training_recipe_params(again) == recipes.training_recipe_params(task)
    assert again.seed == task.seed and again.total_steps == task.total_steps
    # What the run uses: every resolved value, the multiplier folded into the learning rate.
    drop = {"auto", "learning_rate_multiplier"}
    assert {k: v for k, v in again.resolved_params.items() if k not in drop} == \
        {k: v for k, v in task.resolved_params.items() if k not in drop}
    # Exporting the re-imported task gives the same recipe (but for its name and the header).
    assert yaml.safe_load(recipes.training_recipe_export(user=alice, task=again)) == {**body, "name": "orig-2"}


# ------------------------------------------------------------------------------------------------ the doors

@pytest.mark.django_db
def test_api_takes_a_recipe_in_config_and_exports_one(setup, token_for, bearer):
    team, alice, _version = setup
    c = bearer(token_for(alice, team))
    r = c.post("/api/training/tasks", {"config": LLAMA_FACTORY, "name": "api-lf"}, content_type="application/json")
    assert r.status_code == 201, r.json()
    assert r.json()["params"] == OURS
    exported = c.get(f"/api/training/tasks/{r.json()['id']}/recipe")
    assert exported.status_code == 200 and exported["Content-Type"] == "application/yaml"
    assert yaml.safe_load(exported.content)["lora_r"] == 4
    bad = c.post("/api/training/tasks", {"config": "lora_rank: 8\nwhatever: 1\n"}, content_type="application/json")
    assert bad.status_code == 400 and bad.json()["param"] == "whatever" and "line 2" in bad.json()["detail"]
    missing = c.post("/api/training/tasks", {"train_version": "faq"}, content_type="application/json")
    assert missing.status_code == 400 and missing.json()["param"] == "base_model"


@pytest.mark.django_db
def test_start_training_reads_a_recipe_file(setup, tmp_path):
    from django.core.management import call_command

    team, alice, _version = setup
    path = tmp_path / "recipe.yaml"
    path.write_text(LLAMA_FACTORY)
    call_command("start_training", "--team", "alpha", "--config", str(path), "--name", "cli-lf", "--user", "alice")
    assert TrainingTask.objects.get(name="cli-lf").params == OURS


@pytest.mark.django_db
def test_the_admin_start_form_takes_a_recipe_upload_and_the_task_page_links_its_recipe(setup, client):
    from django.core.files.uploadedfile import SimpleUploadedFile

    team, alice, _version = setup
    client.force_login(alice)
    response = client.post("/admin/training/trainingtask/start/", {
        "team": team.pk, "name": "admin-lf", "params": "{}", "priority": 0,
        "config": SimpleUploadedFile("recipe.yaml", LLAMA_FACTORY.encode(), content_type="application/yaml")},
        follow=True)
    task = TrainingTask.objects.get(name="admin-lf")
    assert task.params == OURS
    page = response.content.decode()
    link = f"/admin/training/trainingtask/{task.pk}/recipe.yaml"
    assert link in page
    assert yaml.safe_load(client.get(link).content)["name"] == "admin-lf"
