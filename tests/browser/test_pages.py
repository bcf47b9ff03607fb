"""The console's pages for people, in a real browser (headless Chromium) against a live server: the start form's
live plan (what auto picks for the chosen data, the memory estimate, the first example with its trained tokens), a
task page's header above the fold at 1400×900 with only the actions valid in its state, and the classifier and
evaluation pages opening with their results. Rows with metrics stand in for real runs: nothing trains here."""

from __future__ import annotations

import pytest

from tests.training.tiny import chat_records

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

VIEWPORT_HEIGHT = 900


@pytest.fixture
def alpha(make_team, make_user):
    team = make_team("alpha")
    return team, make_user("alice", team, "member")


def _auto(page, name: str) -> str:
    return page.inner_text(f'#param-fields tr[data-param="{name}"] .auto-value')


def _wait_for_summary(page, text: str) -> None:
    page.wait_for_function("t => document.getElementById('plan-summary').textContent.includes(t)", arg=text)


def test_the_start_form_shows_what_auto_picks_for_the_chosen_data(console, alpha, tiny_base_model, make_version):
    team, _alice = alpha
    small = make_version(team, chat_records(16), name="small")
    large = make_version(team, chat_records(600), name="large")
    c = console().login("alice")
    page = c.page
    c.goto("/admin/training/trainingtask/start/")
    assert page.is_hidden("#show-plan")  # with JavaScript the plan follows the form by itself
    page.select_option("select[name=base_model]", label="tiny-llama")
    page.select_option("select[name=train_version]", label=str(small))
    _wait_for_summary(page, "16 examples")
    small_values = {name: _auto(page, name) for name in ("n_epochs", "batch_size", "learning_rate")}
    assert "16 examples" in page.inner_text('#param-fields tr[data-param="learning_rate"] .auto-reason')
    memory = page.inner_text("#plan-memory")
    assert memory.startswith("Fits: about") and page.get_attribute("#plan-memory", "class") == "fits"
    # The first example, rendered as training renders it: the answer is marked as trained, the question is not.
    page.wait_for_selector("#plan-preview mark.trained")
    facts = chat_records(1)[0]["messages"]
    trained = " ".join(page.locator("#plan-preview mark.trained").all_inner_texts())
    assert facts[1]["content"] in trained and facts[0]["content"] not in trained
    assert facts[0]["content"] in page.inner_text("#plan-preview pre")
    c.shot("training-start-form-plan")

    page.select_option("select[name=train_version]", label=str(large))
    _wait_for_summary(page, "600 examples")
    large_values = {name: _auto(page, name) for name in small_values}
    assert all(large_values[n] != small_values[n] for n in small_values), (small_values, large_values)

    # A value typed in a field is posted as given; a raw JSON key with a field moves into it.
    page.fill("input[name=n_epochs]", "2")
    page.wait_for_function("() => document.getElementById('plan-params').textContent.includes('\"n_epochs\":2')")
    assert "given" in page.get_attribute('#param-fields tr[data-param="n_epochs"]', "class")
    assert _auto(page, "n_epochs") == large_values["n_epochs"]  # what auto would pick instead
    page.click("#raw-params summary")
    page.fill("textarea[name=params]", '{"lora_r": 4, "max_steps": 9}')
    page.locator("textarea[name=params]").blur()
    page.wait_for_function("() => document.getElementById('plan-params').textContent.includes('\"lora_r\":4')")
    assert page.input_value("input[name=lora_r]") == "4"
    assert page.input_value("textarea[name=params]") == '{"max_steps":9}'
    _wait_for_summary(page, "9 steps ·")
    # A bad value is named on its field, before anything is queued.
    page.fill("input[name=lora_dropout]", "2")
    page.wait_for_selector('#param-fields tr[data-param="lora_dropout"] .param-error:has-text("less than 1")')
    c.shot("training-start-form-error")
    c.assert_clean()


