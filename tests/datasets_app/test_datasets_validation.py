"""The streaming validator alone (no database): formats round-trip, every error code, every limit."""

from __future__ import annotations

import csv
import io
import json

import pytest
from dataset_helpers import chat_file, chat_record, jsonl

from datasets_app import validation
from datasets_app.validation import Limits, validate


def run(content: bytes, **kwargs) -> tuple[validation.Report, list[dict]]:
    lines: list[bytes] = []
    report = validate(io.BytesIO(content), sink=lines.append, **kwargs)
    return report, [json.loads(line) for line in lines]


def issues(report: validation.Report) -> list[tuple[int | None, str]]:
    return [(i.line, i.code) for i in report.issues()]


def padded(records: list, n: int = 12) -> list:
    """Enough valid examples after ``records`` that too_few_examples stays out of the way."""
    return records + [chat_record(100 + i) for i in range(max(0, n - len(records)))]


# ---------------------------------------------------------------------------------------------------------------
# Every format round-trips into the internal form


ALPACA = [
    {"instruction": "保修期多久？", "input": "", "output": "整机保修 2 年。"},
    {"instruction": "Translate to English", "input": "你好", "output": "Hello", "system": "Be brief."},
    {"instruction": "And the compressor?", "output": "Five years.",
     "history": [["Warranty?", "Two years."]]},
    {"instruction": "", "input": "Only the input carries the request", "output": "Fine."},
]
ALPACA_EXPECTED = [
    {"messages": [{"role": "user", "content": "保修期多久？"}, {"role": "assistant", "content": "整机保修 2 年。"}]},
    {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Translate to English\n\n你好"},
                  {"role": "assistant", "content": "Hello"}]},
    {"messages": [{"role": "user", "content": "Warranty?"}, {"role": "assistant", "content": "Two years."},
                  {"role": "user", "content": "And the compressor?"}, {"role": "assistant", "content": "Five years."}]},
    {"messages": [{"role": "user", "content": "Only the input carries the request"},
                  {"role": "assistant", "content": "Fine."}]},
]


@pytest.mark.parametrize("container", ["array", "jsonl"])
def test_alpaca_round_trips_to_messages(container):
    rows = ALPACA * 3
    content = json.dumps(rows, ensure_ascii=False, indent=2).encode() if container == "array" else jsonl(rows)
    report, records = run(content)
    assert report.ok, report.issues()
    assert report.format == "alpaca" and report.format_detected
    assert report.container == ("json_array" if container == "array" else "jsonl")
    assert records == ALPACA_EXPECTED * 3


def test_sharegpt_round_trips_to_messages():
    rows = [{"system": "Be kind.", "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"},
                                                    {"from": "human", "value": "bye"}, {"from": "gpt", "value": "ciao"}]},
            {"conversations": [{"from": "system", "value": "S"}, {"from": "user", "value": "q"},
                               {"from": "assistant", "value": "a"}], "id": "x1"}] * 6
    report, records = run(json.dumps(rows).encode())
    assert report.ok and report.format == "sharegpt"
    assert records[0] == {"messages": [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "hi"},
                                       {"role": "assistant", "content": "hello"}, {"role": "user", "content": "bye"},
                                       {"role": "assistant", "content": "ciao"}]}
    assert records[1] == {"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "q"},
                                       {"role": "assistant", "content": "a"}]}


def test_openai_chat_round_trips_with_weights():
    row = {"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "q"},
                        {"role": "assistant", "content": "skip me", "weight": 0},
                        {"role": "user", "content": "q2"},
                        {"role": "assistant", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
                         "weight": 1, "name": "bot"}]}
    report, records = run(jsonl([row] + [chat_record(i) for i in range(11)]))
    assert report.ok and report.format == "openai"
    assert records[0] == {"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "q"},
                                       {"role": "assistant", "content": "skip me", "weight": 0},
                                       {"role": "user", "content": "q2"},
                                       {"role": "assistant", "content": "ab", "weight": 1}]}
    assert records[1] == chat_record(0)


