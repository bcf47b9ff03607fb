"""Dataset services: storage, failed uploads, dedupe, refs, splits, delete rules, stats and preview."""

from __future__ import annotations

import hashlib
import io
import json

import pytest
from dataset_helpers import chat_file, chat_record, jsonl

from core.errors import ApplicationError, Conflict, NotFound, PermissionDenied
from datasets_app import services
from datasets_app.models import Dataset, DatasetVersion


def stored_files(data_dir):
    root = data_dir / "datasets"
    return sorted(p.relative_to(data_dir).as_posix() for p in root.rglob("*") if p.is_file()) if root.exists() else []


def test_upload_stores_the_normalised_file_under_its_hash(upload, data_dir):
    version = upload(json.dumps([{"instruction": f"q{i}", "output": "a"} for i in range(10)]).encode(),
                     filename="faq.json")
    assert version.status == "ready" and version.number == 1 and version.row_count == 10
    assert version.format == "alpaca" and version.dataset.format == "alpaca"
    content = (data_dir / version.path).read_bytes()
    assert hashlib.sha256(content).hexdigest() == version.sha256
    assert version.path == f"datasets/alpha/{version.sha256}.jsonl"
    records = list(services.iter_records(version))
    assert records[0] == {"messages": [{"role": "user", "content": "q0"}, {"role": "assistant", "content": "a"}]}
    assert version.created_by.username == "alice" and version.source_filename == "faq.json"


def test_failed_upload_keeps_a_failed_version_and_stores_nothing(upload, data_dir):
    content = chat_file(6) + b'{"messages": [{"role": "user", "content": "q"}]}\n' + chat_file(6, start=6)
    version = upload(content)
    assert version.status == "failed" and version.row_count == 0
    assert version.path == "" and version.sha256 == ""
    assert version.report["errors"] == [{"line": 7, "code": "example_missing_assistant_message",
                                         "message": "the example has no assistant message"}]
    assert stored_files(data_dir) == []  # no normalised file, no temporary left-overs
    assert Dataset.objects.get(name="faq").versions.count() == 1
    with pytest.raises(Conflict):
        list(services.iter_records(version))


def test_identical_content_returns_the_existing_version(upload, data_dir):
    first = upload(chat_file())
    # The same examples as a JSON array normalise to the same content.
    again = upload(json.dumps([chat_record(i) for i in range(12)]).encode(), filename="again.json")
    assert again.pk == first.pk and again.deduplicated
    assert DatasetVersion.objects.count() == 1
    assert len(stored_files(data_dir)) == 1
    changed = upload(chat_file(13))
    assert changed.number == 2 and not changed.deduplicated


def test_same_content_in_another_dataset_is_a_new_version_sharing_the_file(upload, data_dir):
    a = upload(chat_file(), name="one")
    b = upload(chat_file(), name="two")
    assert a.pk != b.pk and a.path == b.path
    assert len(stored_files(data_dir)) == 1


def test_unknown_format_is_a_parameter_error(upload):
    with pytest.raises(ApplicationError) as exc:
        upload(chat_file(), format="yaml")
    assert exc.value.code == "unknown_format" and exc.value.param == "format"


def test_file_too_large_is_413_and_creates_nothing(upload, settings, data_dir):
    settings.MAX_UPLOAD_BYTES = 1024
    with pytest.raises(ApplicationError) as exc:
        upload(chat_file(100))
    assert exc.value.status == 413 and exc.value.code == "file_too_large"
    assert not Dataset.objects.exists() and stored_files(data_dir) == []


def test_limits_come_from_settings(upload, settings):
    settings.DATASET_MAX_LINE_BYTES = 200
    settings.DATASET_MAX_JSON_DEPTH = 2
    version = upload(chat_file(11) + jsonl([chat_record(99, answer="x" * 500)]))
    assert [(e["line"], e["code"]) for e in version.report["errors"]] == [(1, "nesting_too_deep")] * 1 + \
        [(i, "nesting_too_deep") for i in range(2, 12)] + [(12, "line_too_long")]


