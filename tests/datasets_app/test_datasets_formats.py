"""The formats of the ecosystem (no database): tool calls, prompt/completion, preference and KTO, text corpora,
Parquet / Arrow / save_to_disk, UTF-16/32, column mappings, modalities, mixed files, skip_invalid."""

from __future__ import annotations

import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from dataset_helpers import PAIR, WEATHER_TOOL, chat_record, jsonl, tool_record, tool_row

from datasets_app import formats
from datasets_app.validation import Limits, validate


def run(content: bytes | object, **kwargs):
    lines: list[bytes] = []
    source = io.BytesIO(content) if isinstance(content, bytes) else content
    report = validate(source, sink=lines.append, **kwargs)
    return report, [json.loads(line) for line in lines]


def issues(report) -> list[tuple[int | None, str]]:
    return [(i.line, i.code) for i in report.issues()]


def times(rows: list, n: int = 12) -> list:
    """``rows`` repeated up to n rows with a distinct suffix, so that too_few_examples and duplicates stay away."""
    return [rows[i % len(rows)] for i in range(n)]


# ---------------------------------------------------------------------------------------------------------------
# Tool calling


def test_openai_tool_calls_normalise_to_the_internal_form():
    report, records = run(jsonl([tool_row(i) for i in range(12)]))
    assert report.ok, report.issues()
    assert report.format == "openai" and report.format_reason == 'detected from line 1: it has "messages"'
    assert records[0] == tool_record(0)
    assert report.stats["turns"]["tool_calls"] == 12


def test_legacy_functions_and_function_call_become_tools_and_tool_calls():
    row = {"functions": [WEATHER_TOOL["function"]], "messages": [
        {"role": "user", "content": "Weather in Paris? (0)"},
        {"role": "assistant", "content": None, "function_call": {"name": "get_weather",
                                                                 "arguments": '{"city": "Paris"}'}},
        {"role": "function", "name": "get_weather", "content": '{"temp": 21}'},
        {"role": "assistant", "content": "It is 21 °C in Paris."}]}
    report, records = run(jsonl(times([row])))
    expected = tool_record(0)
    expected["messages"][1]["tool_calls"][0]["id"] = "call_1"
    expected["messages"][2]["tool_call_id"] = "call_1"
    assert report.errors == [] and records[0] == expected


def test_sharegpt_function_call_and_observation_with_a_tools_column():
    row = {"conversations": [
        {"from": "human", "value": "Weather in Paris? (0)"},
        {"from": "function_call", "value": '{"name": "get_weather", "arguments": {"city": "Paris"}}'},
        {"from": "observation", "value": '{"temp": 21}'},
        {"from": "gpt", "value": "It is 21 °C in Paris."}], "tools": json.dumps([WEATHER_TOOL["function"]])}
    report, records = run(jsonl(times([row])))
    expected = tool_record(0)
    expected["messages"][1]["tool_calls"][0]["id"] = "call_1"
    expected["messages"][2]["tool_call_id"] = "call_1"
    assert report.format == "sharegpt" and report.errors == [] and records[0] == expected


@pytest.mark.parametrize("change, code, words", [
    ({"tools": [{"type": "function", "function": {"name": "get_time"}}]}, "undeclared_tool", "get_weather"),
    ({"tools": None}, "undeclared_tool", "declared: none"),
    ("bad_arguments", "invalid_tool_arguments", "not valid JSON"),
    ("unanswered", "unanswered_tool_call", "get_weather (call_a)"),
    ("wrong_id", "unexpected_tool_message", "call_b"),
])
def test_tool_call_errors_name_the_line_and_the_call(change, code, words):
    bad = tool_row(99)
    if change == "bad_arguments":
        bad["messages"][1]["tool_calls"][0]["function"]["arguments"] = '{"city": Paris}'
    elif change == "unanswered":
        del bad["messages"][2]
    elif change == "wrong_id":
        bad["messages"][2]["tool_call_id"] = "call_b"
    else:
        bad.update(change)
    rows = [tool_row(i) for i in range(12)]
    rows.insert(4, bad)
    report, stored = run(jsonl(rows))
    assert (5, code) in issues(report) and all(line == 5 for line, _ in issues(report))
    assert any(words in i.message for i in report.errors), report.errors
    assert not report.usable and len(stored) == 4  # the sink stops at the first error; the caller stores nothing