def test_classification_jsonl_and_csv_round_trip_identically():
    rows = [{"text": f"question {i}", "label": ["data_platform", "general_chat", "unrelated"][i % 3]}
            for i in range(12)]
    rows[0]["label"] = 7  # integer labels become strings
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["Text", "label"])
    writer.writerows([[r["text"], r["label"]] for r in rows])
    report_j, records_j = run(jsonl(rows))
    report_c, records_c = run(buf.getvalue().encode(), filename="questions.csv")
    assert report_j.ok and report_c.ok
    assert report_j.format == report_c.format == "classification"
    assert report_c.container == "csv"
    assert records_j == records_c
    assert records_j[0] == {"text": "question 0", "label": "7"}
    assert report_j.stats["labels"] == {"general_chat": 4, "unrelated": 4, "data_platform": 3, "7": 1}


def test_plain_text_round_trips():
    rows = [{"text": f"Paragraph {i}.", "title": "ignored"} for i in range(10)]
    report, records = run(jsonl(rows))
    assert report.ok and report.format == "text"
    assert records == [{"text": f"Paragraph {i}."} for i in range(10)]


def test_format_can_be_forced_and_then_rows_are_checked_against_it():
    report, _ = run(jsonl([{"text": "a", "label": "x"}] * 12), format="text")
    assert report.ok and report.format == "text" and not report.format_detected
    report, _ = run(chat_file(), format="alpaca")
    assert issues(report)[:2] == [(1, "missing_field"), (1, "missing_field")]


def test_utf8_bom_is_tolerated():
    report, records = run(b"\xef\xbb\xbf" + chat_file())
    assert report.ok and len(records) == 12


# ---------------------------------------------------------------------------------------------------------------
# Every error category, with its exact line number and code


@pytest.mark.parametrize("bad, expected", [
    ([1, 2], [(3, "data_type")]),
    ({"msgs": []}, [(3, "missing_messages_list")]),
    ({"messages": []}, [(3, "missing_messages_list")]),
    ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant"}]}, [(3, "message_missing_key")]),
    ({"messages": [{"role": "user", "content": "q", "foo": 1}, {"role": "assistant", "content": "a"}]},
     [(3, "message_unrecognized_key")]),
    ({"messages": [{"role": "human", "content": "q"}, {"role": "assistant", "content": "a"}]},
     [(3, "unrecognized_role")]),
    ({"messages": [{"role": "user", "content": "  "}, {"role": "assistant", "content": "a"}]},
     [(3, "missing_content")]),
    ({"messages": [{"role": "user", "content": 5}, {"role": "assistant", "content": "a"}]}, [(3, "missing_content")]),
    ({"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}]},
     [(3, "example_missing_assistant_message")]),
    ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "weight": 2}]},
     [(3, "invalid_weight")]),
    ({"messages": ["hello", {"role": "assistant", "content": "a"}]}, [(3, "data_type")]),
])
def test_chat_errors_use_the_public_checker_codes(bad, expected):
    rows = padded([chat_record(1), chat_record(2), bad])
    report, _ = run(jsonl(rows), format="openai")
    assert issues(report) == expected
    assert not report.ok


def test_message_missing_key_message_names_the_message():
    rows = padded([chat_record(0), {"messages": [{"role": "user", "content": "q"}, {"role": "assistant"}]}])
    report, _ = run(jsonl(rows))
    assert str(report.errors[0]) == 'line 2: message_missing_key: message 2 has no "content"'


@pytest.mark.parametrize("bad, expected", [
    ({"instruction": "x"}, [(2, "missing_field")]),
    ({"instruction": "", "input": " ", "output": "o"}, [(2, "empty_field")]),
    ({"instruction": "i", "output": ""}, [(2, "empty_field")]),
    ({"instruction": "i", "output": ["o"]}, [(2, "data_type")]),
    ({"instruction": "i", "output": "o", "history": [["only one"]]}, [(2, "data_type")]),
])
def test_alpaca_errors(bad, expected):
    good = {"instruction": "i", "output": "o"}
    rows = [good, bad] + [{"instruction": f"i{k}", "output": "o"} for k in range(10)]
    report, _ = run(jsonl(rows))
    assert issues(report) == expected


