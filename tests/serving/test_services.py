"""serving.services: the model-name grammar (base names, ``ft:`` ids, checkpoints, production aliases) with team
visibility, the model list, and the bounds and per-team rate limits of a chat completion, through the service
(no HTTP: every door gets the same answers)."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
from django.core.cache import cache
from django.utils import timezone

from accounts.visibility import Principal
from core.errors import ApplicationError, NotFound, RateLimited
from jobs.models import JobStatus
from serving import services
from serving.inference import GenerationResult
from tests.training.lifecycle_helpers import save_tiny_adapter
from training.models import Adapter, Checkpoint, TrainingTask

pytestmark = pytest.mark.django_db

HI = [{"role": "user", "content": "What is the warranty period?"}]
NOW = 60 * 1_000_000 + 20.0  # 20 s into a rate window, frozen: no test runs across a window's end


def used(key: str) -> int:
    """What the limiter counted for ``key`` in the current (frozen) window."""
    return int(cache.get(f"rl:{key}:{int(NOW // 60)}", 0))


@pytest.fixture(scope="session")
def tiny_adapter_dir(tiny_model_dir, tmp_path_factory) -> Path:
    return save_tiny_adapter(tiny_model_dir, tmp_path_factory.mktemp("lora") / "tiny-lora")


@pytest.fixture(autouse=True)
def _frozen_rate_window(monkeypatch):
    monkeypatch.setattr("core.ratelimit.time", SimpleNamespace(time=lambda: NOW))
    cache.clear()
    yield
    cache.clear()


@pytest.fixture
def served(make_team, make_user, tiny_base_model, make_version, tiny_adapter_dir, data_dir):
    """Team alpha with a succeeded fine-tuning job (adapter + checkpoint at step 2) and an adapter in production;
    alice (member of alpha, through an alpha token) and bob (team beta)."""
    alpha, beta = make_team("alpha"), make_team("beta")
    alice, bob = make_user("alice", alpha, "member"), make_user("bob", beta, "member")
    task = TrainingTask.objects.create(name="faq", team=alpha, base_model=tiny_base_model, suffix="faq",
                                       train_version=make_version(alpha), status=JobStatus.SUCCEEDED,
                                       finished_at=timezone.now())
    adapter_path = shutil.copytree(tiny_adapter_dir, data_dir / "adapters" / "faq")
    ckpt_path = shutil.copytree(tiny_adapter_dir, data_dir / "checkpoints" / "faq" / "checkpoint-2")
    adapter = Adapter.objects.create(name="faq", model_name="faq-bot", team=alpha, base_model=tiny_base_model,
                                     task=task, path=str(adapter_path), stage=Adapter.Stage.PRODUCTION,
                                     production_slot=True, stage_changed_at=timezone.now())
    ckpt = Checkpoint.objects.create(task=task, step=2, path=str(ckpt_path))
    return {"alpha": alpha, "beta": beta, "alice": Principal(user=alice, team=alpha),
            "bob": Principal(user=bob, team=beta), "task": task, "adapter": adapter, "ckpt": ckpt}


def _missing(excinfo) -> None:
    assert excinfo.value.code == "model_not_found" and excinfo.value.param == "model"


# ---------------------------------------------------------------------------------------------- names

def test_names_of_a_fine_tuning_job(served):
    task = served["task"]
    assert services.fine_tuned_model_name(task) == f"ft:tiny-llama:alpha:faq:{task.pk}"
    assert services.checkpoint_model_name(task, 2) == f"ft:tiny-llama:alpha:faq:{task.pk}:ckpt-step-2"


def test_base_model_name_resolves_to_the_base_alone(served, tiny_base_model):
    resolved = services.chat_model_resolve(user=served["alice"], name="tiny-llama")
    assert resolved.base == tiny_base_model and resolved.adapter_path is None and resolved.key is None
    assert resolved.owner == "system" and resolved.created == tiny_base_model.created_at


def test_ft_id_resolves_to_the_jobs_adapter(served):
    task, adapter = served["task"], served["adapter"]
    resolved = services.chat_model_resolve(user=served["alice"], name=services.fine_tuned_model_name(task))
    assert (resolved.adapter_path, resolved.key, resolved.owner) == (adapter.path, f"adapter-{adapter.pk}", "alpha")


def test_checkpoint_id_resolves_to_the_checkpoint(served):
    task, ckpt = served["task"], served["ckpt"]
    resolved = services.chat_model_resolve(user=served["alice"], name=services.checkpoint_model_name(task, 2))
    assert (resolved.adapter_path, resolved.key) == (ckpt.path, f"ckpt-{ckpt.pk}")
    with pytest.raises(NotFound) as excinfo:
        services.chat_model_resolve(user=served["alice"], name=services.checkpoint_model_name(task, 3))
    _missing(excinfo)


def test_production_alias_resolves_to_the_adapter_in_production(served):
    adapter = served["adapter"]
    resolved = services.chat_model_resolve(user=served["alice"], name="alpha/faq-bot:production")
    assert resolved.adapter_path == adapter.path and resolved.key == f"adapter-{adapter.pk}"
    Adapter.objects.filter(pk=adapter.pk).update(stage=Adapter.Stage.CANDIDATE, production_slot=None)
    with pytest.raises(NotFound) as excinfo:
        services.chat_model_resolve(user=served["alice"], name="alpha/faq-bot:production")
    _missing(excinfo)


@pytest.mark.parametrize("name", [
    "nope", "", "ft:x", "ft:x:y:z:1", "ft:tiny-llama:alpha:faq:abc", "ft:tiny-llama:alpha:faq:{pk}:ckpt-step-x",
    "ft:tiny-llama:alpha:other-suffix:{pk}", "ft:tiny-llama:beta:faq:{pk}", "ft:tiny-llama:alpha:faq:{pk}:extra",
    "alpha/nope:production", "alpha/faq-bot:staging", "../../etc/passwd",
])
def test_names_that_mean_nothing_are_model_not_found(served, name):
    with pytest.raises(NotFound) as excinfo:
        services.chat_model_resolve(user=served["alice"], name=name.format(pk=served["task"].pk))
    _missing(excinfo)


def test_a_job_that_has_not_succeeded_names_no_model(served):
    task = served["task"]
    TrainingTask.objects.filter(pk=task.pk).update(status=JobStatus.RUNNING)
    with pytest.raises(NotFound):
        services.chat_model_resolve(user=served["alice"], name=services.fine_tuned_model_name(task))


def test_another_teams_models_read_as_missing(served):
    task = served["task"]
    for name in (services.fine_tuned_model_name(task), services.checkpoint_model_name(task, 2),
                 "alpha/faq-bot:production"):
        with pytest.raises(NotFound) as excinfo:
            services.chat_model_resolve(user=served["bob"], name=name)
        _missing(excinfo)
    assert services.chat_model_resolve(user=served["bob"], name="tiny-llama").base.name == "tiny-llama"


def test_model_list_has_every_name_the_caller_can_chat_with(served):
    task = served["task"]
    ids = [m.id for m in services.chat_model_list(user=served["alice"])]
    assert ids == ["tiny-llama", services.fine_tuned_model_name(task), services.checkpoint_model_name(task, 2),
                   "alpha/faq-bot:production", "adapter:alpha/faq"]
    for name in ids:  # whatever is listed resolves
        services.chat_model_resolve(user=served["alice"], name=name)
    assert [m.id for m in services.chat_model_list(user=served["bob"])] == ["tiny-llama"]


# ---------------------------------------------------------------------------------------------- completions

def test_completion_of_a_base_model_and_of_an_adapter(served, settings):
    settings.INFERENCE_MAX_NEW_TOKENS = 4
    base = services.chat_completion_create(user=served["alice"], model="tiny-llama", messages=HI, max_tokens=3)
    assert isinstance(base, GenerationResult) and base.prompt_tokens > 0 and 0 < base.completion_tokens <= 3
    tuned = services.chat_completion_create(user=served["alice"], model="alpha/faq-bot:production", messages=HI)
    assert tuned.completion_tokens <= 4  # the default max_tokens is bounded by the server's limit
    pieces = list(services.chat_completion_stream(user=served["alice"], model="tiny-llama", messages=HI,
                                                  max_tokens=3))
    assert isinstance(pieces[-1], GenerationResult) and all(isinstance(p, str) for p in pieces[:-1])
    assert pieces[-1].completion_tokens <= 3


@pytest.mark.parametrize(("options", "code", "param"), [
    ({"max_tokens": 65}, "max_tokens_too_large", "max_tokens"),
    ({"max_tokens": 0}, "invalid_parameter", "max_tokens"),
    ({"temperature": 2.5}, "invalid_parameter", "temperature"),
    ({"top_p": 0}, "invalid_parameter", "top_p"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "invalid_stop", "stop"),
    ({"messages": []}, "invalid_messages", "messages"),
    ({"messages": [{"role": "hacker", "content": "hi"}]}, "invalid_messages", "messages"),
    ({"messages": [{"role": "user", "content": ["parts"]}]}, "invalid_messages", "messages"),
    ({"messages": [{"role": "user", "content": "word " * 200}]}, "context_length_exceeded", "messages"),
])
def test_bounds_of_one_request_are_400_and_never_counted(served, settings, options, code, param):
    settings.INFERENCE_MAX_NEW_TOKENS = 64
    settings.INFERENCE_MAX_PROMPT_TOKENS = 32
    arguments = {"model": "tiny-llama", "messages": HI, **options}
    for call in (services.chat_completion_create, services.chat_completion_stream):
        with pytest.raises(ApplicationError) as excinfo:
            call(user=served["alice"], **arguments)
        assert (excinfo.value.status, excinfo.value.code, excinfo.value.param) == (400, code, param)
    team = served["alpha"].pk
    assert used(f"chat-requests:{team}") == 0 and used(f"chat-tokens:{team}") == 0


def test_a_model_whose_files_vanished_is_a_clear_404(served):
    shutil.rmtree(served["adapter"].path)
    with pytest.raises(NotFound) as excinfo:
        services.chat_completion_create(user=served["alice"], model="alpha/faq-bot:production", messages=HI)
    assert excinfo.value.code == "model_files_missing" and excinfo.value.param == "model"


def test_requests_per_team_and_minute(served, settings):
    settings.INFERENCE_TEAM_REQUESTS_PER_MINUTE = 2
    for _ in range(2):
        services.chat_completion_create(user=served["alice"], model="tiny-llama", messages=HI, max_tokens=1)
    with pytest.raises(RateLimited) as excinfo:
        services.chat_completion_stream(user=served["alice"], model="tiny-llama", messages=HI, max_tokens=1)
    assert excinfo.value.status == 429 and excinfo.value.code == "rate_limit_exceeded"
    assert excinfo.value.retry_after == 41 and "limit 2" in excinfo.value.message
    # Another team has its own budget.
    services.chat_completion_create(user=served["bob"], model="tiny-llama", messages=HI, max_tokens=1)


def test_tokens_per_team_and_minute_count_prompt_and_max_tokens(served, settings):
    settings.INFERENCE_MAX_NEW_TOKENS = 50
    first = services.chat_completion_create(user=served["alice"], model="tiny-llama", messages=HI, max_tokens=50)
    charged = first.prompt_tokens + 50
    assert used(f"chat-tokens:{served['alpha'].pk}") == charged
    settings.INFERENCE_TEAM_TOKENS_PER_MINUTE = charged + first.prompt_tokens + 1  # room for max_tokens=1
    with pytest.raises(RateLimited) as excinfo:
        services.chat_completion_create(user=served["alice"], model="tiny-llama", messages=HI, max_tokens=50)
    assert excinfo.value.code == "tokens_rate_limit_exceeded" and excinfo.value.retry_after == 41
    # A refused request is not counted: a smaller one still fits.
    assert used(f"chat-tokens:{served['alpha'].pk}") == charged
    services.chat_completion_create(user=served["alice"], model="tiny-llama", messages=HI, max_tokens=1)


def test_a_session_user_is_charged_to_the_models_team(served):
    """Without a token's team (the admin), a team model's requests count against its team."""
    services.chat_completion_create(user=served["alice"].user, model="alpha/faq-bot:production", messages=HI,
                                    max_tokens=1)
    assert used(f"chat-requests:{served['alpha'].pk}") == 1
