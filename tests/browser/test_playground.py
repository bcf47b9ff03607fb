"""The chat playground in a real browser: two models answer one conversation side by side, streamed from the model
server through the console, and "this one is better" stores a preference pair."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from serving.models import PreferencePair
from tests.serving.conftest import model_server  # noqa: F401 - the real model server process
from tests.training.lifecycle_helpers import save_tiny_adapter
from training.models import Adapter

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


@pytest.fixture
def worker_env(worker_env, model_server):  # noqa: F811 - the live server sends its chats to the model server
    return {**worker_env, "SERVING_URL": model_server.url}


def test_the_playground_streams_two_models_side_by_side_and_stores_the_better_one(console, make_team, make_user,
                                                                                  tiny_base_model, tiny_model_dir,
                                                                                  data_dir):
    alpha = make_team("alpha")
    make_user("alice", alpha, "member")
    folder = save_tiny_adapter(tiny_model_dir, data_dir / "adapters" / "faq", seed=3)
    Adapter.objects.create(name="faq", model_name="faq", team=alpha, base_model=tiny_base_model, path=str(folder))

    c = console().login("alice")
    page = c.page
    c.goto("/admin/serving/preferencepair/playground/")
    options = page.locator("#pg-model-0 option").all_inner_texts()
    assert "tiny-llama" in options and "adapter:alpha/faq" in options
    page.select_option("#pg-model-0", "tiny-llama")
    page.select_option("#pg-model-1", "adapter:alpha/faq")
    page.select_option("#pg-model-2", "")
    page.fill("#pg-system", "You answer questions about our shop.")
    page.fill("#pg-turns .pg-content", "What is the warranty period?")
    page.fill("#pg-max-tokens", "24")
    page.click("#pg-send")
    for i in (0, 1):  # a locator wait: the page's CSP forbids the eval of wait_for_function
        expect(page.locator(f"#pg-status-{i}")).to_contain_text("tokens", timeout=60_000)
    assert "24 tokens" in page.inner_text("#pg-status-0") and "24 tokens" in page.inner_text("#pg-status-1")
    base_answer, adapter_answer = page.inner_text("#pg-answer-0"), page.inner_text("#pg-answer-1")
    assert base_answer and adapter_answer and base_answer != adapter_answer
    assert page.locator(".pg-column[data-index='2']").is_hidden()
    c.shot("playground")

    page.click("#pg-better-1")
    expect(page.locator("#pg-saved")).to_contain_text("Saved")
    assert "adapter:alpha/faq > tiny-llama" in page.inner_text("#pg-saved")
    pair = PreferencePair.objects.get()
    assert (pair.team, pair.created_by.username) == (alpha, "alice")
    assert (pair.chosen_model, pair.rejected_model) == ("adapter:alpha/faq", "tiny-llama")
    assert pair.chosen.strip() == adapter_answer.strip() and pair.rejected.strip() == base_answer.strip()
    assert pair.messages[0] == {"role": "system", "content": "You answer questions about our shop."}
    assert pair.params["max_tokens"] == 24
    # both answers ran into max_tokens: stored as cut off, so the pair is left out of a preference set
    assert (pair.chosen_finish_reason, pair.rejected_finish_reason, pair.tie) == ("length", "length", False)

    # the same conversation again, judged a tie
    page.click("#pg-send")
    expect(page.locator("#pg-tie")).to_be_enabled(timeout=60_000)
    page.click("#pg-tie")
    expect(page.locator("#pg-saved")).to_contain_text("tiny-llama = adapter:alpha/faq")
    tie = PreferencePair.objects.get(tie=True)
    assert (tie.chosen_model, tie.rejected_model) == ("tiny-llama", "adapter:alpha/faq")
    c.assert_clean()