@pytest.mark.parametrize("bad, expected", [
    ({"conversations": [{"from": "human", "value": "q"}, {"from": "bot", "value": "a"}]},
     [(2, "unrecognized_role"), (2, "example_missing_assistant_message")]),
    ({"conversations": [{"from": "human"}, {"from": "gpt", "value": "a"}]}, [(2, "message_missing_key")]),
    ({"conversations": "q"}, [(2, "missing_messages_list")]),
])
def test_sharegpt_errors(bad, expected):
    good = {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}
    rows = [good, bad] + [{"conversations": [{"from": "human", "value": f"q{k}"}, {"from": "gpt", "value": "a"}]}
                          for k in range(10)]
    report, _ = run(jsonl(rows))
    assert issues(report) == expected


def test_classification_label_missing_and_unseen():
    rows = [{"text": f"t{i}", "label": "a" if i % 2 else "b"} for i in range(12)]
    rows[3] = {"text": "t3"}
    rows[5] = {"text": "t5", "label": ""}
    rows[7] = {"text": "t7", "label": "c"}
    rows[9] = {"text": "", "label": "a"}
    report, _ = run(jsonl(rows), labels={"a", "b"})
    assert issues(report) == [(4, "label_missing"), (6, "label_missing"), (8, "label_unseen"), (10, "empty_field")]


def test_classification_imbalance_and_single_label_are_warnings():
    rows = [{"text": f"t{i}", "label": "big"} for i in range(20)] + [{"text": "x", "label": "small"}]
    report, _ = run(jsonl(rows))
    assert report.ok and issues(report) == [(None, "label_imbalance")]
    report, _ = run(jsonl([{"text": f"t{i}", "label": "one"} for i in range(12)]))
    assert report.ok and issues(report) == [(None, "too_few_labels")]


def test_invalid_json_is_reported_per_line_and_the_rest_still_checked():
    content = chat_file(5) + b"{not json\n" + b"\n" + chat_file(6, start=5) + b'{"messages": 1}\n'
    report, _ = run(content)
    assert issues(report) == [(6, "invalid_json"), (14, "missing_messages_list")]
    assert report.examples == 13 and report.valid_examples == 11


def test_pretty_printed_json_lines_get_a_hint():
    report, _ = run(b'{\n  "messages": []\n}\n', filename="x.jsonl")
    assert report.errors[0].line == 1 and "pretty-printed" in report.errors[0].message


def test_invalid_encoding_nul_and_utf16():
    report, _ = run(chat_file(3) + b'{"text": "caf\xe9"}\n' + chat_file(9, start=3))
    assert issues(report) == [(4, "invalid_encoding")]
    report, _ = run(chat_file(2) + b'{"text": "a\x00b"}\n' + chat_file(10, start=2))
    assert issues(report) == [(3, "invalid_encoding")]
    report, _ = run('[{"text": "a"}]'.encode("utf-16")[:-1])  # a BOM, then a cut-off character
    assert (None, "invalid_encoding_file") in issues(report)
    assert "UTF-16" in report.errors[-1].message


def test_unpaired_surrogate_escape_is_an_encoding_error():
    rows = padded([{"messages": [{"role": "user", "content": "\\ud800"}, {"role": "assistant", "content": "a"}]}])
    content = jsonl(rows).replace(b"\\\\ud800", b"\\ud800")
    report, _ = run(content)
    assert issues(report) == [(1, "invalid_encoding")]


def test_nan_is_not_json():
    report, _ = run(jsonl(padded([])) + b'{"text": NaN}\n')
    assert issues(report) == [(13, "invalid_json")]


def test_unknown_format_is_reported_at_the_first_example():
    report, _ = run(jsonl([{"question": "q", "answer": "a"}] * 12))
    assert issues(report) == [(1, "unknown_format")]


def test_duplicates_are_warnings_with_the_original_line():
    rows = [chat_record(i) for i in range(12)]
    rows[7] = rows[2]
    rows[10] = rows[2]
    report, records = run(jsonl(rows))
    assert report.ok and len(records) == 12
    assert [(str(w)) for w in report.warnings] == ["line 8: duplicate: the same example as line 3",
                                                   "line 11: duplicate: the same example as line 3"]
    assert report.stats["duplicates"] == 2


