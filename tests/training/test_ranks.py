"""One task on several processes: torchrun ranks (gloo on CPU) started by the real worker, the same global batches
as one process, cancel / pause / kill -9 of one rank, and the parameters and estimates that know the world size."""

from __future__ import annotations

import os
import re
import signal

import psutil
import pytest

from jobs import services as job_services
from jobs.models import JobStatus
from jobs.models import Worker as WorkerRow
from ml.data import LengthGroupedSampler
from ml.hparams import InvalidParams, estimate_memory, resolve_params
from tests.training.conftest import wait_for
from tests.training.tiny import chat_records
from training import services
from training.devices import detect_device
from training.models import TrainingTask

# fp32 whatever the CPU: the curves of 1 and 2 processes are compared to float tolerance (bf16 rounds the two
# batch splits differently)
LONG = {"n_epochs": 1, "max_steps": 4000, "batch_size": 1, "save_steps": 5, "lora_r": 2, "num_processes": 2,
        "bf16": False}
# Long enough that the pause lands mid-run: a tiny model's steps take milliseconds, and the task's step reaches
# the database at most once a second.
PAUSED_RUN_STEPS = 300
TINY_CONFIG = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
               "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 400, "tie_word_embeddings": True}


# ------------------------------------------------------------------------------------------------ data order

def _rank_batches(lengths, per_rank: int, ranks: int, rank: int, *, grouped: bool) -> list[list[int]]:
    """The batches accelerate (the installed version) gives ``rank`` from the recipe's sampler."""
    import torch
    from accelerate.data_loader import prepare_data_loader

    sampler = LengthGroupedSampler(lengths, per_rank * ranks, seed=7, grouped=grouped, ranks=ranks)
    loader = torch.utils.data.DataLoader(list(range(len(lengths) + 1)), batch_size=per_rank, sampler=sampler,
                                         collate_fn=list)
    if ranks > 1:
        loader = prepare_data_loader(loader, num_processes=ranks, process_index=rank, put_on_device=False)
    return list(loader)