# ---------------------------------------------------------------------------------------------------------------
# prompt / completion, instruction / input / response, axolotl conversations


def test_prompt_completion_rows():
    rows = [{"prompt": f"Q{i}: the capital of France is", "completion": " Paris."} for i in range(12)]
    report, records = run(jsonl(rows))
    assert report.format == "completion" and report.ok
    assert records[0] == {"prompt": "Q0: the capital of France is", "completion": " Paris."}
    assert formats.kind_of(report.format) == "text"


def test_instruction_input_response_reads_as_alpaca():
    rows = [{"instruction": f"Translate {i}", "input": "你好", "response": "Hello"} for i in range(12)]
    report, records = run(jsonl(rows))
    assert report.format == "alpaca" and report.ok
    assert records[0] == {"messages": [{"role": "user", "content": "Translate 0\n\n你好"},
                                       {"role": "assistant", "content": "Hello"}]}


def test_axolotl_conversations_with_role_and_content():
    rows = [{"conversations": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"Hi {i}"},
                               {"role": "assistant", "content": "Hello."}]} for i in range(12)]
    report, records = run(jsonl(rows))
    assert report.format == "sharegpt" and report.ok, report.issues()
    assert records[0] == {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi 0"},
                                       {"role": "assistant", "content": "Hello."}]}


# ---------------------------------------------------------------------------------------------------------------
# Preference and KTO: their own formats, never SFT rows

def numbered(record: dict, i: int) -> dict:
    out = json.loads(json.dumps(record))
    out["prompt"][-1]["content"] += f" ({i})"
    return out


@pytest.mark.parametrize("row", [
    {"prompt": "Warranty?", "chosen": "2 years.", "rejected": "No idea."},
    PAIR,
    {"conversations": [{"from": "human", "value": "Warranty?"}], "chosen": {"from": "gpt", "value": "2 years."},
     "rejected": {"from": "gpt", "value": "No idea."}},
    {"instruction": "Warranty?", "chosen": "2 years.", "rejected": "No idea."},
    {"input": {"messages": [{"role": "user", "content": "Warranty?"}]},
     "preferred_output": [{"role": "assistant", "content": "2 years."}],
     "non_preferred_output": [{"role": "assistant", "content": "No idea."}]},
    {"chosen": [{"role": "user", "content": "Warranty?"}, {"role": "assistant", "content": "2 years."}],
     "rejected": [{"role": "user", "content": "Warranty?"}, {"role": "assistant", "content": "No idea."}]},
], ids=["strings", "messages", "sharegpt", "alpaca", "openai", "implicit-prompt"])
def test_preference_pairs_normalise_to_prompt_chosen_rejected(row):
    report, records = run(jsonl([row] * 11 + [dict(row, system="Be kind.")]))
    assert report.format == "preference" and report.errors == [], report.errors
    assert records[0] == PAIR
    assert records[11]["prompt"][0] == {"role": "system", "content": "Be kind."}
    assert report.stats["kind"] == "preference"


def test_preference_rows_given_as_chat_are_refused_naming_the_keys():
    rows = [{"conversations": [{"from": "human", "value": f"Warranty {i}?"}, {"from": "gpt", "value": "2 years."}],
             "chosen": {"from": "gpt", "value": "2 years."}, "rejected": {"from": "gpt", "value": "No."}}
            for i in range(12)]
    report, stored = run(jsonl(rows), format="sharegpt")
    assert issues(report) == [(i, "preference_data") for i in range(1, 13)]
    assert "'chosen', 'rejected'" in report.errors[0].message and "format preference" in report.errors[0].message
    assert "(the file's format: sharegpt, given)" in report.errors[0].message
    assert stored == [] and report.valid_examples == 0