def test_duplicates_are_found_after_normalisation():
    # The same example as Alpaca with and without an empty "input" normalises identically.
    rows = [{"instruction": f"i{k}", "output": "o"} for k in range(11)] + [{"instruction": "i0", "input": "",
                                                                           "output": "o"}]
    report, _ = run(jsonl(rows))
    assert [(w.line, w.code) for w in report.warnings] == [(12, "duplicate")]


def test_too_few_examples():
    report, _ = run(chat_file(9))
    assert issues(report) == [(None, "too_few_examples")]
    report, _ = run(b"")
    assert issues(report) == [(None, "too_few_examples")]
    assert "no examples" in report.errors[0].message
    report, _ = run(b"[]")
    assert issues(report) == [(None, "too_few_examples")]


def test_too_long_needs_a_token_counter_and_is_a_warning():
    rows = [chat_record(i) for i in range(12)]
    rows[4] = chat_record(4, answer="word " * 50)
    counter = lambda record: sum(len(m["content"].split()) for m in record["messages"])  # noqa: E731
    report, _ = run(jsonl(rows), token_counter=counter, max_tokens=40)
    assert report.ok and issues(report) == [(5, "too_long")]
    assert report.stats["tokens"]["max"] > 40 and report.stats["tokens"]["over_limit"] == 1


def test_template_errors_are_warnings():
    def counter(record):
        raise ValueError("roles must alternate")

    report, _ = run(chat_file(), token_counter=counter, max_tokens=10)
    assert report.ok and report.counts["template_error"] == 12


# ---------------------------------------------------------------------------------------------------------------
# Limits


def test_line_too_long_in_jsonl_skips_only_that_line():
    limits = Limits(max_line_bytes=500)
    big = jsonl([chat_record(0, answer="x" * 2000)])
    report, records = run(chat_file(3) + big + chat_file(9, start=3), limits=limits)
    assert issues(report) == [(4, "line_too_long")]
    assert report.valid_examples == 12


def test_line_too_long_in_a_json_array_stops_at_its_start_line():
    rows = [chat_record(i) for i in range(12)]
    rows[5] = chat_record(5, answer="y" * 300_000)
    content = json.dumps(rows, indent=1).encode()
    report, _ = run(content, limits=Limits(max_line_bytes=100_000))
    start_line = content[: content.index(b"y" * 100)].count(b"\n") + 1
    element_start = json.dumps(rows[:5], indent=1).count("\n") + 1  # "[" line, then 5 elements
    assert report.errors[0].code == "line_too_long"
    assert element_start <= report.errors[0].line <= start_line
    assert report.stopped_early


def test_line_too_long_in_csv():
    content = b"text,label\n" + b"".join(f"t{i},a\n".encode() for i in range(5)) + b'"' + b"z" * 3000 + b'",b\n'
    report, _ = run(content + b"".join(f"u{i},b\n".encode() for i in range(6)), filename="x.csv",
                    limits=Limits(max_line_bytes=1000))
    assert issues(report) == [(7, "line_too_long")]


def test_unclosed_csv_quote_cannot_swallow_the_file():
    content = b"text,label\n" + b'"open quote,a\n' + b"more,b\n" * 5000
    report, _ = run(content, filename="x.csv", limits=Limits(max_line_bytes=1000))
    assert (2, "line_too_long") in issues(report)


def test_nesting_too_deep():
    deep = {"text": "t", "meta": json.loads("[" * 40 + "]" * 40)}
    report, _ = run(jsonl([{"text": f"t{i}"} for i in range(11)] + [deep]), limits=Limits(max_depth=32))
    assert issues(report) == [(12, "nesting_too_deep")]
    hostile = b'{"text": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n"
    report, _ = run(jsonl([{"text": f"t{i}"} for i in range(11)]) + hostile,
                    limits=Limits(max_line_bytes=1 << 20))
    assert issues(report) == [(12, "nesting_too_deep")]