def _task_with_a_run(team, alice, tiny_base_model, version, *, name: str, status: str):
    from jobs import runtime
    from training import services
    from training.models import TrainingTask

    task = services.training_task_create(user=alice, name=name, base_model=tiny_base_model, train_version=version,
                                         params={"n_epochs": 2})
    for step in range(1, 11):
        runtime.add_event(task, f"Step {step}/20: training loss={3 - step * 0.2:.4f}", type="metrics",
                          data={"step": step, "total_steps": 20, "train_loss": 3 - step * 0.2,
                                "learning_rate": 1e-3 * step / 10})
    TrainingTask.objects.filter(pk=task.pk).update(status=status, step=10, total_steps=20, eta_seconds=42,
                                                   tokens_per_second=1234.0,
                                                   metrics={"train_loss": 1.0, "valid_loss": 1.2})
    return task


def _visible_controls(page) -> set[str]:
    return {b.get_attribute("id").removeprefix("btn-") for b in page.locator("#live-progress button[data-statuses]").all()
            if b.is_visible()}


def test_a_task_page_opens_with_progress_and_chart_and_only_the_valid_actions(console, alpha, tiny_base_model,
                                                                               make_version):
    team, alice = alpha
    version = make_version(team)
    running = _task_with_a_run(team, alice, tiny_base_model, version, name="running", status="running")
    done = _task_with_a_run(team, alice, tiny_base_model, version, name="done", status="succeeded")
    c = console().login("alice")
    page = c.page

    c.goto(f"/admin/training/trainingtask/{running.pk}/change/")
    page.wait_for_function("() => document.getElementById('lp-chart').naturalWidth > 0")
    page.wait_for_function("() => document.getElementById('lp-label').textContent.includes('50%')")
    for selector in ("#lp-status", "#lp-bar", "#lp-eta", "#lp-headline", "#lp-chart", "#btn-cancel"):
        box = page.locator(selector).bounding_box()
        assert box is not None and box["y"] + box["height"] <= VIEWPORT_HEIGHT, (selector, box)
    assert page.inner_text("#lp-eta").startswith("ETA")
    assert "Training loss" in page.inner_text("#lp-headline")
    assert _visible_controls(page) == {"cancel", "pause", "clone"}
    # then the parameters with their reasons, the data and model, the checkpoints; the run's details collapsed
    order = [page.locator(s).first.bounding_box()["y"] for s in
             ("#lp-chart", "table.job-params", ".field-train_version", ".field-checkpoint_table", "#job-events")]
    assert order == sorted(order), order
    assert page.locator("details:has(> summary:has-text('Run details'))").get_attribute("open") is None
    assert page.locator("#lp-latest").get_attribute("open") is None
    assert "tensorboard --logdir" in page.inner_text("#task-tracking")
    c.shot("training-task-running")

    c.goto(f"/admin/training/trainingtask/{done.pk}/change/")
    page.wait_for_function("() => document.getElementById('lp-status').textContent === 'succeeded'")
    assert _visible_controls(page) == {"clone"}  # no Cancel, Pause or Resume on a finished task
    box = page.locator("#lp-chart").bounding_box()
    assert box["y"] + box["height"] <= VIEWPORT_HEIGHT, box
    page.click("#lp-latest summary")
    page.wait_for_selector("#lp-events li")
    with page.expect_navigation():
        page.click("#all-events")
    assert "page 1 of 1" in page.inner_text("#content")
    c.goto(f"/admin/training/trainingtask/{done.pk}/change/")
    c.shot("training-task-succeeded-page")
    c.assert_clean()