def test_kto_rows_are_their_own_format():
    rows = [{"messages": [{"role": "user", "content": f"Warranty {i}?"},
                          {"role": "assistant", "content": "2 years." if i % 2 else "No idea."}], "label": bool(i % 2)}
            for i in range(12)]
    report, records = run(jsonl(rows))
    assert report.format == "kto" and report.errors == []
    assert records[0] == {"prompt": [{"role": "user", "content": "Warranty 0?"}],
                          "completion": [{"role": "assistant", "content": "No idea."}], "label": False}
    assert report.stats["labels"] == {"desirable": 6, "undesirable": 6}
    report, records = run(jsonl([{"prompt": f"Q{i}", "completion": "A", "label": True} for i in range(12)]))
    assert report.format == "kto" and records[0] == {"prompt": [{"role": "user", "content": "Q0"}],
                                                      "completion": [{"role": "assistant", "content": "A"}],
                                                      "label": True}


@pytest.mark.parametrize("fmt", ["openai", "completion"])
def test_labelled_rows_never_become_sft_rows(fmt):
    if fmt == "openai":
        rows = [{"messages": [{"role": "user", "content": f"Q{i}"}, {"role": "assistant", "content": "A"}],
                 "label": False} for i in range(12)]
    else:
        rows = [{"prompt": f"Q{i}", "completion": "A", "label": False} for i in range(12)]
    report, stored = run(jsonl(rows), format=fmt)
    assert set(issues(report)) == {(i, "preference_data") for i in range(1, 13)}
    assert '"label"' in report.errors[0].message and "format kto" in report.errors[0].message
    assert stored == []


# ---------------------------------------------------------------------------------------------------------------
# Modalities: refused, never dropped


@pytest.mark.parametrize("row", [
    {"messages": [{"role": "user", "content": "<image>What is it?"}, {"role": "assistant", "content": "A cat."}],
     "images": ["cat.jpg"]},
    {"conversations": [{"from": "human", "value": "<video>?"}, {"from": "gpt", "value": "A dog."}],
     "videos": ["dog.mp4"]},
    {"messages": [{"role": "user", "content": [{"type": "text", "text": "What is it?"},
                                               {"type": "image_url", "image_url": {"url": "x.png"}}]},
                  {"role": "assistant", "content": "A cat."}]},
    {"instruction": "Transcribe", "output": "Hello", "audios": ["a.wav"]},
])
def test_images_videos_and_audio_are_refused_with_one_message(row):
    rows = [chat_record(i) for i in range(11)]
    rows.insert(2, row)
    report, stored = run(jsonl(rows))
    assert issues(report) == [(3, "unsupported_modality")]
    assert "not trained here yet" in report.errors[0].message
    assert not report.usable and report.valid_examples == 11


# ---------------------------------------------------------------------------------------------------------------
# Text corpora


def test_a_txt_corpus_is_cut_on_paragraph_boundaries_by_tokens():
    text = "one two three\nfour five\n\nsix seven eight nine\n\n\nten eleven\n\ntwelve\n"
    report, records = run(text.encode(), filename="notes.txt", chunk_tokens=6, limits=Limits(min_examples=1))
    assert report.format == "text" and report.container == "text" and report.ok, report.issues()
    assert records == [{"text": "one two three\nfour five"}, {"text": "six seven eight nine\n\nten eleven"},
                       {"text": "twelve"}]
    assert "up to 6 tokens on paragraph boundaries" in report.format_reason
    assert report.format_reason.startswith("detected from the file name")