def test_file_too_large_stops_reading():
    report, _ = run(chat_file(100), limits=Limits(max_bytes=1000))
    assert (None, "file_too_large") in issues(report)
    assert report.bytes_read <= 1000 + validation.READ_CHUNK


def test_csv_needs_a_text_header():
    report, _ = run(b"question,answer\nq,a\n", filename="x.csv")
    assert issues(report) == [(1, "missing_field")]


def test_csv_row_with_wrong_column_count():
    content = b"text,label\n" + b"".join(f"t{i},a\n".encode() for i in range(11)) + b"x,y,z\n"
    report, _ = run(content, filename="x.csv")
    assert [(i.line, i.code) for i in report.errors] == [(13, "invalid_csv")]


def test_csv_multiline_fields_keep_the_start_line():
    content = b'text,label\n"first\nsecond",a\n' + b"".join(f"t{i},b\n".encode() for i in range(10)) + b'"x\ny",\n'
    report, records = run(content, filename="x.csv")
    assert records[0] == {"text": "first\nsecond", "label": "a"}
    assert [(i.line, i.code) for i in report.errors] == [(14, "label_missing")]


# ---------------------------------------------------------------------------------------------------------------
# JSON arrays stream with the line number of each element's start


def test_json_array_reports_the_start_line_of_each_element():
    rows = [chat_record(i) for i in range(12)]
    rows[9] = {"messages": [{"role": "user", "content": "q"}]}
    content = json.dumps(rows, indent=2).encode()
    report, _ = run(content)
    expected_line = content.decode()[: content.decode().index('"content": "q"')].rfind("\n  {")
    expected_line = content.decode()[:expected_line].count("\n") + 2
    assert issues(report) == [(expected_line, "example_missing_assistant_message")]


def test_json_array_elements_across_read_chunks():
    # Elements of ~10 KB, so many of them straddle the 64 KiB read boundaries; one bad example near the end.
    rows = [chat_record(i, answer="z" * 10_000) for i in range(40)]
    rows[37] = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": ""}]}
    content = ("[\n" + ",\n".join(json.dumps(r) for r in rows) + "\n]\n").encode()
    report, records = run(content)
    assert issues(report) == [(39, "missing_content")]
    assert report.examples == 40 and report.valid_examples == 39


@pytest.mark.parametrize("content, expected", [
    (b'[{"text": "a"}, {"text": "b"} {"text": "c"}]', [(1, "invalid_json")]),
    (b'[{"text": "a"},\n{"text": "b"},\n]', [(3, "invalid_json")]),
    (b'[{"text": "a"},\n{"text": "b"}', [(2, "invalid_json")]),
    (b'[{"text": "a"}]\n\n{"text": "b"}', [(3, "invalid_json")]),
    (b'[{"text": "a"},\n{"text": \xff}]', [(2, "invalid_encoding")]),
])
def test_json_array_structure_errors(content, expected):
    report, _ = run(content)
    assert [i for i in issues(report) if i[1] != "too_few_examples"] == expected


def test_report_serialises_and_caps_stored_issues():
    rows = [{"messages": 1}] * 30
    report, _ = run(jsonl(rows), limits=Limits(max_stored_issues=5))
    data = report.to_dict()
    assert data["error_count"] == 30 and len(data["errors"]) == 5 and data["truncated"]
    assert data["counts"] == {"missing_messages_list": 30}
    json.dumps(data)


def test_duplicate_finder_gives_the_same_answer_when_it_spills_to_disk():
    keys = [f"example {i % 37}" for i in range(1000)]
    in_memory = validation.DuplicateFinder(spill_rows=10_000)
    spilling = validation.DuplicateFinder(spill_rows=50, buckets=8)
    for line, key in enumerate(keys, 1):
        in_memory.add(hash(key), line)
        spilling.add(hash(key), line)
    expected = sorted(in_memory.pairs())
    assert len(expected) == 1000 - 37 and expected[0] == (38, 1)
    assert sorted(spilling.pairs()) == expected
    assert spilling._dir is not None
    spilling.close()
    assert spilling._dir is None
