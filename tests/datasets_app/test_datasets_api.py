"""The /api/ dataset endpoints, through the real URL map and bearer tokens."""

from __future__ import annotations

import json

import pytest
from dataset_helpers import chat_file, chat_record, jsonl
from django.core.files.uploadedfile import SimpleUploadedFile


def post_file(client, content: bytes, *, name: str = "faq", filename: str = "data.jsonl", **fields):
    data = {"file": SimpleUploadedFile(filename, content, content_type="application/octet-stream"), "name": name,
            **fields}
    return client.post("/api/datasets", data=data)


@pytest.fixture
def alice(api_client, data_dir):
    return api_client("alice", "alpha")


def test_upload_returns_201_with_the_version(alice):
    response = post_file(alice, chat_file(), description="FAQ")
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["status"] == "ready" and body["ref"] == "faq@1" and body["row_count"] == 12
    assert body["team"] == "alpha" and body["format"] == "openai" and body["errors"] == []
    assert len(body["sha256"]) == 64 and body["deduplicated"] is False


def test_identical_upload_returns_200_with_the_existing_version(alice):
    first = post_file(alice, chat_file()).json()
    again = post_file(alice, chat_file())
    assert again.status_code == 200 and again.json()["id"] == first["id"] and again.json()["deduplicated"]


def test_failed_upload_is_422_with_the_failed_version_and_its_report(alice):
    content = chat_file(3) + b'{"messages": [{"role": "user"}]}\n' + chat_file(8, start=3)
    response = post_file(alice, content)
    assert response.status_code == 422
    body = response.json()
    assert body["status"] == "failed" and body["error_count"] == 2
    assert [(e["line"], e["code"]) for e in body["errors"]] == [(4, "message_missing_key"),
                                                                 (4, "example_missing_assistant_message")]
    report = alice.get(f"/api/dataset-versions/{body['id']}/report").json()
    assert report["status"] == "failed" and report["counts"]["message_missing_key"] == 1
    download = alice.get(f"/api/dataset-versions/{body['id']}/report?download=true")
    assert download["Content-Disposition"].startswith("attachment")
    assert json.loads(download.content)["error_count"] == 2
    assert alice.get(f"/api/dataset-versions/{body['id']}/download").status_code == 409


def test_parameter_errors(alice, settings):
    response = post_file(alice, chat_file(), format="yaml")
    assert response.status_code == 400 and response.json()["code"] == "unknown_format"
    settings.MAX_UPLOAD_BYTES = 2000
    response = post_file(alice, chat_file(50))
    assert response.status_code == 413 and response.json()["code"] == "file_too_large"
    response = post_file(alice, chat_file(), team="beta")
    assert response.status_code == 404


def test_viewer_cannot_upload(api_client, data_dir):
    client = api_client("vera", "alpha")
    assert post_file(client, chat_file()).status_code == 403


def test_list_detail_and_versions(alice):
    post_file(alice, chat_file())
    post_file(alice, chat_file(13))
    post_file(alice, jsonl([{"text": f"t{i}", "label": "x" if i % 2 else "y"} for i in range(12)]), name="cls")
    listing = alice.get("/api/datasets").json()
    assert listing["count"] == 2
    assert {d["name"]: d["version_count"] for d in listing["items"]} == {"faq": 2, "cls": 1}
    assert [d["name"] for d in alice.get("/api/datasets?format=classification").json()["items"]] == ["cls"]
    assert alice.get("/api/datasets?team=alpha&limit=1").json()["count"] == 2
    faq = next(d for d in listing["items"] if d["name"] == "faq")
    detail = alice.get(f"/api/datasets/{faq['id']}").json()
    assert [v["number"] for v in detail["versions"]] == [2, 1] and detail["stats"]["rows"] == 13
    assert alice.get("/api/datasets/faq").json()["id"] == faq["id"]
    versions = alice.get(f"/api/datasets/{faq['id']}/versions").json()
    assert versions["count"] == 2
    assert alice.get("/api/dataset-versions/faq@1").json()["row_count"] == 12