def test_format_text_reads_any_text_file_as_a_corpus_and_cuts_long_paragraphs():
    text = "alpha beta gamma delta epsilon zeta eta theta\n"  # one paragraph of 8 "tokens"
    report, records = run(text.encode(), filename="README", format="text", chunk_tokens=3,
                          limits=Limits(min_examples=1))
    assert report.format_reason.startswith("given") and report.ok
    assert [r["text"] for r in records] == ["alpha beta gamma", "delta epsilon zeta", "eta theta"]


def test_markdown_corpus_with_a_tokenizer_counter():
    paragraphs = [f"Paragraph {i} " + "word " * 5 for i in range(12)]
    report, records = run("\n\n".join(paragraphs).encode(), filename="doc.md", chunk_tokens=8,
                          text_counter=lambda s: len(s.split()))
    assert report.ok and len(records) == 12 and records[3] == {"text": paragraphs[3].rstrip()}


# ---------------------------------------------------------------------------------------------------------------
# Parquet, Arrow, save_to_disk


def parquet_bytes(rows: list[dict], row_group_size: int | None = None) -> bytes:
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buf, row_group_size=row_group_size)
    return buf.getvalue()


def test_parquet_rows_are_read_in_batches_with_row_numbers():
    rows = [chat_record(i) for i in range(30)]
    rows[0]["messages"][2]["weight"] = 1  # other rows get a null weight from the column type: dropped
    rows[17]["messages"][1]["content"] = ""
    report, stored = run(parquet_bytes(rows, row_group_size=7), filename="train.parquet")
    assert report.container == "parquet" and report.examples == 30
    assert issues(report) == [(18, "missing_content")] and not report.usable
    rows[17] = chat_record(17)
    report, stored = run(parquet_bytes(rows), filename="anything.bin")  # found by its magic bytes
    assert report.ok and stored[1] == chat_record(1)
    assert stored[0]["messages"][2] == {"role": "assistant", "content": "Two years.", "weight": 1}


def test_a_broken_parquet_file_is_one_error():
    report, _ = run(parquet_bytes([chat_record(0)])[:-20], filename="x.parquet")
    assert issues(report) == [(None, "unreadable_file")]


def test_a_save_to_disk_folder_and_an_arrow_file(tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = [{"instruction": f"Q{i}", "input": "", "output": "A"} for i in range(12)]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "saved"))
    report, records = run(tmp_path / "saved")
    assert report.container == "save_to_disk" and report.ok, report.issues()
    assert records[0] == {"messages": [{"role": "user", "content": "Q0"}, {"role": "assistant", "content": "A"}]}
    arrow = next((tmp_path / "saved").glob("*.arrow")).read_bytes()
    report, records = run(arrow, filename="data.arrow")
    assert report.container == "arrow" and report.ok and len(records) == 12
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows)}).save_to_disk(str(tmp_path / "dict"))
    report, _ = run(tmp_path / "dict")
    assert issues(report) == [(None, "unreadable_file")] and "train" in report.errors[0].message


# ---------------------------------------------------------------------------------------------------------------
# Encodings


@pytest.mark.parametrize("codec", ["utf-16", "utf-16-be", "utf-32", "utf-32-be"])
def test_utf16_and_utf32_with_a_bom_are_decoded(codec):
    body = jsonl([chat_record(i, answer="两年。") for i in range(12)]).decode()
    bom = {"utf-16-be": "\ufeff", "utf-32-be": "\ufeff"}.get(codec, "")
    report, records = run((bom + body).encode(codec))
    assert report.ok, report.issues()
    assert records[5] == chat_record(5, answer="两年。")


def test_utf16_without_a_bom_is_one_clear_error():
    report, _ = run(jsonl([chat_record(i) for i in range(12)]).decode().encode("utf-16-le"))
    assert issues(report) == [(1, "invalid_encoding_file")]
    assert "UTF-16 (little-endian)" in report.errors[0].message


