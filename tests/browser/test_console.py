"""The admin console in a real browser (headless Chromium) against a live server and a real queue worker.

What a person does: upload a dataset and read its validation report, start a training task from the form and
watch it on its page and on the dashboard, cancel a task, download the adapter's export, vote in a blind A/B
review; and what a member of another team does not see.
"""

from __future__ import annotations

import io
import re
import time
import zipfile

import pytest

from tests.datasets_app.dataset_helpers import chat_file

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

# A tiny Llama, enough steps to watch the bar move (each step takes some tens of milliseconds on a CPU).
TRAIN_PARAMS = '{"n_epochs": 1, "max_steps": 250, "batch_size": 1, "lora_r": 2, "save_steps": 1000}'


@pytest.fixture
def people(make_team, make_user):
    alpha, beta = make_team("alpha"), make_team("beta")
    return {"alpha": alpha, "beta": beta, "alice": make_user("alice", alpha, "member"),
            "bob": make_user("bob", beta, "member")}


def _task(name: str):
    from training.models import TrainingTask

    return TrainingTask.objects.get(name=name)


def test_upload_shows_the_validation_report_good_and_bad(console, people):
    c = console().login("alice")
    page = c.page
    c.goto("/admin/datasets_app/dataset/upload/")
    page.fill("input[name=name]", "faq")
    page.set_input_files("input[name=file]", files=[{"name": "faq.jsonl", "mimeType": "application/jsonl",
                                                      "buffer": chat_file(12)}])
    page.click("input[name=_upload]")
    page.wait_for_url(re.compile(r"/datasetversion/\d+/change/$"))
    assert "Imported 12 examples as faq@1" in page.inner_text(".messagelist")
    assert "alpha" in page.inner_text(".breadcrumbs")  # from the object to its team
    c.shot("dataset-version")
    page.click(".object-tools >> text=Report")
    assert "12 of 12 examples valid" in page.inner_text("#content-main")
    assert "No problems found." in page.inner_text("#content-main")

    bad = chat_file(4) + b'{"messages": [{"role": "robot", "content": "x"}]}\n' + chat_file(3, start=4) + b"{oops\n"
    c.goto("/admin/datasets_app/dataset/upload/")
    page.fill("input[name=name]", "faq")
    page.set_input_files("input[name=file]", files=[{"name": "bad.jsonl", "mimeType": "application/jsonl",
                                                      "buffer": bad}])
    page.click("input[name=_upload]")
    page.wait_for_url(re.compile(r"/datasetversion/\d+/report/$"))
    assert "failed validation" in page.inner_text(".messagelist")
    rows = page.locator("#issues tbody tr.error")
    lines = {rows.nth(i).locator("td").first.inner_text() for i in range(rows.count())}
    assert {"5", "9"} <= lines, lines  # the bad role on line 5, the broken JSON on line 9
    assert "unrecognized_role" in page.inner_text("#issues")
    c.shot("dataset-report-errors")
    c.goto("/admin/datasets_app/datasetversion/")
    assert page.locator(".job-status[data-status=ready]").count() == 1
    assert page.locator(".job-status[data-status=failed]").count() == 1
    c.shot("dataset-versions")
    c.assert_clean()


