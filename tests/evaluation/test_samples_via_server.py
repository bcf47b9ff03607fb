"""With ``SERVING_URL`` set, an evaluation's generation samples come from the model server (a real
``manage.py serve_models`` process), not from a second copy of the model in the job's process, and greedy answers
are exactly the ones in-process generation gives."""

from __future__ import annotations

import pytest

from evaluation import services
from evaluation.models import EvaluationSample
from jobs import runtime
from jobs.models import JobStatus
from tests.serving.conftest import model_server  # noqa: F401 - the real model server process

pytestmark = [pytest.mark.django_db, pytest.mark.slow]

GENERATION = {"n_samples": 6, "max_new_tokens": 24, "batch_size": 4}


def answers(run) -> list[tuple[str, str]]:
    return list(EvaluationSample.objects.filter(run=run).order_by("index").values_list("base_answer",
                                                                                         "adapter_answer"))


def evaluate(alice, adapter, version, **generation):
    run = services.evaluation_run_create(user=alice, adapter=adapter, dataset=version.pk, metrics=["samples"],
                                         generation={**GENERATION, **generation})
    assert runtime.run_foreground(run) == JobStatus.SUCCEEDED, list(run.events.values_list("message", flat=True))
    run.refresh_from_db()
    return run


def test_samples_through_the_model_server_equal_in_process_greedy_generation(setup, settings, model_server):  # noqa: F811
    _team, alice, version, adapter = setup
    settings.SERVING_URL = ""
    local = evaluate(alice, adapter, version)
    assert local.results["samples_generated_by"] == "in_process"

    settings.SERVING_URL = model_server.url
    before = model_server.health()
    # 8 requests in flight against the fixture's 4 decode slots + 2 queue places: the server answers some with 429,
    # and the job waits as Retry-After says instead of failing
    served = evaluate(alice, adapter, version, batch_size=8)
    after = model_server.health()
    assert served.results["samples_generated_by"] == "model_server"
    assert after["completed"] - before["completed"] == 2 * GENERATION["n_samples"]  # both sides of every prompt
    assert after["rejected"] > before["rejected"]
    assert any("through the model server" in e for e in served.events.values_list("message", flat=True))

    assert len(answers(served)) == GENERATION["n_samples"]
    assert answers(served) == answers(local)
    assert any(base != tuned for base, tuned in answers(served))  # the adapter's side really used the adapter
