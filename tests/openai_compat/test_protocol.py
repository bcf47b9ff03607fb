"""/v1/ as a translation of the protocol onto the services: the training service's rules (metadata, suffix, the
job's name, the files' visibility) and the serving service's (bounds, names) come out under the protocol's
parameter names."""

from __future__ import annotations

import pytest
from django.utils import timezone

from jobs.models import JobStatus
from openai_compat.ids import ts
from serving.services import fine_tuned_model_name
from tests.openai_compat.test_openai_errors import assert_error, upload
from tests.training.tiny import chat_records
from training.models import Adapter, TrainingTask

pytestmark = pytest.mark.django_db

HI = [{"role": "user", "content": "hi"}]


@pytest.fixture
def v1(make_team, make_user, token_for, bearer, tiny_base_model):
    team = make_team("alpha")
    c = bearer(token_for(make_user("alice", team, "member"), team))
    return c, upload(c, chat_records(12)).json()["id"]


def create(c, **body):
    return c.post("/v1/fine_tuning/jobs", {"model": "tiny-llama", **body}, content_type="application/json")


@pytest.mark.parametrize("metadata", [{f"k{i}": "v" for i in range(17)}, {"bad key": "v"}, {"k": "v" * 513}])
def test_metadata_rules_are_the_services(v1, metadata):
    c, file_id = v1
    assert_error(create(c, training_file=file_id, metadata=metadata), 400, param="metadata", code="invalid_metadata")
    assert TrainingTask.objects.count() == 0


def test_suffix_rules_are_the_services(v1):
    c, file_id = v1
    assert_error(create(c, training_file=file_id, suffix="a:b"), 400, param="suffix", code="invalid_suffix")
    assert_error(create(c, training_file=file_id, suffix="x" * 65), 400, param="suffix")


def test_a_job_is_named_by_the_service_and_its_model_by_the_grammar(v1):
    c, file_id = v1
    job = create(c, training_file=file_id, suffix="faq", metadata={"project": "p1"}).json()
    task = TrainingTask.objects.get(pk=int(job["id"].split("-")[1]))
    assert task.name.startswith("ft-faq-") and len(task.name) == len("ft-faq-") + 8
    assert task.suffix == "faq" and task.metadata == {"project": "p1"} and job["user_provided_suffix"] == "faq"
    assert create(c, training_file=file_id).json()["id"] != job["id"]  # unnamed jobs never collide
    TrainingTask.objects.filter(pk=task.pk).update(status=JobStatus.SUCCEEDED, finished_at=timezone.now())
    task.refresh_from_db()
    adapter = Adapter.objects.create(name="faq", team=task.team, base_model=task.base_model, task=task,
                                     path="/nowhere")
    done = c.get(f"/v1/fine_tuning/jobs/{job['id']}").json()
    assert done["fine_tuned_model"] == fine_tuned_model_name(task) == f"ft:tiny-llama:alpha:faq:{task.pk}"
    model = c.get(f"/v1/models/{done['fine_tuned_model']}").json()
    assert model == {"id": done["fine_tuned_model"], "object": "model", "created": ts(task.finished_at),
                     "owned_by": "alpha"}
    assert done["adapter_id"] == adapter.pk


def test_file_ids_are_translated_and_resolved_once_by_the_service(v1, make_team, make_user, token_for, bearer):
    c, file_id = v1
    assert_error(create(c, training_file="file-abc"), 404, param="training_file", code="file_not_found")
    assert_error(create(c, training_file=file_id, validation_file="nope"), 404, param="validation_file",
                 code="file_not_found")
    assert_error(create(c, training_file="file-99999"), 404, param="training_file", code="file_not_found")
    beta = make_team("beta")
    other = bearer(token_for(make_user("bob", beta, "member"), beta))
    assert_error(create(other, training_file=file_id), 404, param="training_file", code="file_not_found")
    assert_error(create(c, training_file=file_id, model="nope"), 404, param="model", code="model_not_found")


def test_chat_errors_name_the_protocols_fields(v1, settings):
    c, _file_id = v1
    settings.INFERENCE_MAX_NEW_TOKENS = 8
    assert_error(c.post("/v1/chat/completions", {"model": "tiny-llama", "messages": HI, "max_completion_tokens": 9},
                        content_type="application/json"), 400, param="max_completion_tokens",
                 code="max_tokens_too_large")
    assert_error(c.post("/v1/chat/completions", {"model": "tiny-llama", "messages": HI, "max_tokens": 9},
                        content_type="application/json"), 400, param="max_tokens", code="max_tokens_too_large")
    image = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]
    assert_error(c.post("/v1/chat/completions", {"model": "tiny-llama", "messages": image},
                        content_type="application/json"), 400, param="messages", code="unsupported_content")


def test_chat_accepts_text_parts_and_the_developer_role(v1, settings):
    c, _file_id = v1
    messages = [{"role": "developer", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "What is "}, {"type": "text", "text": "it?"}]}]
    response = c.post("/v1/chat/completions", {"model": "tiny-llama", "messages": messages, "max_tokens": 2},
                      content_type="application/json")
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["object"] == "chat.completion" and body["usage"]["completion_tokens"] <= 2
    stream = c.post("/v1/chat/completions", {"model": "tiny-llama", "messages": messages, "max_tokens": 2,
                                             "stream": True, "stream_options": {"include_usage": True}},
                    content_type="application/json")
    assert stream.status_code == 200 and stream["Content-Type"] == "text/event-stream"
    text = b"".join(stream.streaming_content).decode()
    assert text.endswith("data: [DONE]\n\n") and '"usage"' in text and "generation_failed" not in text