def test_train_from_the_form_watch_progress_cancel_and_download_the_adapter(console, people, tiny_base_model,
                                                                             make_version, worker):
    from training import services

    version = make_version(people["alpha"])
    worker.start()
    c = console().login("alice")
    page = c.page

    c.goto("/admin/training/trainingtask/")
    page.click("#start-training")
    page.select_option("select[name=team]", label="alpha")
    page.select_option("select[name=base_model]", label="tiny-llama")
    page.select_option("select[name=train_version]", label=str(version))
    page.fill("input[name=name]", "tiny-from-form")
    page.click("#raw-params summary")
    page.fill("textarea[name=params]", TRAIN_PARAMS)
    c.shot("training-start-form")
    page.click("input[name=_start]")
    page.wait_for_url(re.compile(r"/trainingtask/\d+/change/$"))
    assert "Queued task tiny-from-form" in page.inner_text(".messagelist")
    task = _task("tiny-from-form")
    empty_chart = page.request.get(c.url(f"/admin/training/trainingtask/{task.pk}/chart.png")).body()

    # Another task waits behind it (one running job per team); it is cancelled from its page while queued.
    other = services.training_task_create(user=people["alice"], name="to-cancel", base_model=tiny_base_model,
                                          train_version=version, params={"n_epochs": 1, "max_steps": 2000})

    def bar_width() -> float:
        style = page.get_attribute("#lp-bar", "style") or ""
        match = re.search(r"width:\s*([\d.]+)%", style)
        return float(match.group(1)) if match else 0.0

    # The bar on the task page moves without a reload.
    widths: list[float] = []
    seen_mid_run = False
    deadline = time.monotonic() + 150
    while time.monotonic() < deadline:
        status = page.inner_text("#lp-status")  # before the bar: the page updates both at once
        widths.append(bar_width())
        if status in {"succeeded", "failed", "cancelled"}:
            break
        if 0 < widths[-1] < 100 and not seen_mid_run:
            seen_mid_run = True
            # Mid-run: the dashboard shows it running with its bar and ETA, and the other task queued.
            dash = console().login("alice")
            assert dash.page.locator(f"#dash-running tr[data-id='{task.pk}'] .job-progress").count() == 1
            assert dash.page.locator(f"#dash-queued tr[data-id='{other.pk}']").count() == 1
            dash.shot("dashboard-running")
            stamp = dash.page.get_attribute("#studio-dashboard", "data-refreshed")
            dash.page.wait_for_function(  # refreshed in place, without a reload
                "s => document.getElementById('studio-dashboard').dataset.refreshed !== s", arg=stamp,
                timeout=15_000)
            dash.goto(f"/admin/training/trainingtask/{other.pk}/change/")
            with dash.page.expect_navigation():
                dash.page.click("#btn-cancel")
            assert "Cancel: done for to-cancel" in dash.page.inner_text(".messagelist")
            assert _task("to-cancel").status == "cancelled"
            dash.assert_clean()
            dash.page.context.close()
        time.sleep(0.3)
    assert page.inner_text("#lp-status") == "succeeded", (widths, worker.log()[-3000:])
    assert seen_mid_run and widths[-1] == 100.0, widths
    assert widths == sorted(widths), widths
    page.wait_for_function("() => document.getElementById('lp-chart').naturalWidth > 0")
    full_chart = page.request.get(c.url(f"/admin/training/trainingtask/{task.pk}/chart.png")).body()
    assert full_chart[:4] == b"\x89PNG" and full_chart != empty_chart  # the loss curve appeared
    c.shot("training-task-succeeded")
    c.goto("/admin/training/trainingtask/")
    assert page.locator(".job-status[data-status=cancelled]").count() == 1
    assert page.locator(".job-status[data-status=succeeded]").count() == 1
    c.shot("training-task-list")

    # The adapter page, reached from the task, and its export.
    c.goto(f"/admin/training/trainingtask/{task.pk}/change/")
    page.click(".field-adapter_link a")
    page.wait_for_url(re.compile(r"/adapter/\d+/change/$"))
    c.shot("adapter")
    with page.expect_download() as info:
        page.locator("#btn-export, a[href$='/download/']").first.click()
    download = info.value
    assert download.suggested_filename.endswith(".zip")
    with zipfile.ZipFile(io.BytesIO(open(download.path(), "rb").read())) as zf:
        names = zf.namelist()
        card = next((zf.read(n).decode() for n in names if n.endswith("README.md")), "")
    assert any(n.endswith("adapter_config.json") for n in names), names
    assert any(n.endswith("adapter_model.safetensors") for n in names), names
    assert "tiny-llama" in card and version.sha256 in card  # the model card: base model and data hash
    # Lifecycle buttons post their own forms (not the admin's change form): promote with a note for the trail.
    page.fill("#lifecycle-note", "looks good on the FAQ")
    page.click("#btn-candidate")
    page.wait_for_load_state()
    assert page.locator("#adapter-stage").inner_text() == "candidate"
    assert "looks good on the FAQ" in page.locator("#audit-trail").inner_text()
    c.assert_clean()


def test_vote_in_a_blind_review(console, people, tiny_base_model, make_version):
    from evaluation import services as evaluation
    from evaluation.models import EvaluationRun, EvaluationSample, Vote
    from jobs.models import JobStatus
    from training.models import Adapter

    alpha, alice = people["alpha"], people["alice"]
    adapter = Adapter.objects.create(name="tiny-faq", team=alpha, base_model=tiny_base_model, path="/nowhere")
    run = EvaluationRun.objects.create(name="tiny-faq-eval", team=alpha, created_by=alice, adapter=adapter,
                                       dataset_version=make_version(alpha), metric_names=["samples"],
                                       status=JobStatus.SUCCEEDED)
    EvaluationSample.objects.bulk_create([
        EvaluationSample(run=run, index=i, prompt=f"How long is the warranty of model {i}?", reference="Two years.",
                         base_answer=f"I do not know ({i}).", adapter_answer="Two years.") for i in range(3)])
    review = evaluation.review_create(user=alice, run=run, seed=11)

    c = console().login("alice")
    page = c.page
    c.goto("/admin/evaluation/review/")
    assert page.locator(".job-status[data-status=open]").count() == 1
    page.click("a[href$='/vote/']")
    page.wait_for_url(re.compile(rf"/review/{review.pk}/vote/$"))
    assert "alpha" in page.inner_text(".breadcrumbs")
    c.shot("review-vote")
    for expected_done in (1, 2, 3):
        page.fill("textarea[name=comment]", f"pair {expected_done}")
        page.click("button[value=a]" if expected_done != 2 else "button[value=tie]")
        page.wait_for_selector(f"text={expected_done} of 3 pairs judged")
    assert "You have judged every pair" in page.inner_text("#done")
    assert Vote.objects.filter(reviewer=alice, pair__review=review).count() == 3
    assert set(Vote.objects.values_list("choice", flat=True)) == {"a", "tie"}
    c.assert_clean()