def test_a_classifier_page_opens_with_its_confusion_matrix_and_scores(console, alpha, make_version):
    from catalog.models import BaseModel
    from classifier.models import ClassifierTask

    team, alice = alpha
    encoder = BaseModel.objects.create(name="tiny-bert", kind=BaseModel.Kind.ENCODER, path="/nowhere",
                                       architecture="BertModel")
    rows = [{"text": f"question {i}", "label": "data" if i % 2 else "chat"} for i in range(20)]
    version = make_version(team, rows, name="questions", fmt="classification")
    report = {"labels": ["chat", "data"], "confusion_matrix": [[3, 1], [0, 4]], "accuracy": 0.875, "macro_f1": 0.873,
              "best_epoch": 4, "auto": {"n_epochs": "6 epochs of 3 steps: about 250 optimizer steps"},
              "per_class": {"chat": {"precision": 1.0, "recall": 0.75, "f1": 0.857, "support": 4},
                            "data": {"precision": 0.8, "recall": 1.0, "f1": 0.889, "support": 4}}}
    task = ClassifierTask.objects.create(name="intent", team=team, created_by=alice, base_model=encoder,
                                         train_version=version, status="succeeded", step=30, total_steps=30,
                                         report=report, metrics={"accuracy": 0.875, "macro_f1": 0.873},
                                         params={"lora_r": 8}, resolved_params={"lora_r": 8, "n_epochs": 6},
                                         label_map={"0": "chat", "1": "data"})
    c = console().login("alice")
    page = c.page
    c.goto(f"/admin/classifier/classifiertask/{task.pk}/change/")
    page.wait_for_function("() => document.getElementById('lp-confusion').naturalWidth > 0")
    headline = page.inner_text("#lp-headline")
    assert "Macro-F1" in headline and "0.873" in headline and "Accuracy" in headline
    order = [page.locator(s).first.bounding_box()["y"] for s in
             ("#lp-confusion", "table.per-class", "table.job-params", ".field-train_version")]
    assert order == sorted(order), order
    matrix = page.locator("#lp-confusion").bounding_box()
    assert matrix["y"] + matrix["height"] <= VIEWPORT_HEIGHT, matrix
    assert "about 250 optimizer steps" in page.inner_text("table.job-params")
    assert _visible_controls(page) == set()  # succeeded, and the classifier kind has no clone
    c.shot("classifier-task")
    c.assert_clean()


def test_an_evaluation_page_opens_with_its_results(console, alpha, tiny_base_model, make_version):
    from evaluation.models import EvaluationRun, EvaluationSample
    from training.models import Adapter

    team, alice = alpha
    adapter = Adapter.objects.create(name="faq-bot", team=team, base_model=tiny_base_model, path="/nowhere")
    run = EvaluationRun.objects.create(
        name="faq-bot-eval", team=team, created_by=alice, adapter=adapter, dataset_version=make_version(team),
        metric_names=["perplexity", "overlap", "preference"], status="succeeded", step=10, total_steps=10,
        generation={"max_new_tokens": 64, "temperature": 0.0},
        results={"perplexity": {"base": 9.5, "adapter": 3.25, "tokens": 120, "baseline": "base"},
                 "overlap": {"base": {"exact_match": 0.0, "char_f1": 0.31, "rouge_l": 0.22},
                             "adapter": {"exact_match": 0.5, "char_f1": 0.81, "rouge_l": 0.77}},
                 "word_frequencies": [{"word": "warranty", "reference": 0.2, "base": 0.05, "adapter": 0.15}],
                 "preference": {"reward_accuracy": 0.75, "reward_margin": 0.42, "pairs": 8}})
    EvaluationSample.objects.create(run=run, index=0, prompt="How long is the warranty?", reference="Two years.",
                                    base_answer="I do not know.", adapter_answer="Two years.")
    c = console().login("alice")
    page = c.page
    c.goto(f"/admin/evaluation/evaluationrun/{run.pk}/change/")
    results = page.locator("#evaluation-results")
    assert "9.5" in page.inner_text("#ppl") and "3.25" in page.inner_text("#ppl")
    assert "0.75" in results.inner_text() and "reward_accuracy" in results.inner_text()  # a table, not JSON
    assert results.bounding_box()["y"] < VIEWPORT_HEIGHT
    order = [page.locator(s).first.bounding_box()["y"] for s in
             ("#evaluation-results", "#word-frequencies", "#evaluation-samples", ".field-dataset_version")]
    assert order == sorted(order), order
    identifiers = page.locator("details:has(> summary:has-text('Identifiers and times'))")
    assert identifiers.get_attribute("open") is None
    assert not page.locator(".field-results_raw").is_visible()  # the raw results: collapsed at the bottom
    c.shot("evaluation-run")
    c.assert_clean()
