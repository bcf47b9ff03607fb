"""Every door with the new formats: the service (mapping stored, skip_invalid, nothing partial), the command
(--columns, --dataset-info/--entry, --skip-invalid, folders), the API, the admin, /v1/files, and the preview
rendering of tool calls and completions exactly as training trains them."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from dataset_helpers import PAIR, chat_record, jsonl, tool_record, tool_row
from django.contrib.auth import get_user_model
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from django.core.management.base import CommandError

from core.errors import ApplicationError
from datasets_app import services
from datasets_app.models import DatasetVersion
from ml import data as ml_data
from ml.model import cached_tokenizer, load_tokenizer


def stored_files(data_dir) -> list[str]:
    root = data_dir / "datasets"
    return sorted(p.name for p in root.rglob("*") if p.is_file()) if root.exists() else []


def rows_with_two_bad() -> bytes:
    rows = [chat_record(i) for i in range(14)]
    rows[2] = {"messages": [{"role": "user", "content": "only a question"}]}
    rows[9]["images"] = ["x.png"]
    return jsonl(rows)


def command(*args) -> str:
    # Without --user a command acts as the team's admin, else the first superuser: a real user.
    get_user_model().objects.get_or_create(username="root", defaults={"is_superuser": True, "is_staff": True})
    out = io.StringIO()
    call_command(*args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


# ---------------------------------------------------------------------------------------------------------------
# Service


def test_without_skip_invalid_nothing_partial_is_stored(upload, data_dir):
    version = upload(rows_with_two_bad())
    assert version.status == "failed" and version.row_count == 0 and version.path == ""
    assert stored_files(data_dir) == []
    assert [(e["line"], e["code"]) for e in version.report["errors"]] == [
        (3, "example_missing_assistant_message"), (10, "unsupported_modality")]


def test_skip_invalid_imports_the_valid_rows_and_keeps_the_report(upload, data_dir):
    version = upload(rows_with_two_bad(), skip_invalid=True)
    assert version.status == "ready" and version.row_count == 12 and version.skipped_count == 2
    assert version.report["skip_invalid"] is True and version.error_count == 2
    records = list(services.iter_records(version))
    assert records[2] == chat_record(3) and all("images" not in json.dumps(r) for r in records)


def test_skip_invalid_still_refuses_a_file_without_enough_valid_rows(upload, data_dir):
    rows = [chat_record(i) for i in range(5)] + [{"messages": []}] * 8
    version = upload(jsonl(rows), skip_invalid=True)
    assert version.status == "failed" and "too_few_examples" in version.report["counts"]
    assert stored_files(data_dir) == []


def test_the_mapping_is_stored_on_the_version(upload):
    rows = [{"question": f"Q{i}", "answer": "A"} for i in range(12)]
    version = upload(jsonl(rows), columns="instruction=question,output=answer")
    assert version.is_ready and version.format == "alpaca"
    assert version.mapping == {"columns": {"instruction": "question", "output": "answer"}, "tags": {}}
    assert list(services.iter_records(version))[0]["messages"][0] == {"role": "user", "content": "Q0"}
    tagged = upload(jsonl([{"talk": [{"role": "user", "content": f"Q{i}"}, {"role": "assistant", "content": "A"}]}
                           for i in range(12)]), name="tagged",
                    columns='{"columns": {"conversations": "talk"}, "tags": {"role_tag": "role", "content_tag": '
                            '"content", "user_tag": "user", "assistant_tag": "assistant"}}')
    assert tagged.is_ready and tagged.format == "sharegpt" and tagged.mapping["tags"]["role_tag"] == "role"
    with pytest.raises(ApplicationError) as exc:
        upload(jsonl(rows), columns="question")
    assert exc.value.code == "invalid_mapping" and exc.value.param == "columns"


@pytest.mark.parametrize("rows, fmt", [
    ([dict(PAIR, prompt=[{"role": "user", "content": f"Warranty {i}?"}]) for i in range(12)], "preference"),
    ([{"prompt": f"Q{i}", "completion": "A", "label": i % 2 == 0} for i in range(12)], "kto"),
])
def test_preference_and_kto_rows_are_stored_as_their_own_kind_never_as_chat(upload, rows, fmt):
    version = upload(jsonl(rows))
    assert version.format == fmt and version.kind == fmt and version.dataset.kind == fmt
    assert all("messages" not in r for r in services.iter_records(version))
    chat = upload(jsonl([chat_record(i) for i in range(12)]), name="chat")
    with pytest.raises(ApplicationError) as exc:  # never mixed into a chat dataset either
        upload(jsonl(rows), name="chat")
    assert exc.value.code == "format_mismatch" and chat.is_ready


def test_a_save_to_disk_folder_uploads(upload, data_dir, users, tmp_path):
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_list([tool_row(i) for i in range(12)]).save_to_disk(str(tmp_path / "saved"))
    version = services.dataset_upload(user=users["alice"], team="alpha", name="tools", fileobj=tmp_path / "saved",
                                      filename="saved")
    assert version.is_ready, version.report["errors"]
    assert list(services.iter_records(version))[0] == tool_record(0)


# ---------------------------------------------------------------------------------------------------------------
# Command


def test_command_columns_and_skip_invalid(teams, data_dir, tmp_path):
    path = tmp_path / "qa.jsonl"
    rows = [{"question": f"Q{i}", "answer": "A"} for i in range(12)] + [{"question": "no answer"}]
    path.write_bytes(jsonl(rows))
    with pytest.raises(CommandError, match="--skip-invalid imports the valid rows"):
        command("import_dataset", str(path), "--name", "qa", "--team", "alpha", "--columns",
                "instruction=question,output=answer")
    out = command("import_dataset", str(path), "--name", "qa", "--team", "alpha", "--columns",
                  "instruction=question,output=answer", "--skip-invalid")
    assert 'Format: alpaca (detected from line 1: it has "instruction/output"; jsonl)' in out
    assert "Mapping: instruction=question, output=answer" in out
    assert "Rows imported: 12 as qa@2" in out and "1 invalid row(s) skipped" in out
    assert "line 13: missing_field" in out


def test_command_reads_a_llama_factory_dataset_info_entry(teams, data_dir, tmp_path):
    (tmp_path / "support.json").write_text(json.dumps(
        [{"q": f"Q{i}", "ctx": "", "a": "A", "sys": "Be brief."} for i in range(12)]))
    (tmp_path / "dataset_info.json").write_text(json.dumps({
        "support": {"file_name": "support.json", "columns": {"prompt": "q", "query": "ctx", "response": "a",
                                                             "system": "sys"}},
        "remote": {"hf_hub_url": "someone/data"}}))
    out = command("import_dataset", "--dataset-info", str(tmp_path / "dataset_info.json"), "--entry", "support",
                  "--name", "support", "--team", "alpha")
    assert "Format: alpaca (given by dataset_info.json entry 'support'; json_array)" in out
    assert "Mapping: instruction=q, input=ctx, output=a, system=sys (from dataset_info.json:support)" in out
    version = DatasetVersion.objects.get(dataset__name="support")
    assert version.mapping["source"] == "dataset_info.json:support"
    assert list(services.iter_records(version))[0] == {"messages": [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Q0"},
        {"role": "assistant", "content": "A"}]}
    with pytest.raises(CommandError, match="hf_hub_url"):
        command("import_dataset", "--dataset-info", str(tmp_path / "dataset_info.json"), "--entry", "remote",
                "--name", "r", "--team", "alpha")


def test_command_imports_a_text_corpus_and_parquet(teams, data_dir, tmp_path, settings):
    import pyarrow as pa
    import pyarrow.parquet as pq

    settings.DATASET_TEXT_CHUNK_TOKENS = 8
    corpus = tmp_path / "notes.md"
    corpus.write_text("\n\n".join(f"Paragraph {i}: some words here." for i in range(12)))
    out = command("import_dataset", str(corpus), "--name", "notes", "--team", "alpha")
    assert "Format: text (detected from the file name (notes.md): a plain text corpus, cut into rows of up to 8 " \
           "tokens on paragraph boundaries; text)" in out
    assert "Rows imported: 12 as notes@1" in out
    version = DatasetVersion.objects.get(dataset__name="notes")
    assert list(services.iter_records(version))[1] == {"text": "Paragraph 1: some words here."}
    pq.write_table(pa.Table.from_pylist([chat_record(i) for i in range(12)]), tmp_path / "chat.parquet")
    out = command("import_dataset", str(tmp_path / "chat.parquet"), "--name", "pq", "--team", "alpha")
    assert 'Format: openai (detected from line 1: it has "messages"; parquet)' in out
    assert "Rows imported: 12 as pq@1" in out


SAMPLES = Path(__file__).resolve().parents[2] / "samples"


@pytest.mark.parametrize("args, fmt, rows", [
    (["tool_calls_openai.jsonl"], "openai", 12),
    (["preference_support.jsonl"], "preference", 12),
    (["--dataset-info", "llama_factory/dataset_info.json", "--entry", "support_qa"], "alpaca", 12),
    (["--dataset-info", "llama_factory/dataset_info.json", "--entry", "support_ranking"], "preference", 12),
])
def test_the_new_samples_import(args, fmt, rows, teams, data_dir):
    args = [str(SAMPLES / a) if a.endswith((".json", ".jsonl")) else a for a in args]
    out = command("import_dataset", *args, "--name", "sample", "--team", "alpha")
    assert f"Format: {fmt} (" in out and f"Rows imported: {rows} as sample@1" in out and "Report: 0 error(s)" in out


# ---------------------------------------------------------------------------------------------------------------
# API, admin, /v1/files


@pytest.fixture
def alice(api_client, data_dir):
    return api_client("alice", "alpha")


def test_api_columns_and_skip_invalid_fields(alice):
    rows = [{"question": f"Q{i}", "answer": "A"} for i in range(12)] + [{"question": "no answer"}]
    data = {"file": SimpleUploadedFile("qa.jsonl", jsonl(rows)), "name": "qa",
            "columns": "instruction=question,output=answer", "skip_invalid": "true"}
    response = alice.post("/api/datasets", data=data)
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["row_count"] == 12 and body["skipped_examples"] == 1 and body["error_count"] == 1
    assert body["mapping"]["columns"] == {"instruction": "question", "output": "answer"}
    assert body["format_reason"] == 'detected from line 1: it has "instruction/output"'
    report = alice.get(f"/api/dataset-versions/{body['id']}/report").json()
    assert report["skip_invalid"] is True and report["skipped_examples"] == 1
    data["file"] = SimpleUploadedFile("qa.jsonl", jsonl(rows))
    data["columns"] = "nonsense"
    assert alice.post("/api/datasets", data=data).status_code == 400


def test_api_uploads_parquet(alice):
    import pyarrow as pa
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist([tool_row(i) for i in range(12)]), buf)
    data = {"file": SimpleUploadedFile("tools.parquet", buf.getvalue()), "name": "pq"}
    response = alice.post("/api/datasets", data=data)
    assert response.status_code == 201, response.content
    assert response.json()["row_count"] == 12 and response.json()["format"] == "openai"


def test_v1_files_accepts_tool_calling_files(alice):
    f = io.BytesIO(jsonl([tool_row(i) for i in range(12)]))
    f.name = "tools.jsonl"
    response = alice.post("/v1/files", {"file": f, "purpose": "fine-tune"})
    assert response.status_code == 200 and response.json()["status"] == "processed", response.content


def test_admin_upload_with_columns_and_skip_invalid(client, users, data_dir):
    client.force_login(users["alice"])
    rows = [{"question": f"Q{i}", "answer": "A"} for i in range(12)] + [{"question": "no answer"}]
    response = client.post("/admin/datasets_app/dataset/upload/", {
        "team": users["alice"].memberships.get().team_id, "name": "qa", "format": "", "description": "",
        "columns": "instruction=question,output=answer", "skip_invalid": "on",
        "file": SimpleUploadedFile("qa.jsonl", jsonl(rows))}, follow=True)
    version = DatasetVersion.objects.get()
    assert version.is_ready and version.row_count == 12 and version.skipped_count == 1
    page = response.content.decode()
    assert "1 invalid row(s) skipped" in page
    assert "instruction=question, output=answer" in page and "1 of 13" in page


# ---------------------------------------------------------------------------------------------------------------
# Rendering: preview == training


def test_tool_calls_without_template_support_use_the_fallback_and_train_the_calls(tiny_tokenizer_dir):
    tokenizer = cached_tokenizer(tiny_tokenizer_dir)  # ChatML without tool support
    encoded = ml_data.encode_record(tokenizer, tool_record(0), with_offsets=True)
    trained = [s["text"] for s in ml_data.segments(encoded) if s["trained"]]
    assert trained == ['<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>',
                       "It is 21 °C in Paris.<|im_end|>"]
    text = encoded.rendered.text
    assert "<tools>" in text and '<|im_start|>user\n<tool_response>\n{"temp": 21}\n</tool_response>' in text


def test_tool_calls_go_through_a_template_that_supports_them(tiny_tokenizer_dir):
    tokenizer = load_tokenizer(tiny_tokenizer_dir)  # a copy of its own: the template is changed below
    tokenizer.chat_template = (
        "{% if tools %}TOOLS {{ tools | map(attribute='function') | map(attribute='name') | join(',') }}\n{% endif %}"
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
        "{% for c in m.get('tool_calls', []) %}CALL {{ c['function']['name'] }} {{ c['function']['arguments'] | tojson }}"
        "{% endfor %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    encoded = ml_data.encode_record(tokenizer, tool_record(0), with_offsets=True)
    assert encoded.rendered.text.startswith("TOOLS get_weather\n")
    trained = [s["text"] for s in ml_data.segments(encoded) if s["trained"]]
    assert trained == ['CALL get_weather {"city": "Paris"}<|im_end|>', "It is 21 °C in Paris.<|im_end|>"]


def test_preview_of_tool_calls_says_how_they_are_rendered(upload, tiny_base_model):
    version = upload(jsonl([tool_row(i) for i in range(12)]), name="tools")
    preview = services.version_preview(version=version, base_model=tiny_base_model, n=1)
    assert preview["tools_rendering"].startswith("fallback")
    trained = [s["text"] for s in preview["examples"][0]["segments"] if s["trained"]]
    assert trained[0].startswith("<tool_call>") and trained[-1].startswith("It is 21 °C")


def test_training_takes_completion_and_tool_rows_and_refuses_preference_rows(tiny_tokenizer_dir):
    tokenizer = cached_tokenizer(tiny_tokenizer_dir)
    examples, report = ml_data.encode_records(tokenizer, [{"prompt": "hello world", "completion": " how are you"},
                                                       tool_record(0)])
    assert report.examples == 2 and all(e.n_targets for e in examples)
    with pytest.raises(ml_data.TrainingError, match="preference"):
        ml_data.encode_records(tokenizer, [PAIR])


def test_command_imports_a_save_to_disk_folder(teams, data_dir, tmp_path):
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_list([{"text": f"row {i}", "label": "a" if i % 2 else "b"} for i in range(12)]) \
        .save_to_disk(str(tmp_path / "saved"))
    out = command("import_dataset", str(tmp_path / "saved"), "--name", "saved", "--team", "alpha")
    assert 'Format: classification (detected from line 1: it has "label"; save_to_disk)' in out
    assert "Rows imported: 12 as saved@1" in out