def test_a_member_of_another_team_sees_none_of_it(console, people, tiny_base_model, make_version):
    from datasets_app.models import DatasetVersion
    from evaluation import services as evaluation
    from evaluation.models import EvaluationRun, EvaluationSample
    from jobs.models import JobStatus
    from training.models import Adapter, TrainingTask

    alpha, alice = people["alpha"], people["alice"]
    version = make_version(alpha, name="secret-faq")
    task = TrainingTask.objects.create(name="secret-task", team=alpha, base_model=tiny_base_model,
                                       train_version=version, status=JobStatus.RUNNING, step=3, total_steps=10)
    failed = TrainingTask.objects.create(name="secret-failure", team=alpha, base_model=tiny_base_model,
                                         train_version=version, status=JobStatus.FAILED,
                                         error_message="secret reason")
    adapter = Adapter.objects.create(name="secret-adapter", team=alpha, base_model=tiny_base_model, task=task,
                                     path="/nowhere")
    run = EvaluationRun.objects.create(name="secret-eval", team=alpha, adapter=adapter, dataset_version=version,
                                       status=JobStatus.SUCCEEDED)
    EvaluationSample.objects.create(run=run, index=0, prompt="q", base_answer="b", adapter_answer="a")
    review = evaluation.review_create(user=alice, run=run, seed=1)

    # Alice sees her team's work on the dashboard ...
    mine = console().login("alice")
    assert "secret-task" in mine.page.inner_text("#dash-running")
    assert "secret reason" in mine.page.inner_text("#dash-failed")
    mine.shot("dashboard")

    # ... Bob, of another team, sees none of it: not on the dashboard, not in the lists, not by URL.
    c = console().login("bob")
    page = c.page
    dashboard = page.inner_text("#studio-dashboard")
    assert "secret" not in dashboard and "alpha" not in dashboard
    assert "beta" in page.inner_text("#dash-teams")
    c.shot("dashboard-other-team")
    lists = ["/admin/datasets_app/dataset/", "/admin/datasets_app/datasetversion/", "/admin/training/trainingtask/",
             "/admin/training/adapter/", "/admin/training/mergejob/", "/admin/evaluation/evaluationrun/",
             "/admin/evaluation/review/"]
    for path in lists:
        response = c.goto(path)
        assert response.status == 200, path
        text = page.inner_text("#content")
        assert "secret" not in text and "alpha" not in text, path
    direct = [f"/admin/datasets_app/dataset/{version.dataset_id}/change/",
              f"/admin/datasets_app/datasetversion/{version.pk}/change/",
              f"/admin/datasets_app/datasetversion/{version.pk}/report/",
              f"/admin/datasets_app/datasetversion/{version.pk}/download/",
              f"/admin/training/trainingtask/{task.pk}/change/",
              f"/admin/training/trainingtask/{task.pk}/progress.json",
              f"/admin/training/trainingtask/{failed.pk}/chart.png",
              f"/admin/training/adapter/{adapter.pk}/change/",
              f"/admin/training/adapter/{adapter.pk}/download/",
              f"/admin/evaluation/evaluationrun/{run.pk}/change/",
              f"/admin/evaluation/review/{review.pk}/vote/",
              f"/admin/evaluation/review/{review.pk}/results/",
              f"/admin/accounts/team/{alpha.pk}/change/"]
    for path in direct:
        response = page.request.get(c.url(path), max_redirects=0)
        # 404 (or the admin's "doesn't exist" redirect to the index, or a 403): never the object.
        assert response.status in (302, 403, 404), (path, response.status)
        if response.status == 302:
            assert response.headers["location"] in ("/admin/", c.url("/admin/")), (path, response.headers)
        assert b"secret" not in response.body(), path
    c.goto(f"/admin/training/trainingtask/{task.pk}/change/")
    assert "secret" not in page.inner_text("#content")
    c.shot("other-team-direct-url")
    assert DatasetVersion.objects.filter(dataset__team=alpha).count() == 1  # nothing was touched
    c.assert_clean()