# ---------------------------------------------------------------------------------------------------------------
# Column mappings


def test_columns_map_a_files_keys_onto_alpaca():
    mapping = formats.ColumnMapping(columns=formats.parse_columns("instruction=question,input=context,output=answer"))
    rows = [{"question": f"Q{i}", "context": "ctx", "answer": "A", "id": i} for i in range(12)]
    report, records = run(jsonl(rows), mapping=mapping)
    assert report.format == "alpaca" and report.ok
    assert records[0] == {"messages": [{"role": "user", "content": "Q0\n\nctx"}, {"role": "assistant", "content": "A"}]}
    assert report.mapping == {"columns": {"instruction": "question", "input": "context", "output": "answer"},
                              "tags": {}}


def test_bad_column_mappings_are_refused():
    with pytest.raises(ValueError, match="not our_key=file_key"):
        formats.parse_columns("instruction")
    with pytest.raises(ValueError, match="unknown target key"):
        formats.ColumnMapping(columns={"question": "instruction"})


def test_llama_factory_sharegpt_entry_with_openai_style_tags():
    entry = {"file_name": "chat.json", "formatting": "sharegpt",
             "columns": {"messages": "messages", "system": "sys"},
             "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"}}
    fmt, mapping = formats.mapping_from_dataset_info(entry, "chat")
    assert fmt == "sharegpt" and mapping.columns == {"conversations": "messages", "system": "sys"}
    rows = [{"messages": [{"role": "user", "content": f"Hi {i}"}, {"role": "assistant", "content": "Hello."}],
             "sys": "Be brief."} for i in range(12)]
    report, records = run(jsonl(rows), mapping=mapping, format=fmt, format_reason="given by dataset_info.json")
    assert report.ok, report.issues()
    assert records[0] == {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi 0"},
                                       {"role": "assistant", "content": "Hello."}]}
    assert report.format_reason == "given by dataset_info.json"


def test_llama_factory_ranking_and_kto_entries():
    fmt, mapping = formats.mapping_from_dataset_info(
        {"file_name": "dpo.json", "ranking": True, "columns": {"prompt": "q", "chosen": "good", "rejected": "bad"}},
        "dpo")
    assert fmt == "preference"
    rows = [{"q": f"Warranty? ({i})", "good": "2 years.", "bad": "No idea."} for i in range(12)]
    report, records = run(jsonl(rows), mapping=mapping, format=fmt)
    assert report.ok and records[0] == numbered(PAIR, 0)
    fmt, mapping = formats.mapping_from_dataset_info(
        {"file_name": "kto.json", "formatting": "sharegpt", "columns": {"messages": "messages", "kto_tag": "ok"},
         "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"}},
        "kto")
    assert fmt == "kto"
    rows = [{"messages": [{"role": "user", "content": f"Q{i}"}, {"role": "assistant", "content": "A"}], "ok": True}
            for i in range(12)]
    report, records = run(jsonl(rows), mapping=mapping, format=fmt)
    assert report.ok, report.issues()
    assert records[0] == {"prompt": [{"role": "user", "content": "Q0"}],
                          "completion": [{"role": "assistant", "content": "A"}], "label": True}


# ---------------------------------------------------------------------------------------------------------------
# Mixed files, skip_invalid


def test_a_mixed_file_says_which_rows_are_which():
    rows = [chat_record(i) for i in range(12)]
    rows[4] = {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}
    rows[7] = {"instruction": "q", "output": "a"}
    report, stored = run(jsonl(rows))
    assert issues(report) == [(5, "mixed_formats"), (8, "mixed_formats"), (None, "mixed_formats")]
    assert report.errors[0].message == ('this row is sharegpt (it has "conversations"), but the file is openai '
                                        '(detected from line 1: it has "messages")')
    summary = report.errors[-1].message
    assert "openai" in summary and "sharegpt: 1 row(s) (lines 5)" in summary and "alpaca: 1 row(s) (lines 8)" in summary
    assert report.formats_seen == {"openai": 10, "sharegpt": 1, "alpaca": 1}
    assert not report.usable


