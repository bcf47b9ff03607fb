"""The dataset admin: team-scoped lists, the upload form, report, stats, preview, split and delete pages."""

from __future__ import annotations

import pytest
from dataset_helpers import chat_file
from django.core.files.uploadedfile import SimpleUploadedFile

from datasets_app import services
from datasets_app.models import DatasetVersion


@pytest.fixture
def alpha_version(upload):
    return upload(chat_file(20), name="alpha-secret-faq")


def login(client, users, name):
    client.force_login(users[name])
    return client


def test_team_b_does_not_see_team_a_datasets_in_the_admin(client, users, alpha_version, upload):
    upload(chat_file(), name="beta-faq", team="beta", user=users["bob"])
    login(client, users, "bob")
    page = client.get("/admin/datasets_app/dataset/")
    assert page.status_code == 200
    assert b"beta-faq" in page.content and b"alpha-secret-faq" not in page.content
    versions = client.get("/admin/datasets_app/datasetversion/")
    assert b"beta-faq@1" in versions.content and b"alpha-secret-faq" not in versions.content
    # Django's own change page redirects to the index ("does not exist"); our pages answer 404.
    assert client.get(f"/admin/datasets_app/datasetversion/{alpha_version.pk}/change/")["Location"] == "/admin/"
    for suffix in ("report/", "stats/", "preview/", "split/", "download/", "histogram.png/"):
        assert client.get(f"/admin/datasets_app/datasetversion/{alpha_version.pk}/{suffix}").status_code == 404, suffix
    assert client.get(f"/admin/datasets_app/dataset/{alpha_version.dataset_id}/change/")["Location"] == "/admin/"


def test_upload_form_imports_and_redirects_to_the_version(client, users, data_dir):
    login(client, users, "alice")
    form = client.get("/admin/datasets_app/dataset/upload/")
    assert form.status_code == 200 and b"Upload and validate" in form.content
    response = client.post("/admin/datasets_app/dataset/upload/", {
        "team": users["alice"].memberships.get().team_id, "name": "faq", "format": "", "description": "",
        "file": SimpleUploadedFile("faq.jsonl", chat_file()),
    })
    version = DatasetVersion.objects.get()
    assert response.status_code == 302 and response["Location"].endswith(f"/datasetversion/{version.pk}/change/")
    page = client.get(response["Location"])
    assert b"faq@1" in page.content and b"Preview" in page.content
    dataset_page = client.get(f"/admin/datasets_app/dataset/{version.dataset_id}/change/")
    assert dataset_page.status_code == 200 and b"Upload a new version" in dataset_page.content
    assert client.get("/admin/datasets_app/dataset/add/")["Location"].endswith("/dataset/upload/")


def test_failed_upload_shows_the_report_with_line_numbers(client, users, data_dir):
    login(client, users, "alice")
    content = chat_file(4) + b'{"messages": [{"role": "robot", "content": "x"}]}\n' + chat_file(8, start=4)
    response = client.post("/admin/datasets_app/dataset/upload/", {
        "team": users["alice"].memberships.get().team_id, "name": "faq", "format": "",
        "file": SimpleUploadedFile("bad.jsonl", content)}, follow=True)
    assert response.redirect_chain[-1][0].endswith("/report/")
    html = response.content.decode()
    assert "unrecognized_role" in html and "<td>5</td>" in html and "failed validation" in html
    version = DatasetVersion.objects.get()
    report_json = client.get(f"/admin/datasets_app/datasetversion/{version.pk}/report/?format=json")
    assert report_json["Content-Disposition"].startswith("attachment")


def test_viewer_cannot_open_the_upload_form(client, users, data_dir):
    login(client, users, "vera")
    assert client.get("/admin/datasets_app/dataset/upload/").status_code == 403


def test_stats_histogram_and_preview_pages(client, users, alpha_version, tiny_base_model):
    login(client, users, "alice")
    base = f"/admin/datasets_app/datasetversion/{alpha_version.pk}"
    stats = client.get(f"{base}/stats/?base_model={tiny_base_model.pk}")
    assert stats.status_code == 200 and b"tokens (tiny-chat)" in stats.content and b'id="histogram"' in stats.content
    png = client.get(f"{base}/histogram.png/?base_model={tiny_base_model.pk}")
    assert png.status_code == 200 and png.content.startswith(b"\x89PNG")
    preview = client.get(f"{base}/preview/?base_model={tiny_base_model.pk}&n=2")
    assert preview.status_code == 200 and b'<mark class="trained">' in preview.content
    download = client.get(f"{base}/download/")
    assert download.status_code == 200 and b"".join(download.streaming_content).count(b"\n") == 20


def test_split_page_and_action(client, users, alpha_version):
    login(client, users, "alice")
    url = f"/admin/datasets_app/datasetversion/{alpha_version.pk}/split/"
    assert client.get(url).status_code == 200
    response = client.post(url, {"val_ratio": 0.25, "seed": 1})
    assert response.status_code == 302
    children = alpha_version.splits.order_by("number")
    assert [(c.split_role, c.row_count) for c in children] == [("train", 15), ("validation", 5)]
    action = client.post("/admin/datasets_app/datasetversion/", {"action": "split_action",
                                                                 "_selected_action": [alpha_version.pk]})
    assert action.status_code == 302 and action["Location"].endswith(f"/{alpha_version.pk}/split/")


def test_viewer_cannot_split(client, users, alpha_version):
    login(client, users, "vera")
    url = f"/admin/datasets_app/datasetversion/{alpha_version.pk}/split/"
    assert client.get(url).status_code == 403


def test_admin_refuses_to_delete_a_version_with_splits(client, users, alpha_version):
    services.dataset_version_split(user=users["alice"], version=alpha_version, val_ratio=0.5, seed=1)
    login(client, users, "alice")
    page = client.post(f"/admin/datasets_app/datasetversion/{alpha_version.pk}/delete/", {"post": "yes"})
    assert page.status_code == 200 and b"protected" in page.content.lower()
    assert DatasetVersion.objects.filter(pk=alpha_version.pk).exists()


def test_admin_deletes_a_dataset_with_its_splits(client, users, alpha_version, django_capture_on_commit_callbacks):
    services.dataset_version_split(user=users["alice"], version=alpha_version, val_ratio=0.5, seed=1)
    login(client, users, "alice")
    url = f"/admin/datasets_app/dataset/{alpha_version.dataset_id}/delete/"
    assert client.get(url).status_code == 200
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(url, {"post": "yes"})
    assert response.status_code == 302
    assert not DatasetVersion.objects.exists()
