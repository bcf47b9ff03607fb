"""The bundled SmolLM2-135M-Instruct trained for a few steps through the real worker, with nf4 and without."""

from __future__ import annotations

import pytest

from catalog.models import BaseModel
from jobs.models import JobStatus
from tests.training.conftest import wait_for
from tests.training.tiny import chat_records
from training import services
from training.models import TrainingTask

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow, pytest.mark.heavy]


@pytest.fixture
def smollm2(smollm2_dir):
    from catalog.model_scan import inspect_hf_dir

    info = inspect_hf_dir(smollm2_dir)
    return BaseModel.objects.create(name="SmolLM2-135M-Instruct", kind=info.kind, path=str(smollm2_dir),
                                    architecture=info.architecture, parameter_count=info.parameter_count,
                                    size_bytes=info.size_bytes, tokenizer_present=True, has_chat_template=True,
                                    config=info.config)


@pytest.mark.parametrize("quantization", ["none", "nf4"])
def test_smollm2_trains_through_the_worker_and_loads_with_plain_peft(quantization, smollm2, make_team, make_user,
                                                                      make_version, worker):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    team = make_team("alpha")
    alice = make_user("alice", team, "member")
    task = services.training_task_create(
        user=alice, name=f"smol-{quantization}", base_model=smollm2, train_version=make_version(team, chat_records(8)),
        params={"quantization": quantization, "max_steps": 3, "batch_size": 2, "lora_r": 4, "save_steps": 2})
    worker.start()
    wait_for(lambda: TrainingTask.objects.get(pk=task.pk).status in {"succeeded", "failed"}, timeout=420,
             interval=1, message="SmolLM2 training")
    task.refresh_from_db()
    assert task.status == JobStatus.SUCCEEDED, (task.error_code, task.error_message, worker.log()[-3000:])
    assert task.step == 3 and task.trained_tokens > 0
    assert task.resolved_params["quantization"] == quantization
    adapter = task.adapters.get()

    tokenizer = AutoTokenizer.from_pretrained(adapter.path)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(smollm2.path), adapter.path)
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "What is the hotline number?"}],
                                        add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.inference_mode():
        out = model.generate(**ids, max_new_tokens=5, do_sample=False)
    assert out.shape[1] > ids["input_ids"].shape[1]