def test_skip_invalid_sinks_every_valid_row_and_keeps_the_report():
    rows = [chat_record(i) for i in range(14)]
    rows[2] = {"messages": [{"role": "user", "content": "only a question"}]}
    rows[9]["images"] = ["x.png"]
    report, stored = run(jsonl(rows), skip_invalid=True)
    assert issues(report) == [(3, "example_missing_assistant_message"), (10, "unsupported_modality")]
    assert report.usable and report.skipped == 2 and len(stored) == 12
    assert stored[2] == chat_record(3)
    report, stored = run(jsonl(rows))
    assert not report.usable and stored[:2] == [chat_record(0), chat_record(1)] and len(stored) == 2


def test_csv_with_mapped_columns_and_csv_kto_labels():
    content = b"Question,Answer\n" + b"".join(f"Q{i},A{i}\n".encode() for i in range(12))
    mapping = formats.ColumnMapping(columns={"instruction": "Question", "output": "Answer"})
    report, records = run(content, filename="qa.csv", mapping=mapping)
    assert report.ok, report.issues()
    assert records[0] == {"messages": [{"role": "user", "content": "Q0"}, {"role": "assistant", "content": "A0"}]}
    content = b"prompt,completion,label\n" + b"".join(f"Q{i},A{i},{'true' if i % 2 else 'false'}\n".encode()
                                                      for i in range(12))
    report, records = run(content, filename="kto.csv")
    assert report.format == "kto" and report.ok
    assert records[0] == {"prompt": [{"role": "user", "content": "Q0"}],
                          "completion": [{"role": "assistant", "content": "A0"}], "label": False}
    report, stored = run(content, filename="kto.csv", format="completion")
    assert report.counts["preference_data"] == 12 and stored == []


def test_conversational_prompt_completion_is_chat_with_the_loss_on_the_completion():
    rows = [{"prompt": [{"role": "user", "content": f"Hi {i}"}, {"role": "assistant", "content": "Hello."},
                        {"role": "user", "content": "Warranty?"}],
             "completion": [{"role": "assistant", "content": "2 years."}]} for i in range(12)]
    report, records = run(jsonl(rows))
    assert report.format == "openai" and "conversational" in report.format_reason and report.ok
    assert records[0] == {"messages": [{"role": "user", "content": "Hi 0"},
                                       {"role": "assistant", "content": "Hello.", "weight": 0},
                                       {"role": "user", "content": "Warranty?"},
                                       {"role": "assistant", "content": "2 years."}]}


def test_alpaca_rows_with_a_kto_label_and_a_txt_file_holding_json_lines():
    rows = [{"instruction": f"Q{i}", "output": "A", "label": i % 3 == 0} for i in range(12)]
    report, records = run(jsonl(rows))
    assert report.format == "kto" and records[0]["label"] is True and records[1]["completion"][0]["content"] == "A"
    report, records = run(jsonl([chat_record(i) for i in range(12)]), filename="data.txt")
    assert report.container == "jsonl" and report.format == "openai" and report.ok


def test_empty_tool_calls_lists_are_no_calls():
    rows = [chat_record(i) for i in range(12)]
    rows[0]["messages"][2]["tool_calls"] = []
    report, records = run(jsonl(rows))
    assert report.ok and records[0] == chat_record(0)


def test_a_given_format_keeps_the_row_errors_and_says_which_rows_are_another_format():
    rows = [chat_record(i) for i in range(12)]
    rows[3] = {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}
    report, _ = run(jsonl(rows), format="openai")
    assert issues(report) == [(4, "missing_messages_list"), (None, "mixed_formats")]
    assert report.errors[-1].message == "rows of another format than openai (given): sharegpt: 1 row(s) (lines 4)"