def test_other_teams_datasets_are_invisible(api_client, data_dir):
    alice = api_client("alice", "alpha")
    version = post_file(alice, chat_file()).json()
    bob = api_client("bob", "beta")
    assert bob.get("/api/datasets").json()["count"] == 0
    for url in (f"/api/datasets/{version['dataset_id']}", f"/api/dataset-versions/{version['id']}",
                f"/api/dataset-versions/{version['id']}/report", f"/api/dataset-versions/{version['id']}/stats",
                f"/api/dataset-versions/{version['id']}/download", "/api/dataset-versions/faq@1",
                f"/api/dataset-versions/{version['id']}/histogram.png"):
        assert bob.get(url).status_code == 404, url
    assert bob.delete(f"/api/dataset-versions/{version['id']}").status_code == 404
    assert bob.post(f"/api/dataset-versions/{version['id']}/split", data={"val_ratio": 0.5},
                    content_type="application/json").status_code == 404


def test_unauthenticated_requests_are_refused(client, data_dir, db):
    assert client.get("/api/datasets").status_code == 401


def test_download_is_the_normalised_file(alice):
    version = post_file(alice, json.dumps([{"instruction": f"q{i}", "output": "a"} for i in range(10)]).encode(),
                        filename="a.json").json()
    response = alice.get(f"/api/dataset-versions/{version['id']}/download")
    assert response.status_code == 200
    lines = b"".join(response.streaming_content).decode().splitlines()
    assert json.loads(lines[0]) == {"messages": [{"role": "user", "content": "q0"},
                                                 {"role": "assistant", "content": "a"}]}


def test_stats_histogram_and_preview(alice, tiny_base_model):
    version = post_file(alice, chat_file()).json()
    stats = alice.get(f"/api/dataset-versions/{version['id']}/stats").json()
    assert stats["stats"]["rows"] == 12 and stats["base_model"] is None
    stats = alice.get(f"/api/dataset-versions/{version['id']}/stats?base_model=tiny-chat").json()
    assert stats["stats"]["tokens"]["tiny-chat"]["count"] == 12
    png = alice.get(f"/api/dataset-versions/{version['id']}/histogram.png?base_model=tiny-chat")
    assert png.status_code == 200 and png["Content-Type"] == "image/png" and png.content.startswith(b"\x89PNG")
    preview = alice.get(f"/api/dataset-versions/{version['id']}/preview?base_model=tiny-chat&n=3").json()
    assert len(preview["examples"]) == 3
    assert any(s["trained"] for s in preview["examples"][0]["segments"])
    assert alice.get(f"/api/dataset-versions/{version['id']}/preview?base_model=nope").status_code == 404


def test_split_and_delete_rules(alice):
    version = post_file(alice, chat_file(20)).json()
    response = alice.post(f"/api/dataset-versions/{version['id']}/split", data={"val_ratio": 0.25, "seed": 3},
                          content_type="application/json")
    assert response.status_code == 201
    pair = response.json()
    assert pair["train"]["row_count"] == 15 and pair["validation"]["row_count"] == 5
    assert pair["validation"]["parent_id"] == version["id"] and pair["validation"]["split_seed"] == 3
    again = alice.post(f"/api/dataset-versions/{version['id']}/split", data={"val_ratio": 0.25, "seed": 3},
                       content_type="application/json").json()
    assert again["train"]["id"] == pair["train"]["id"]
    bad = alice.post(f"/api/dataset-versions/{version['id']}/split", data={"val_ratio": 2},
                     content_type="application/json")
    assert bad.status_code == 400
    refused = alice.delete(f"/api/dataset-versions/{version['id']}")
    assert refused.status_code == 409 and refused.json()["code"] == "dataset_version_in_use"
    assert alice.delete(f"/api/dataset-versions/{pair['train']['id']}").status_code == 204
    assert alice.delete(f"/api/dataset-versions/{pair['validation']['id']}").status_code == 204
    assert alice.delete(f"/api/dataset-versions/{version['id']}").status_code == 204
    assert alice.get(f"/api/dataset-versions/{version['id']}").status_code == 404


def test_split_with_a_given_validation_version(alice):
    train = post_file(alice, chat_file(20)).json()
    val = post_file(alice, jsonl([chat_record(i, answer="Five years.") for i in range(10)]), name="faq-val").json()
    response = alice.post(f"/api/dataset-versions/{train['id']}/split", data={"validation": "faq-val@1"},
                          content_type="application/json")
    assert response.status_code == 201
    assert response.json()["validation"]["sha256"] == val["sha256"]
