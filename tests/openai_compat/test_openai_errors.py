"""/v1/ error statuses in the OpenAI error shape, and team isolation (Django test client, no server)."""

from __future__ import annotations

import io
import json

import pytest

from tests.training.tiny import chat_records
from training.models import TrainingTask

pytestmark = pytest.mark.django_db


@pytest.fixture
def v1(make_team, make_user, token_for, bearer, tiny_base_model):
    team = make_team("alpha")
    alice = make_user("alice", team, "member")
    return bearer(token_for(alice, team)), team, alice


def upload(client, records, name="train.jsonl"):
    body = "".join(json.dumps(r) + "\n" for r in records).encode()
    f = io.BytesIO(body)
    f.name = name
    return client.post("/v1/files", {"file": f, "purpose": "fine-tune"})


def assert_error(response, status: int, *, param=None, code=None):
    assert response.status_code == status, response.content
    err = response.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    if param is not None:
        assert err["param"] == param
    if code is not None:
        assert err["code"] == code
    return err


def test_no_or_bad_token_is_401(client):
    assert_error(client.get("/v1/models"), 401, code="invalid_api_key")
    assert_error(client.get("/v1/models", HTTP_AUTHORIZATION="Bearer nope"), 401)


def test_unknown_objects_are_404(v1):
    c, _team, _alice = v1
    assert_error(c.get("/v1/fine_tuning/jobs/ftjob-999"), 404, code="job_not_found")
    assert_error(c.get("/v1/files/file-999"), 404, code="file_not_found")
    assert_error(c.get("/v1/models/nope"), 404, code="model_not_found")
    assert_error(c.get("/v1/fine_tuning/jobs/not-an-id"), 404)


def test_bad_hyperparameter_is_400_naming_the_field(v1):
    c, _team, _alice = v1
    file_id = upload(c, chat_records(12)).json()["id"]
    err = assert_error(c.post("/v1/fine_tuning/jobs", {"model": "tiny-llama", "training_file": file_id,
                                                       "hyperparameters": {"n_epochs": 0}},
                              content_type="application/json"), 400)
    assert err["param"] == "hyperparameters.n_epochs"
    err = assert_error(c.post("/v1/fine_tuning/jobs", {"model": "tiny-llama", "training_file": file_id,
                                                       "hyperparameters": {"warp_speed": 9}},
                              content_type="application/json"), 400)
    assert err["param"] == "hyperparameters.warp_speed"
    assert_error(c.post("/v1/fine_tuning/jobs", {"model": "tiny-llama"}, content_type="application/json"), 400,
                 param="training_file")
    assert_error(c.post("/v1/fine_tuning/jobs", {"model": "nope", "training_file": file_id},
                        content_type="application/json"), 404, param="model")
    assert_error(c.post("/v1/files", {"purpose": "fine-tune"}), 400, param="file")


def test_bad_file_uploads_but_the_job_fails_in_validating_files(v1):
    c, _team, _alice = v1
    records = chat_records(12)
    records[2] = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant"}]}
    uploaded = upload(c, records)
    assert uploaded.status_code == 200 and uploaded.json()["status"] == "error"
    job = c.post("/v1/fine_tuning/jobs", {"model": "tiny-llama", "training_file": uploaded.json()["id"]},
                 content_type="application/json").json()
    assert job["status"] == "failed"
    assert job["error"]["param"] == "training_file" and "line 3" in job["error"]["message"]