def test_filenames_are_sanitised(upload):
    version = upload(chat_file(), filename="../../etc/pass\x00wd\\..\\evil.jsonl")
    assert version.source_filename == "evil.jsonl"
    version = upload(chat_file(13), filename="../..")
    assert version.source_filename == "upload"


def test_a_dataset_keeps_one_kind_of_data(upload):
    upload(chat_file())
    with pytest.raises(Conflict) as exc:
        upload(jsonl([{"text": f"t{i}", "label": "a"} for i in range(12)]))
    assert exc.value.code == "format_mismatch"
    with pytest.raises(Conflict):
        upload(chat_file(), format="text")
    # Another chat format is fine: it normalises to the same kind.
    version = upload(json.dumps([{"instruction": f"i{k}", "output": "o"} for k in range(10)]).encode())
    assert version.number == 2


def test_viewers_cannot_upload_and_other_teams_do_not_exist(upload, users):
    with pytest.raises(PermissionDenied):
        upload(chat_file(), user=users["vera"])
    with pytest.raises(NotFound):
        upload(chat_file(), user=users["bob"], team="alpha")
    with pytest.raises(ApplicationError) as exc:
        upload(chat_file(), name="../bad")
    assert exc.value.code == "invalid_dataset_name"


def test_a_superuser_may_upload_to_any_team(upload, django_user_model):
    root = django_user_model.objects.create_superuser("root", password="x")
    version = upload(chat_file(), user=root, team="beta")
    assert version.dataset.team.name == "beta" and version.created_by == root


def test_version_refs(upload, users):
    v1 = upload(chat_file())
    v2 = upload(chat_file(13))
    bad = upload(b"{}\n")
    alice = users["alice"]
    assert services.dataset_version_get(user=alice, ref=v1.pk) == v1
    assert services.dataset_version_get(user=alice, ref=str(v2.pk)) == v2
    assert services.dataset_version_get(user=alice, ref="faq@1") == v1
    assert services.dataset_version_get(user=alice, ref="alpha/faq@2") == v2
    assert services.dataset_version_get(user=alice, ref="faq") == v2  # latest ready, not the failed v3
    assert services.dataset_version_get(user=alice, ref="faq@3") == bad
    with pytest.raises(Conflict):
        services.dataset_version_get(user=alice, ref="faq@3", require_ready=True)
    with pytest.raises(NotFound):
        services.dataset_version_get(user=users["bob"], ref=v1.pk)
    with pytest.raises(NotFound):
        services.dataset_version_get(user=users["bob"], ref="alpha/faq@1")
    with pytest.raises(NotFound):
        services.dataset_version_get(user=alice, ref="nope@1")


def test_ambiguous_name_across_teams(upload, users):
    from accounts.services import member_add

    upload(chat_file())
    upload(chat_file(), team="beta", user=users["bob"])
    alice, _membership, _created = member_add(team_name="beta", username="alice", role="viewer")
    with pytest.raises(ApplicationError) as exc:
        services.dataset_version_get(user=alice, ref="faq@1")
    assert exc.value.code == "ambiguous_dataset"
    assert services.dataset_version_get(user=alice, ref="beta/faq@1").dataset.team.name == "beta"


# ---------------------------------------------------------------------------------------------------------------
# Splits


def test_split_is_deterministic_for_a_seed(upload, users, data_dir):
    version = upload(chat_file(50))
    train, val = services.dataset_version_split(user=users["alice"], version=version, val_ratio=0.2, seed=7)
    assert (train.row_count, val.row_count) == (40, 10)
    assert (train.number, val.number) == (2, 3)
    assert train.parent == val.parent == version
    assert (train.split_role, val.split_role) == ("train", "validation")
    assert (train.split_seed, train.split_ratio) == (7, 0.2)
    # Same seed and ratio: the same pair, not new versions.
    assert services.dataset_version_split(user=users["alice"], version=version, val_ratio=0.2, seed=7) == (train, val)
    # The content is a partition of the parent, order preserved.
    parent = list(services.iter_records(version))
    t, v = list(services.iter_records(train)), list(services.iter_records(val))
    assert sorted(map(json.dumps, t + v)) == sorted(map(json.dumps, parent))
    assert t == [r for r in parent if r not in v]
    # Another seed gives another split; recomputing a seed gives the same content hashes.
    other_t, other_v = services.dataset_version_split(user=users["alice"], version=version, val_ratio=0.2, seed=8)
    assert other_v.sha256 != val.sha256
    DatasetVersion.objects.filter(parent=version, split_seed=7).delete()
    again_t, again_v = services.dataset_version_split(user=users["alice"], version=version, val_ratio=0.2, seed=7)
    assert (again_t.sha256, again_v.sha256) == (train.sha256, val.sha256)
    assert services.dataset_version_get(user=users["alice"], ref="faq") == version  # name: the full upload


