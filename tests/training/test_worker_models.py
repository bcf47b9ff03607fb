"""Architectures through the real worker: a tiny Gemma 2 (soft-capped attention, which loads eager) trains to an
adapter, and a model type transformers cannot build as a causal LM ends as ``unsupported_model`` with the reason,
not as ``model_missing``."""

from __future__ import annotations

import json

import pytest

from jobs.models import JobStatus
from tests.training.conftest import wait_for
from tests.training.test_arch_matrix import build_config
from tests.training.tiny import build_tokenizer
from training import services
from training.models import TrainingTask

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def base_model_row(folder, name: str):
    from catalog.model_scan import inspect_hf_dir
    from catalog.models import BaseModel

    info = inspect_hf_dir(folder)
    return BaseModel.objects.create(name=name, kind=info.kind, path=str(folder), architecture=info.architecture,
                                    parameter_count=info.parameter_count, size_bytes=info.size_bytes,
                                    tokenizer_present=True, has_chat_template=info.has_chat_template,
                                    config=info.config)


def test_the_worker_trains_gemma2_and_fails_an_unknown_architecture_as_unsupported(make_team, make_user,
                                                                                   make_version, worker, tmp_path):
    from transformers import AutoModelForCausalLM

    team = make_team("alpha")
    alice = make_user("alice", team, "admin")
    tokenizer = build_tokenizer()

    gemma_dir = tmp_path / "tiny-gemma2"
    AutoModelForCausalLM.from_config(build_config("gemma2", tokenizer), attn_implementation="eager") \
        .save_pretrained(gemma_dir)
    tokenizer.save_pretrained(gemma_dir)
    # The files are all there (config, tokenizer), but no transformers class builds this model type.
    odd_dir = tmp_path / "made-up"
    tokenizer.save_pretrained(odd_dir)
    (odd_dir / "config.json").write_text(json.dumps({
        "model_type": "made_up_transformer", "architectures": ["MadeUpForCausalLM"], "hidden_size": 64,
        "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": len(tokenizer)}), encoding="utf-8")
    gemma, odd = base_model_row(gemma_dir, "tiny-gemma2"), base_model_row(odd_dir, "made-up")
    assert gemma.kind == odd.kind == "causal-lm"

    version = make_version(team)
    params = {"n_epochs": 1, "max_steps": 3, "batch_size": 4, "lora_r": 4}
    trained = services.training_task_create(user=alice, name="gemma2", base_model=gemma, train_version=version,
                                            params=params, priority=1)
    refused = services.training_task_create(user=alice, name="made-up", base_model=odd, train_version=version,
                                            params=params)
    worker.start()
    done = {JobStatus.SUCCEEDED, JobStatus.FAILED}
    wait_for(lambda: set(TrainingTask.objects.values_list("status", flat=True)) <= done, timeout=300,
             message="both tasks to finish")

    trained.refresh_from_db()
    assert trained.status == JobStatus.SUCCEEDED, (trained.error_code, trained.error_message, worker.log()[-3000:])
    assert trained.step == 3 and trained.adapters.count() == 1
    assert trained.events.filter(message__contains="soft-capped").exists()  # the attention path says why
    refused.refresh_from_db()
    assert refused.status == JobStatus.FAILED and refused.error_code == "unsupported_model", refused.error_message
    assert "made_up_transformer" in refused.error_message and not refused.adapters.exists()