def test_cancel_a_finished_job_is_409(v1):
    c, _team, _alice = v1
    file_id = upload(c, chat_records(12)).json()["id"]
    job = c.post("/v1/fine_tuning/jobs", {"model": "tiny-llama", "training_file": file_id},
                 content_type="application/json").json()
    assert c.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel").json()["status"] == "cancelled"
    assert_error(c.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel"), 409, code="invalid_state")


def test_viewer_token_gets_403_on_writes(v1, make_user, token_for, bearer):
    c, team, _alice = v1
    viewer = bearer(token_for(make_user("victor", team, "viewer"), team))
    file_id = upload(c, chat_records(12)).json()["id"]
    assert_error(viewer.post("/v1/fine_tuning/jobs", {"model": "tiny-llama", "training_file": file_id},
                             content_type="application/json"), 403)
    assert viewer.get(f"/v1/files/{file_id}").status_code == 200


def test_too_large_upload_is_413(v1, settings):
    c, _team, _alice = v1
    settings.MAX_UPLOAD_BYTES = 2048
    assert_error(upload(c, chat_records(200)), 413)


def test_queue_quota_is_429_with_retry_after(v1, settings):
    c, _team, _alice = v1
    settings.TEAM_MAX_ACTIVE_JOBS = 1
    file_id = upload(c, chat_records(12)).json()["id"]
    first = c.post("/v1/fine_tuning/jobs", {"model": "tiny-llama", "training_file": file_id},
                   content_type="application/json")
    assert first.status_code == 200
    second = c.post("/v1/fine_tuning/jobs", {"model": "tiny-llama", "training_file": file_id},
                    content_type="application/json")
    assert_error(second, 429, code="quota_exceeded")
    assert second["Retry-After"]
    assert TrainingTask.objects.count() == 1


def test_chat_bounds_are_400(v1, settings):
    c, _team, _alice = v1
    settings.INFERENCE_MAX_NEW_TOKENS = 64
    assert_error(c.post("/v1/chat/completions", {"model": "tiny-llama", "max_tokens": 100000,
                                                 "messages": [{"role": "user", "content": "hi"}]},
                        content_type="application/json"), 400, param="max_tokens")
    assert_error(c.post("/v1/chat/completions", {"model": "tiny-llama", "messages": []},
                        content_type="application/json"), 400, param="messages")
    assert_error(c.post("/v1/chat/completions", {"model": "tiny-llama", "max_tokens": -1,
                                                 "messages": [{"role": "user", "content": "hi"}]},
                        content_type="application/json"), 400, param="max_tokens")
    assert_error(c.post("/v1/chat/completions", {"model": "ft:x:y:z:1", "messages": [{"role": "user",
                                                                                       "content": "hi"}]},
                        content_type="application/json"), 404, param="model")


def test_other_teams_files_and_jobs_are_invisible(v1, make_team, make_user, token_for, bearer):
    c, _team, _alice = v1
    file_id = upload(c, chat_records(12)).json()["id"]
    job = c.post("/v1/fine_tuning/jobs", {"model": "tiny-llama", "training_file": file_id},
                 content_type="application/json").json()
    beta = make_team("beta")
    other = bearer(token_for(make_user("bob", beta, "member"), beta))
    assert_error(other.get(f"/v1/files/{file_id}"), 404)
    assert_error(other.get(f"/v1/files/{file_id}/content"), 404)
    assert_error(other.delete(f"/v1/files/{file_id}"), 404)
    assert_error(other.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel"), 404)
    assert_error(other.post("/v1/fine_tuning/jobs", {"model": "tiny-llama", "training_file": file_id},
                            content_type="application/json"), 404, param="training_file")
    assert other.get("/v1/fine_tuning/jobs").json()["data"] == []
    assert other.get("/v1/files").json()["data"] == []


def test_file_in_use_cannot_be_deleted(v1):
    c, _team, _alice = v1
    file_id = upload(c, chat_records(12)).json()["id"]
    c.post("/v1/fine_tuning/jobs", {"model": "tiny-llama", "training_file": file_id}, content_type="application/json")
    assert_error(c.delete(f"/v1/files/{file_id}"), 409)
    other_id = upload(c, chat_records(13), name="other.jsonl").json()["id"]
    assert c.delete(f"/v1/files/{other_id}").json() == {"object": "file", "id": other_id, "deleted": True}


def test_oversized_body_is_refused_from_its_content_length(v1, settings):
    c, _team, _alice = v1
    settings.MAX_UPLOAD_BYTES = 1024
    response = c.post("/v1/files", data=b"x" * 10, content_type="application/octet-stream",
                      CONTENT_LENGTH=str(50 * 1024 * 1024))
    assert_error(response, 413, code="file_too_large", param="file")