def test_split_rules(upload, users):
    version = upload(chat_file())
    alice = users["alice"]
    with pytest.raises(ApplicationError):
        services.dataset_version_split(user=alice, version=version, val_ratio=1.5, seed=1)
    with pytest.raises(PermissionDenied):
        services.dataset_version_split(user=users["vera"], version=version, val_ratio=0.5, seed=1)
    with pytest.raises(NotFound):
        services.dataset_version_split(user=users["bob"], version=version, val_ratio=0.5, seed=1)
    train, _val = services.dataset_version_split(user=alice, version=version, val_ratio=0.5, seed=1)
    with pytest.raises(Conflict):
        services.dataset_version_split(user=alice, version=train, val_ratio=0.5, seed=1)
    failed = upload(b"[1]")
    with pytest.raises(Conflict):
        services.dataset_version_split(user=alice, version=failed, val_ratio=0.5, seed=1)


def test_split_with_a_given_validation_version(upload, users):
    rows = [{"text": f"t{i}", "label": "a" if i % 2 else "b"} for i in range(20)]
    train_src = upload(jsonl(rows), name="cls")
    val_src = upload(jsonl([{"text": f"v{i}", "label": "a" if i % 2 else "b"} for i in range(10)]), name="cls-val")
    train, val = services.dataset_version_split(user=users["alice"], version=train_src, validation=val_src.pk)
    assert (train.sha256, val.sha256) == (train_src.sha256, val_src.sha256)
    assert (train.path, val.path) == (train_src.path, val_src.path)
    assert val.parent == train_src and val.split_seed is None and val.split_ratio == pytest.approx(10 / 30)
    unseen = upload(jsonl([{"text": f"u{i}", "label": "zzz"} for i in range(10)]), name="cls-odd")
    with pytest.raises(ApplicationError) as exc:
        services.dataset_version_split(user=users["alice"], version=train_src, validation=unseen)
    assert exc.value.code == "label_unseen" and "zzz" in exc.value.message


# ---------------------------------------------------------------------------------------------------------------
# Delete rules


def test_delete_removes_the_file_once_unreferenced(upload, users, data_dir, django_capture_on_commit_callbacks):
    a = upload(chat_file(), name="one")
    b = upload(chat_file(), name="two")
    with django_capture_on_commit_callbacks(execute=True):
        services.dataset_version_delete(user=users["alice"], version=a)
    assert (data_dir / b.path).exists()  # still used by "two"
    with django_capture_on_commit_callbacks(execute=True):
        services.dataset_version_delete(user=users["alice"], version=b)
    assert stored_files(data_dir) == []


def test_a_version_with_splits_cannot_be_deleted(upload, users):
    version = upload(chat_file())
    train, val = services.dataset_version_split(user=users["alice"], version=version, val_ratio=0.25, seed=1)
    with pytest.raises(Conflict) as exc:
        services.dataset_version_delete(user=users["alice"], version=version)
    assert exc.value.status == 409 and exc.value.code == "dataset_version_in_use"
    assert "faq@2" in exc.value.message
    assert DatasetVersion.objects.filter(pk=version.pk).exists()
    services.dataset_version_delete(user=users["alice"], version=train)
    services.dataset_version_delete(user=users["alice"], version=val)
    services.dataset_version_delete(user=users["alice"], version=version)
    assert not DatasetVersion.objects.exists()


def test_viewers_cannot_delete(upload, users):
    version = upload(chat_file())
    with pytest.raises(PermissionDenied):
        services.dataset_version_delete(user=users["vera"], version=version)


