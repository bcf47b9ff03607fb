"""Property: whatever bytes or JSON it is fed, the validator returns a report and never raises."""

from __future__ import annotations

import io
import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from datasets_app import formats, validation
from datasets_app.validation import Limits, validate

SMALL = Limits(max_bytes=20_000, max_line_bytes=2_000, max_depth=8, min_examples=3)
FORMATS = st.sampled_from([None, *formats.FORMATS])
FILENAMES = st.sampled_from([None, "data.jsonl", "data.json", "data.csv", "data.tsv", "../../etc/passwd"])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(
        st.sampled_from(["messages", "role", "content", "conversations", "from", "value", "instruction", "input",
                         "output", "history", "system", "text", "label", "weight", "x"]) | st.text(max_size=5),
        children, max_size=5),
    max_leaves=25,
)
# Records shaped like each format, so that the deeper checks are exercised, not only the JSON parser.
roles = st.sampled_from(["system", "user", "assistant", "tool", "human", "gpt", None, 3])
chat_like = st.fixed_dictionaries({"messages": st.lists(st.fixed_dictionaries(
    {"role": roles, "content": st.one_of(st.text(max_size=10), st.none(), st.integers())},
    optional={"weight": st.sampled_from([0, 1, 2, True, "1"]), "name": st.text(max_size=3)}), max_size=4)})
sharegpt_like = st.fixed_dictionaries({"conversations": st.lists(st.fixed_dictionaries(
    {"from": roles, "value": st.one_of(st.text(max_size=10), st.none())}), max_size=4)})
alpaca_like = st.fixed_dictionaries({"instruction": st.one_of(st.text(max_size=10), st.integers())},
                                    optional={"input": st.text(max_size=5), "output": st.text(max_size=10),
                                              "history": json_values, "system": json_values})
record = st.one_of(json_values, chat_like, sharegpt_like, alpaca_like)


def check(report) -> None:
    assert isinstance(report, validation.Report)
    assert "internal_error" not in report.counts, report.errors
    assert report.error_count == sum(n for c, n in report.counts.items()
                                     if validation.CODES[c][0] == validation.ERROR)
    json.dumps(report.to_dict())
    for issue in report.issues():
        assert issue.line is None or issue.line >= 1


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=3000), fmt=FORMATS, filename=FILENAMES)
def test_arbitrary_bytes_only_ever_produce_a_report(data, fmt, filename):
    check(validate(io.BytesIO(data), format=fmt, filename=filename, limits=SMALL, sink=lambda line: None))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.lists(record, max_size=8), fmt=FORMATS, as_array=st.booleans(), indent=st.sampled_from([None, 1]))
def test_arbitrary_json_only_ever_produces_a_report(rows, fmt, as_array, indent):
    if as_array:
        content = json.dumps(rows, indent=indent).encode()
    else:
        content = "".join(json.dumps(r) + "\n" for r in rows).encode()
    sunk: list[bytes] = []
    report = validate(io.BytesIO(content), format=fmt, limits=SMALL, sink=sunk.append)
    check(report)
    # Whatever was accepted is valid internal form.
    if report.ok:
        assert len(sunk) == report.valid_examples
        for line in sunk:
            obj = json.loads(line)
            assert set(obj) <= {"messages", "tools", "text", "label", "prompt", "completion", "chosen", "rejected"}


@settings(max_examples=100, deadline=None)
@given(prefix=st.lists(record, min_size=1, max_size=4), junk=st.binary(min_size=1, max_size=200),
       cut=st.integers(min_value=0, max_value=400))
def test_truncated_and_corrupted_json_only_ever_produces_a_report(prefix, junk, cut):
    content = json.dumps(prefix).encode()
    for variant in (content[:cut], content[:cut] + junk, junk + content):
        check(validate(io.BytesIO(variant), limits=SMALL))
