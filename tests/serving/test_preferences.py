"""Preference pairs: stored by the playground through ``preference_pair_create``, listed per team for the
preference-tuning job; both models must be the member's to chat with."""

from __future__ import annotations

import shutil

import pytest

from accounts.visibility import Principal
from core.errors import ApplicationError, NotFound
from serving import services
from training.models import Adapter

pytestmark = pytest.mark.django_db

HI = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is the warranty period?"}]


@pytest.fixture
def world(make_team, make_user, tiny_base_model, tiny_adapters, data_dir):
    alpha, beta = make_team("alpha"), make_team("beta")
    path = shutil.copytree(tiny_adapters[0], data_dir / "adapters" / "faq")
    Adapter.objects.create(name="faq", model_name="faq", team=alpha, base_model=tiny_base_model, path=str(path))
    return {"alpha": alpha, "beta": beta, "alice": make_user("alice", alpha, "member"),
            "bob": make_user("bob", beta, "member")}


def test_a_pair_stores_the_prompt_both_answers_models_who_and_when(world):
    pair = services.preference_pair_create(user=world["alice"], messages=HI, chosen_model="adapter:alpha/faq",
                                           chosen="Two years.", rejected_model="tiny-llama", rejected="Dunno.",
                                           params={"temperature": 0})
    assert (pair.team, pair.created_by, pair.prompt) == (world["alpha"], world["alice"], HI[1]["content"])
    assert pair.messages == HI and pair.created_at is not None
    assert list(services.preference_pair_list(user=world["alice"], team="alpha")) == [pair]
    assert list(services.preference_pair_list(user=world["bob"])) == []


def test_a_pair_naming_another_teams_model_is_refused(world):
    with pytest.raises(NotFound):
        services.preference_pair_create(user=Principal(user=world["bob"], team=world["beta"]), messages=HI,
                                        chosen_model="adapter:alpha/faq", chosen="a", rejected_model="tiny-llama",
                                        rejected="b")


def test_a_pair_needs_a_user_turn(world):
    with pytest.raises(ApplicationError):
        services.preference_pair_create(user=world["alice"], messages=[HI[0]], chosen_model="tiny-llama",
                                        chosen="a", rejected_model="adapter:alpha/faq", rejected="b")