def test_dataset_delete_takes_its_splits_along(upload, users, data_dir, django_capture_on_commit_callbacks):
    version = upload(chat_file())
    services.dataset_version_split(user=users["alice"], version=version, val_ratio=0.25, seed=1)
    with django_capture_on_commit_callbacks(execute=True):
        services.dataset_delete(user=users["alice"], dataset=version.dataset)
    assert not Dataset.objects.exists() and stored_files(data_dir) == []


# ---------------------------------------------------------------------------------------------------------------
# Inspect


def test_basic_stats(upload):
    rows = [chat_record(i) for i in range(12)]
    rows[5] = rows[1]
    stats = services.version_stats(version=upload(jsonl(rows)))
    assert stats["rows"] == 12 and stats["kind"] == "chat" and stats["duplicates"] == 1
    assert stats["turns"]["messages"] == 36 and stats["turns"]["assistant"] == 12
    assert stats["characters"]["min"] > 0 and "histogram" in stats["characters"]


def test_token_stats_with_a_real_tokenizer(upload, tiny_base_model):
    rows = [chat_record(i) for i in range(12)]
    rows[3] = chat_record(3, answer="Two years . " * 20)
    version = upload(jsonl(rows), base_model=tiny_base_model.name)
    assert [(w["line"], w["code"]) for w in version.report["warnings"]] == [(4, "too_long")]
    tokens = version.stats["tokens"]["tiny-chat"]
    assert tokens["limit"] == 40 and tokens["over_limit"] == 1
    assert tokens["min"] <= tokens["median"] <= tokens["p95"] <= tokens["max"]
    # version_stats computes (and caches) the same numbers for a version uploaded without a model.
    plain = upload(jsonl(rows), name="other")
    assert "tokens" not in plain.stats
    stats = services.version_stats(version=plain, base_model=tiny_base_model)
    assert stats["tokens"]["tiny-chat"]["max"] == tokens["max"]
    assert DatasetVersion.objects.get(pk=plain.pk).stats["tokens"]["tiny-chat"]["count"] == 12


def test_histogram_png(upload, tiny_base_model):
    version = upload(chat_file())
    png = services.version_histogram_png(version=version, base_model=tiny_base_model)
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert services.version_histogram_png(version=version).startswith(b"\x89PNG")


def test_preview_marks_the_assistant_tokens(upload, tiny_base_model):
    row = {"messages": [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "world", "weight": 0},
                        {"role": "user", "content": "how are you"}, {"role": "assistant", "content": "Two years"}]}
    version = upload(jsonl([row] + [chat_record(i) for i in range(11)]))
    preview = services.version_preview(version=version, base_model=tiny_base_model, n=2)
    assert len(preview["examples"]) == 2
    first = preview["examples"][0]
    assert first["template"] == "model"
    assert "".join(s["text"] for s in first["segments"]) == first["text"]
    trained = [s["text"] for s in first["segments"] if s["trained"]]
    assert trained == ["Two years<|im_end|>"]  # the weight 0 turn is not trained
    assert first["trained_tokens"] == 3 and first["tokens"] > first["trained_tokens"]


def test_preview_of_classification_and_text(upload, tiny_base_model):
    version = upload(jsonl([{"text": f"hello {i}", "label": "a" if i % 2 else "b"} for i in range(12)]), name="c")
    example = services.version_preview(version=version, base_model=tiny_base_model, n=1)["examples"][0]
    assert example["label"] == "b" and example["trained_tokens"] == 0
    version = upload(jsonl([{"text": f"hello world {i}"} for i in range(12)]), name="t")
    example = services.version_preview(version=version, base_model=tiny_base_model, n=1)["examples"][0]
    assert example["trained_tokens"] == example["tokens"]


def test_iter_records_streams_every_format(upload):
    version = upload(io.BytesIO(b"").read() + b"text,label\n" + b"".join(f"t{i},x{i % 2}\n".encode()
                                                                        for i in range(12)), filename="q.csv")
    assert list(services.iter_records(version))[:2] == [{"text": "t0", "label": "x0"}, {"text": "t1", "label": "x1"}]