@pytest.mark.parametrize("grouped", [True, False])
def test_two_ranks_train_the_global_batches_of_one_process(grouped):
    lengths = [5 + (i * 7) % 23 for i in range(15)]  # 15: the last global batch of 4 is short
    one = _rank_batches(lengths, 4, 1, 0, grouped=grouped)
    ranks = [_rank_batches(lengths, 2, 2, r, grouped=grouped) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == len(one) == 4
    pad = len(lengths)
    for step, batch in enumerate(one):
        together = ranks[0][step] + ranks[1][step]
        assert [i for i in together if i != pad] == batch  # the same examples, in the same order
    # the short last batch is filled with the no-target filler, not with repeated examples
    assert sorted(i for b in ranks[0] + ranks[1] for i in b if i != pad) == list(range(15))


# ------------------------------------------------------------------------------------------------ parameters

def test_auto_processes_are_every_gpu_and_the_global_batch_counts_them():
    cpu = resolve_params({"num_processes": "auto"}, n_examples=1000, device="cpu")
    assert cpu.num_processes == 1 and "CPU" in cpu.auto["num_processes"]
    gpus = resolve_params({"num_processes": "auto"}, n_examples=1000, n_tokens_mean=100, device="cuda",
                          gpu_memory_gb=80, gpu_count=4)
    one = resolve_params({}, n_examples=1000, n_tokens_mean=100, device="cuda", gpu_memory_gb=80)
    assert gpus.num_processes == 4
    # the same effective batch, shared by the ranks: fewer optimizer-step examples per rank, the same schedule
    assert gpus.effective_batch_size == gpus.batch_size * 4 * gpus.gradient_accumulation_steps
    assert gpus.effective_batch_size == one.effective_batch_size
    assert gpus.steps_per_epoch == one.steps_per_epoch
    two = resolve_params({"num_processes": 2, "batch_size": 2, "gradient_accumulation_steps": 3}, n_examples=120)
    assert two.effective_batch_size == 12 and two.steps_per_epoch == 10


@pytest.mark.parametrize(("params", "method", "field", "words"), [
    ({"num_processes": 2, "strategy": "fsdp"}, "sft", "strategy", "needs CUDA GPUs"),
    ({"strategy": "fsdp"}, "sft", "strategy", "num_processes to 2 or more"),
    ({"num_processes": 2}, "dpo", "num_processes", "one process"),
    ({"num_processes": 0}, "sft", "num_processes", "greater than or equal to 1"),
])
def test_process_parameters_that_cannot_run_are_refused_by_name(params, method, field, words):
    with pytest.raises(InvalidParams) as err:
        resolve_params(params, n_examples=10, device="cpu", method=method)
    assert err.value.field == field and words in err.value.message


def test_the_memory_estimate_knows_the_world_size():
    one = estimate_memory(config=TINY_CONFIG, quantization="none", batch_size=2, max_seq_length=128, device="cpu")
    two = estimate_memory(config=TINY_CONFIG, quantization="none", batch_size=2, max_seq_length=128, device="cpu",
                          num_processes=2)
    assert two.total_bytes == 2 * two.per_process_bytes == 2 * one.per_process_bytes  # ranks share the host
    big = {**TINY_CONFIG, "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32}
    ddp = estimate_memory(config=big, quantization="none", batch_size=1, max_seq_length=512, device="cuda",
                          num_processes=4)
    fsdp = estimate_memory(config=big, quantization="none", batch_size=1, max_seq_length=512, device="cuda",
                           num_processes=4, strategy="fsdp")
    assert ddp.total_bytes == ddp.per_process_bytes  # one GPU per rank
    assert fsdp.parts["weights"] < ddp.parts["weights"] / 3
    assert "per GPU" in fsdp.refusal(1)


@pytest.mark.django_db
def test_a_cuda_task_on_several_processes_requires_a_gpu_for_each(make_team, make_user, tiny_base_model,
                                                                   make_version, settings):
    team = make_team("alpha")
    alice = make_user("alice", team, "admin")
    settings.TRAINING_DEVICE = "cuda"
    settings.TRAINING_MEMORY_LIMIT_BYTES = 16 * 1024**3
    detect_device.cache_clear()
    try:
        task = services.training_task_create(user=alice, name="four", base_model=tiny_base_model,
                                             train_version=make_version(team), params={"num_processes": 4})
    finally:
        detect_device.cache_clear()
    assert task.requirements == {"device": "cuda", "gpus": 4}
    assert task.resolved_params["num_processes"] == 4
    eight = WorkerRow(name="w", host="h", device="cuda", gpus=[{"index": i, "memory_bytes": 80} for i in range(8)])
    auto = TrainingTask(params={"num_processes": "auto"}, method="sft")
    assert services.training_task_processes(task, eight) == 4
    assert services.training_task_processes(auto, eight) == 8
    assert services.training_task_processes(auto, WorkerRow(name="c", host="h", device="cpu")) == 1


# ------------------------------------------------------------------------------------------------ the worker

@pytest.fixture
def team_user(make_team, make_user):
    team = make_team("alpha")
    return team, make_user("alice", team, "admin")


def status_of(task) -> str:
    return TrainingTask.objects.values_list("status", flat=True).get(pk=task.pk)


def ranks_of(task) -> dict[int, psutil.Process]:
    """The task's rank processes (torchrun's children), by rank."""
    def found():
        pid = TrainingTask.objects.values_list("child_pid", flat=True).get(pk=task.pk)
        if not pid:
            return None
        try:
            children = psutil.Process(pid).children()
            ranks = {int(p.environ().get("RANK", -1)): p for p in children}
        except psutil.Error:
            return None
        return ranks if set(ranks) == {0, 1} else None

    return wait_for(found, timeout=120, message="the two ranks")


def gone(processes) -> bool:
    for p in processes:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                return False
        except psutil.NoSuchProcess:
            continue
    return True


@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
def test_two_processes_train_the_loss_curve_and_adapter_of_one_through_the_worker(team_user, tiny_base_model,
                                                                                  make_version, worker):
    from jobs.runtime import run_foreground
    from tests.reliability.helpers import adapter_format

    team, alice = team_user
    version = make_version(team, chat_records(15))  # 15 examples: the last global batch of 4 is short
    same = {"n_epochs": 2, "lora_r": 2, "learning_rate": 1e-3, "gradient_accumulation_steps": 1, "bf16": False}
    two = services.training_task_create(user=alice, name="two", base_model=tiny_base_model, train_version=version,
                                        params={**same, "batch_size": 2, "num_processes": 2})
    worker.start()
    wait_for(lambda: status_of(two) in {"succeeded", "failed"}, timeout=240, message="the two-process task")
    two.refresh_from_db()
    assert two.status == JobStatus.SUCCEEDED, (two.error_message, worker.log())
    assert two.resolved_params["num_processes"] == 2 and two.resolved_params["strategy"] == "ddp"
    assert "x 2 processes (ddp over gloo)" in two.device
    assert two.events.filter(message__startswith="Training on 2 processes (ddp over gloo): cpu, cpu").exists()
    worker.kill()

    one = services.training_task_create(user=alice, name="one", base_model=tiny_base_model, train_version=version,
                                        params={**same, "batch_size": 4})
    assert run_foreground(one) == JobStatus.SUCCEEDED

    def curve(task):
        return {d["step"]: d["train_loss"] for d in task.events.filter(type="metrics").values_list("data", flat=True)
                if "train_loss" in d}

    assert len(curve(one)) == 8 and curve(one).keys() == curve(two).keys()
    for step, loss in curve(one).items():
        assert abs(curve(two)[step] - loss) < 1e-4, (step, loss, curve(two)[step])
    assert two.trained_tokens == one.trained_tokens  # the filler of the short last batch counts no token
    assert adapter_format(two.adapters.get().path) == adapter_format(one.adapters.get().path)


@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
def test_cancel_stops_both_ranks(team_user, tiny_base_model, make_version, worker):
    team, alice = team_user
    task = services.training_task_create(user=alice, name="to-cancel", base_model=tiny_base_model,
                                         train_version=make_version(team), params=LONG)
    worker.start()
    ranks = ranks_of(task)
    wait_for(lambda: TrainingTask.objects.get(pk=task.pk).step >= 3, timeout=240, message="training to start")
    job_services.job_cancel(user=alice, job=task)
    wait_for(lambda: status_of(task) == "cancelled", timeout=30, message="cancel")
    wait_for(lambda: gone(ranks.values()), timeout=15, message="both ranks to stop")
    task.refresh_from_db()
    assert task.step < 4000 and not task.adapters.exists()


@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
def test_pause_stops_both_ranks_at_one_checkpoint_and_resume_continues(team_user, tiny_base_model, make_version,
                                                                       worker):
    team, alice = team_user
    task = services.training_task_create(user=alice, name="pause-me", base_model=tiny_base_model,
                                         train_version=make_version(team),
                                         params={**LONG, "max_steps": PAUSED_RUN_STEPS})
    worker.start()
    ranks = ranks_of(task)
    wait_for(lambda: TrainingTask.objects.get(pk=task.pk).step >= 5, timeout=240, message="a few steps")
    job_services.job_pause(user=alice, job=TrainingTask.objects.get(pk=task.pk))
    wait_for(lambda: status_of(task) == "paused", timeout=60, message="pause")
    wait_for(lambda: gone(ranks.values()), timeout=15, message="both ranks to stop")
    task.refresh_from_db()
    paused_step = task.step
    assert task.resume_from.endswith(f"step-{paused_step}")
    job_services.job_resume(user=alice, job=task)
    wait_for(lambda: status_of(task) in {"succeeded", "failed"}, timeout=240, message="resumed run to finish")
    task.refresh_from_db()
    assert task.status == JobStatus.SUCCEEDED, task.error_message
    assert task.step == PAUSED_RUN_STEPS and task.attempts == 2
    steps = [d["step"] for d in task.events.filter(type="metrics").values_list("data", flat=True)]
    assert min(s for s in steps if s > paused_step) == paused_step + 1
    assert steps == sorted(steps) and len(steps) == len(set(steps))


@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
def test_kill_9_of_one_rank_stops_the_group_and_recovers_from_the_checkpoint(team_user, tiny_base_model,
                                                                             make_version, worker):
    team, alice = team_user
    task = services.training_task_create(user=alice, name="crashy", base_model=tiny_base_model,
                                         train_version=make_version(team), params={**LONG, "max_steps": 15})
    worker.start()
    ranks = ranks_of(task)
    wait_for(lambda: TrainingTask.objects.get(pk=task.pk).checkpoints.filter(step__gte=5).exists(), timeout=240,
             message="a checkpoint")
    os.kill(ranks[1].pid, signal.SIGKILL)
    wait_for(lambda: gone(ranks.values()), timeout=30, message="the group to stop")
    wait_for(lambda: status_of(task) in {"succeeded", "failed"}, timeout=240, message="recovery and finish")
    task.refresh_from_db()
    assert task.status == JobStatus.SUCCEEDED, (task.error_message, worker.log())
    assert task.recoveries == 1 and task.attempts == 2 and task.adapters.count() == 1
    recovery = task.events.get(message__startswith="Recovering")
    assert "from checkpoint step-" in recovery.message
    # torchrun names the first rank it saw end: the killed one, or rank 0 aborting on its lost peer
    assert re.search(r"rank [01] of 2 was killed by signal (9|6)", recovery.message), recovery.message
