"""Streaming validation of an uploaded dataset file: every row checked, every problem reported.

Plain module (no Django): ``validate(fileobj, ...)`` reads a binary stream once, row by row, in
constant memory (exact duplicate detection spills to temporary files past 64k rows), and returns a
``Report``.
It never raises for anything in the data, only for failures of the caller's ``sink``.

Containers: JSON Lines, a JSON array (``[...]``, parsed element by element with
``JSONDecoder.raw_decode`` over a bounded text buffer), CSV/TSV with a header row, a plain ``.txt`` /
``.md`` corpus (cut into rows of about ``chunk_tokens`` tokens on paragraph boundaries), and through
pyarrow, in record batches, Parquet, Arrow IPC and a ``datasets.save_to_disk`` folder (their "line" is the
1-based row number). UTF-8 (a BOM is skipped) and UTF-16/32 with a BOM (decoded on the fly). Every issue
carries the 1-based line number where its example starts, a stable code and a readable message::

    line 17: message_missing_key: message 2 has no "content"

Each valid example is handed to ``sink`` as one line of the normalised internal form (UTF-8 JSON
plus ``\\n``) while the report has no errors, or always with ``skip_invalid`` (the caller then stores
the valid rows and keeps the report of the rest).
"""

from __future__ import annotations

import codecs
import csv
import json
import math
import os
import re
import tempfile
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from datasets_app import formats

ERROR = "error"
WARNING = "warning"

DEFAULT_MAX_BYTES = 512 * 1024 * 1024
DEFAULT_MAX_LINE_BYTES = 1024 * 1024
DEFAULT_MAX_DEPTH = 32
MIN_EXAMPLES = 10
MAX_STORED_ISSUES = 1000
# A label with fewer than 1/IMBALANCE_RATIO of the largest label's examples is worth a warning.
IMBALANCE_RATIO = 10
READ_CHUNK = 1 << 16
HISTOGRAM_BINS = 30
BOM = b"\xef\xbb\xbf"
NUL = b"\x00"
# Longest first: the UTF-32 LE mark starts with the UTF-16 LE one.
UNICODE_BOMS = ((b"\xff\xfe\x00\x00", "utf-32-le", "UTF-32"), (b"\x00\x00\xfe\xff", "utf-32-be", "UTF-32"),
                (b"\xff\xfe", "utf-16-le", "UTF-16"), (b"\xfe\xff", "utf-16-be", "UTF-16"))
PARQUET_MAGIC = b"PAR1"
ARROW_FILE_MAGIC = b"ARROW1"
ARROW_STREAM_MAGIC = b"\xff\xff\xff\xff"
TEXT_CORPUS_EXTENSIONS = (".txt", ".md", ".markdown", ".text", ".rst")
DATA_EXTENSIONS = (".jsonl", ".json", ".ndjson", ".csv", ".tsv", ".parquet", ".arrow")
DEFAULT_CHUNK_TOKENS = 1024
# A CSV header needs one of these (after the column mapping) to be data we know.
CSV_KEYS = frozenset({"text", "instruction", "output", "response", "prompt", "completion", "chosen", "rejected",
                      "label"})
ARROW_BATCH_ROWS = 1024
# Codes that make a file unusable even with skip_invalid (the rows cannot be told apart or read).
FATAL_CODES = frozenset({"unknown_format", "compressed_file", "file_too_large", "internal_error", "too_few_examples",
                         "invalid_encoding_file", "unreadable_file"})
# Archives and compressed files, by their magic bytes: refused, never unpacked (no decompression bombs).
COMPRESSED_MAGIC = {
    b"PK\x03\x04": "zip", b"PK\x05\x06": "zip", b"PK\x07\x08": "zip", b"\x1f\x8b": "gzip",
    b"\xfd7zXZ\x00": "xz", b"\x28\xb5\x2f\xfd": "zstd", b"7z\xbc\xaf\x27\x1c": "7z",
    b"Rar!\x1a\x07": "rar", b"\x04\x22\x4d\x18": "lz4",
}

# Every code the validator can produce, with its severity, for documentation and the admin's legend.
CODES: dict[str, tuple[str, str]] = {
    "data_type": (ERROR, "an example or a field has the wrong JSON type"),
    "missing_messages_list": (ERROR, "no non-empty messages / conversations list"),
    "message_missing_key": (ERROR, "a message lacks role/content (from/value)"),
    "message_unrecognized_key": (ERROR, "a message has a key the format does not define"),
    "unrecognized_role": (ERROR, "a role other than system, user, assistant"),
    "missing_content": (ERROR, "a message's content is empty or not text"),
    "example_missing_assistant_message": (ERROR, "an example without an assistant turn"),
    "invalid_weight": (ERROR, "weight other than 0/1, or not on an assistant message"),
    "missing_field": (ERROR, "a required field (instruction, output, text) is absent"),
    "empty_field": (ERROR, "a required field is empty"),
    "label_missing": (ERROR, "a classification example without a label"),
    "label_unseen": (ERROR, "a label outside the given label set"),
    "invalid_json": (ERROR, "the line (or array element) is not valid JSON"),
    "invalid_csv": (ERROR, "a CSV row does not match the header"),
    "invalid_encoding": (ERROR, "not UTF-8, or contains NUL bytes / unpaired surrogates"),
    "compressed_file": (ERROR, "an archive or compressed file (zip, gzip, ...): upload the plain text file"),
    "unknown_format": (ERROR, "the format cannot be detected from the first example"),
    "line_too_long": (ERROR, "a line (or array element) is over the maximum length"),
    "nesting_too_deep": (ERROR, "JSON nested deeper than the maximum depth"),
    "file_too_large": (ERROR, "the file is over the maximum upload size"),
    "too_few_examples": (ERROR, f"fewer than {MIN_EXAMPLES} valid examples"),
    "internal_error": (ERROR, "the validator itself failed (a bug; please report it)"),
    "invalid_encoding_file": (ERROR, "the whole file is in an encoding we cannot read (UTF-16/32 without a BOM)"),
    "unreadable_file": (ERROR, "a Parquet / Arrow file or a save_to_disk folder that pyarrow cannot read"),
    "unsupported_modality": (ERROR, "images, videos or audio (not trained yet): refused, never dropped"),
    "preference_data": (ERROR, "preference or KTO rows in an SFT format (use format preference or kto)"),
    "mixed_formats": (ERROR, "a row of another format than the file's"),
    "invalid_tools": (ERROR, "the declared tools are not a list of named functions"),
    "invalid_tool_call": (ERROR, "a tool call without a name / with a bad id, or on a non-assistant message"),
    "undeclared_tool": (ERROR, "a tool call names a function the example does not declare"),
    "invalid_tool_arguments": (ERROR, "a tool call's arguments are not a JSON object"),
    "unanswered_tool_call": (ERROR, "a tool call without a tool message answering it"),
    "unexpected_tool_message": (ERROR, "a tool message that answers no pending call"),
    "invalid_prompt": (ERROR, "a preference / KTO prompt that is empty or does not end with a user turn"),
    "invalid_answer": (ERROR, "a chosen / rejected / completion that is not an assistant answer"),
    "identical_pair": (ERROR, "chosen and rejected are the same"),
    "duplicate": (WARNING, "the same example (after normalisation) appears earlier"),
    "too_long": (WARNING, "an example is longer than the base model's context"),
    "template_error": (WARNING, "the base model's chat template rejects the example"),
    "label_imbalance": (WARNING, "one label has far fewer examples than another"),
    "too_few_labels": (WARNING, "a classification set with fewer than two labels"),
}


@dataclass(frozen=True)
class Limits:
    """Hard limits; the Django side fills them from settings (MAX_UPLOAD_BYTES, DATASET_MAX_*)."""

    max_bytes: int = DEFAULT_MAX_BYTES
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES
    max_depth: int = DEFAULT_MAX_DEPTH
    min_examples: int = MIN_EXAMPLES
    max_stored_issues: int = MAX_STORED_ISSUES


@dataclass
class Issue:
    """One problem: ``line`` is 1-based (None for file-level issues)."""

    line: int | None
    code: str
    message: str
    severity: str = ERROR

    def __str__(self) -> str:
        return f"line {self.line}: {self.code}: {self.message}" if self.line else f"{self.code}: {self.message}"

    def to_dict(self) -> dict:
        return {"line": self.line, "code": self.code, "message": self.message}


@dataclass
class Report:
    """What validation found. ``counts`` are exact; ``errors``/``warnings`` keep the first N of each."""

    format: str | None = None
    format_detected: bool = False
    format_given: bool = False
    format_reason: str = ""
    container: str | None = None
    skip_invalid: bool = False
    mapping: dict = field(default_factory=dict)
    formats_seen: dict = field(default_factory=dict)
    examples: int = 0
    valid_examples: int = 0
    bytes_read: int = 0
    errors: list[Issue] = field(default_factory=list)
    warnings: list[Issue] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)
    error_count: int = 0
    warning_count: int = 0
    stopped_early: bool = False
    stats: dict = field(default_factory=dict)
    max_stored_issues: int = MAX_STORED_ISSUES

    @property
    def ok(self) -> bool:
        return self.error_count == 0

    @property
    def skipped(self) -> int:
        """Examples left out (only with skip_invalid; otherwise nothing is imported at all)."""
        return self.examples - self.valid_examples if self.skip_invalid else 0

    @property
    def usable(self) -> bool:
        """Whether the valid rows may be stored: no errors, or with skip_invalid no file-level error."""
        if self.ok:
            return True
        return self.skip_invalid and not self.stopped_early and self.valid_examples > 0 \
            and not any(self.counts.get(code) for code in FATAL_CODES)

    @property
    def truncated(self) -> bool:
        return len(self.errors) < self.error_count or len(self.warnings) < self.warning_count

    def add(self, line: int | None, code: str, message: str, severity: str = ERROR) -> None:
        self.counts[code] += 1
        if severity == ERROR:
            self.error_count += 1
            if len(self.errors) < self.max_stored_issues:
                self.errors.append(Issue(line, code, message, ERROR))
        else:
            self.warning_count += 1
            if len(self.warnings) < self.max_stored_issues:
                self.warnings.append(Issue(line, code, message, WARNING))

    def issues(self) -> list[Issue]:
        return sorted([*self.errors, *self.warnings], key=_issue_order)

    def summary(self) -> str:
        fmt = self.format or "unknown format"
        return (f"{fmt}, {self.valid_examples}/{self.examples} examples valid, "
                f"{self.error_count} error(s), {self.warning_count} warning(s)")

    def to_dict(self) -> dict:
        return {
            "format": self.format,
            "format_detected": self.format_detected,
            "format_given": self.format_given,
            "format_reason": self.format_reason,
            "container": self.container,
            **({"mapping": self.mapping} if self.mapping else {}),
            **({"formats_seen": self.formats_seen} if self.formats_seen else {}),
            "skip_invalid": self.skip_invalid,
            "skipped_examples": self.skipped,
            "examples": self.examples,
            "valid_examples": self.valid_examples,
            "bytes": self.bytes_read,
            "ok": self.ok,
            "error_count": self.error_count,
            "warning_count": self.warning_count,
            "counts": dict(sorted(self.counts.items())),
            "errors": [i.to_dict() for i in self.errors],
            "warnings": [i.to_dict() for i in self.warnings],
            "truncated": self.truncated,
            "stopped_early": self.stopped_early,
        }


def _issue_order(issue: Issue) -> tuple[bool, int]:
    return (issue.line is None, issue.line or 0)


class SinkError(Exception):
    """Wraps an exception raised by the caller's sink so that it is re-raised, not reported."""


class _Stop(Exception):
    """Internal: the rest of the input cannot be read (reported already)."""


# ---------------------------------------------------------------------------------------------------------------
# Statistics that need one pass over the normalised records (also used for stored versions and splits).


class LengthHistogram:
    """Exact distribution of integer lengths in memory bounded by the number of distinct lengths."""

    def __init__(self) -> None:
        self.counter: Counter[int] = Counter()

    def add(self, value: int) -> None:
        self.counter[value] += 1

    @property
    def count(self) -> int:
        return sum(self.counter.values())

    def percentile(self, q: float) -> int | None:
        """Nearest-rank percentile (q in 0..100)."""
        total = self.count
        if not total:
            return None
        rank = max(1, math.ceil(q / 100 * total))
        seen = 0
        for value in sorted(self.counter):
            seen += self.counter[value]
            if seen >= rank:
                return value
        return max(self.counter)

    def summary(self, *, limit: int | None = None, bins: int = HISTOGRAM_BINS) -> dict:
        total = self.count
        if not total:
            return {"count": 0}
        lo, hi = min(self.counter), max(self.counter)
        width = max(1, math.ceil((hi - lo + 1) / bins))
        edges = [lo + i * width for i in range(bins + 1)]
        counts = [0] * bins
        for value, n in self.counter.items():
            counts[min(bins - 1, (value - lo) // width)] += n
        while counts and counts[-1] == 0:  # trailing empty bins carry no information
            counts.pop()
            edges.pop()
        out = {
            "count": total,
            "min": lo,
            "median": self.percentile(50),
            "p95": self.percentile(95),
            "max": hi,
            "mean": round(sum(v * n for v, n in self.counter.items()) / total, 1),
            "total": sum(v * n for v, n in self.counter.items()),
            "histogram": {"edges": edges, "counts": counts},
        }
        if limit:
            out["limit"] = limit
            out["over_limit"] = sum(n for v, n in self.counter.items() if v > limit)
        return out


class StatsAccumulator:
    """Rows, turns, characters and labels of normalised records."""

    def __init__(self) -> None:
        self.rows = 0
        self.messages = LengthHistogram()
        self.assistant_turns = 0
        self.chars = LengthHistogram()
        self.labels: Counter[str] = Counter()
        self.tool_calls = 0
        self.kind: str | None = None

    def add(self, record: dict) -> None:
        self.rows += 1
        messages = record.get("messages")
        if messages is not None:
            self.kind = formats.KIND_CHAT
            self.messages.add(len(messages))
            chars = 0
            for m in messages:
                chars += len(m["content"])
                if m["role"] == "assistant":
                    self.assistant_turns += 1
                    if "tool_calls" in m:
                        self.tool_calls += len(m["tool_calls"])
            self.chars.add(chars)
            return
        if "chosen" in record:
            self.kind = formats.KIND_PREFERENCE
            self.chars.add(sum(len(m["content"]) for key in ("prompt", "chosen", "rejected") for m in record[key]))
            return
        if isinstance(record.get("label"), bool):
            self.kind = formats.KIND_KTO
            self.labels["desirable" if record["label"] else "undesirable"] += 1
            self.chars.add(sum(len(m["content"]) for key in ("prompt", "completion") for m in record[key]))
            return
        if "completion" in record:
            self.kind = formats.KIND_TEXT
            self.chars.add(len(record["prompt"]) + len(record["completion"]))
            return
        self.chars.add(len(record.get("text", "")))
        if "label" in record:
            self.kind = formats.KIND_CLASSIFICATION
            self.labels[record["label"]] += 1
        else:
            self.kind = self.kind or formats.KIND_TEXT

    def to_dict(self) -> dict:
        out: dict[str, Any] = {"rows": self.rows, "kind": self.kind}
        chars = self.chars.summary()
        out["characters"] = {k: v for k, v in chars.items() if k != "count"}
        if self.kind == formats.KIND_CHAT:
            turns = self.messages.summary(bins=10)
            out["turns"] = {"messages": turns.get("total", 0), "assistant": self.assistant_turns,
                            **{f"{k}_per_example": turns[k] for k in ("min", "median", "max", "mean") if k in turns}}
            if self.tool_calls:
                out["turns"]["tool_calls"] = self.tool_calls
        if self.kind in (formats.KIND_CLASSIFICATION, formats.KIND_KTO):
            out["labels"] = dict(sorted(self.labels.items(), key=lambda kv: (-kv[1], kv[0])))
        return out


# ---------------------------------------------------------------------------------------------------------------
# Byte source: bounded reads, byte counting for the size limit, lines without loading the file.


class _Source:
    def __init__(self, fileobj: IO | None, max_bytes: int) -> None:
        self.f = fileobj
        self.max_bytes = max_bytes
        self.buf = b""
        self.pos = 0
        self.total = 0
        self.eof = fileobj is None
        self.too_large = False
        self.decoder: Any = None
        self.encoding_label = ""
        self.decode_error = ""

    def transcode(self, codec: str, label: str) -> None:
        """From here on, decode the bytes from ``codec`` and hand them on as UTF-8 (UTF-16/32 with a BOM)."""
        self.decoder = codecs.getincrementaldecoder(codec)("strict")
        self.encoding_label = label
        pending = self.buf[self.pos:]
        self.buf, self.pos = b"", 0
        self.buf = self._decode(pending, final=False)

    def _decode(self, raw: bytes, *, final: bool) -> bytes:
        try:
            return self.decoder.decode(raw, final=final).encode("utf-8", "surrogatepass")
        except UnicodeDecodeError as exc:
            self.decode_error = f"the file starts with a {self.encoding_label} byte-order mark but is not valid " \
                                f"{self.encoding_label} ({exc.reason}) near byte {self.total - len(raw) + exc.start + 1}"
            self.eof = True
            return b""

    def _read(self) -> bytes:
        data = self.f.read(READ_CHUNK)
        if isinstance(data, str):  # a text-mode file handed in by mistake: take its characters as UTF-8
            data = data.encode("utf-8", "surrogatepass")
        if not data:
            self.eof = True
            return self._decode(b"", final=True) if self.decoder is not None and not self.decode_error else b""
        self.total += len(data)
        if self.total > self.max_bytes:
            self.too_large = True
            self.eof = True
            return b""
        if self.decoder is not None:
            return self._decode(data, final=False) if not self.decode_error else b""
        return data

    def peek(self, n: int) -> bytes:
        while len(self.buf) - self.pos < n and not self.eof:
            data = self._read()
            self.buf = self.buf[self.pos:] + data
            self.pos = 0
        return self.buf[self.pos:self.pos + n]

    def skip(self, n: int) -> None:
        self.peek(n)
        self.pos += n

    def read_chunk(self) -> bytes | None:
        """The next block of bytes (buffered ones first); None at the end."""
        if self.pos < len(self.buf):
            data = self.buf[self.pos:]
            self.buf, self.pos = b"", 0
            return data
        data = self._read() if not self.eof else b""
        return data or None

    def readline(self, limit: int) -> tuple[bytes | None, bool]:
        """Next line without its ``\\n`` (and ``\\r``); ``(None, False)`` at the end.

        A line longer than ``limit`` bytes is skipped through to its newline and returned as
        ``(b"", True)``, so an attacker's 1 GB line costs no memory.
        """
        while True:
            i = self.buf.find(b"\n", self.pos)
            if i >= 0:
                if i - self.pos > limit:
                    self.pos = i + 1
                    return b"", True
                line = self.buf[self.pos:i]
                self.pos = i + 1
                return (line[:-1] if line.endswith(b"\r") else line), False
            pending = len(self.buf) - self.pos
            if pending > limit:
                self._discard_to_newline()
                return b"", True
            if self.eof:
                if pending == 0:
                    return None, False
                line = self.buf[self.pos:]
                self.buf, self.pos = b"", 0
                return (line[:-1] if line.endswith(b"\r") else line), False
            data = self._read()
            self.buf = self.buf[self.pos:] + data
            self.pos = 0

    def _discard_to_newline(self) -> None:
        self.buf, self.pos = b"", 0
        while not self.eof:
            data = self._read()
            i = data.find(b"\n")
            if i >= 0:
                self.buf = data[i + 1:]
                return


# ---------------------------------------------------------------------------------------------------------------


class DuplicateFinder:
    """Exact duplicates among normalised examples, in bounded memory.

    Each example contributes a 64-bit hash and its line number (12 bytes). Up to ``spill_rows`` of
    them stay in memory; past that they are appended to ``buckets`` temporary files partitioned by the
    hash's top bits, so equal hashes always share a file, and each file is checked on its own at the
    end. Peak memory is then about ``12 * max(spill_rows, rows / buckets)`` bytes, not 12 a row.
    """

    RECORD = None  # numpy dtype, set on first use (numpy is imported lazily)

    def __init__(self, *, spill_rows: int = 1 << 16, buckets: int = 128) -> None:
        from array import array

        self.spill_rows = spill_rows
        self.buckets = buckets
        self.digests = array("q")
        self.lines = array("I")
        self._dir: Any = None

    def add(self, digest: int, line: int) -> None:
        self.digests.append(digest)
        self.lines.append(line)
        if len(self.digests) >= self.spill_rows:
            self._spill()

    @staticmethod
    def _dtype() -> Any:
        import numpy as np

        if DuplicateFinder.RECORD is None:
            DuplicateFinder.RECORD = np.dtype([("digest", "<i8"), ("line", "<u4")])
        return DuplicateFinder.RECORD

    def _records(self) -> Any:
        import numpy as np

        records = np.empty(len(self.digests), dtype=self._dtype())
        records["digest"] = np.frombuffer(self.digests, dtype=np.int64)
        records["line"] = np.frombuffer(self.lines, dtype=np.uint32)
        return records

    def _spill(self) -> None:
        import tempfile
        from array import array

        import numpy as np

        if not self.digests:
            return
        if self._dir is None:
            self._dir = tempfile.TemporaryDirectory(prefix="dataset-dups-")
        records = self._records()
        shift = np.uint64(64 - (self.buckets - 1).bit_length())
        bucket = (records["digest"].view(np.uint64) >> shift).astype(np.int64)
        order = np.argsort(bucket, kind="stable")  # stable: each bucket keeps the examples' order
        records, bucket = records[order], bucket[order]
        bounds = np.searchsorted(bucket, np.arange(self.buckets + 1))
        for i in range(self.buckets):
            if bounds[i] < bounds[i + 1]:
                # Opened per spill (not kept open) so concurrent uploads do not pile up file handles.
                with open(f"{self._dir.name}/{i}", "ab") as fh:
                    fh.write(records[bounds[i]:bounds[i + 1]].tobytes())
        self.digests, self.lines = array("q"), array("I")

    @staticmethod
    def _pairs_in(records: Any) -> list[tuple[int, int]]:
        """(line of a repeat, line of the first occurrence) within records in example order."""
        import numpy as np

        if len(records) < 2:
            return []
        digests = records["digest"]
        order = np.argsort(digests, kind="stable")
        ordered = digests[order]
        repeat = np.flatnonzero(ordered[1:] == ordered[:-1]) + 1
        if not len(repeat):
            return []
        run_start = np.where(np.concatenate(([True], ordered[1:] != ordered[:-1])), np.arange(len(ordered)), 0)
        run_start = np.maximum.accumulate(run_start)
        lines = records["line"]
        return [(int(lines[order[i]]), int(lines[order[run_start[i]]])) for i in repeat]

    def pairs(self) -> Iterator[tuple[int, int]]:
        import numpy as np

        if self._dir is None:
            yield from self._pairs_in(self._records())
            return
        self._spill()
        for i in range(self.buckets):
            path = f"{self._dir.name}/{i}"
            if os.path.exists(path):
                yield from self._pairs_in(np.fromfile(path, dtype=self._dtype()))

    def close(self) -> None:
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


_DECODER = json.JSONDecoder(parse_constant=_reject_constant)
_WS = re.compile(r"[ \t\n\r]*")


def _too_deep(obj: Any, max_depth: int) -> bool:
    """True when containers nest deeper than ``max_depth`` (iterative: no recursion on hostile input)."""
    stack = [(obj, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > max_depth:
            return True
        children = value.values() if isinstance(value, dict) else value
        for child in children:
            if isinstance(child, (dict, list)):
                stack.append((child, depth + 1))
    return False


def _dumps(record: dict) -> bytes:
    return json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


_APPROX_TOKEN_RE = re.compile(r"[\u3040-\u30ff\u3400-\u9fff\uf900-\ufaff\uac00-\ud7af]|[^\W\u3040-\u30ff\u3400-\u9fff]+"
                              r"|[^\w\s]")
_SENTENCE_END_RE = re.compile(r"(?<=[.!?。！？；;])\s*")


def approximate_tokens(text: str) -> int:
    """Tokens of ``text`` without a tokenizer: words, CJK characters and punctuation marks (a tokenizer's count
    is usually within a factor of 1.5 of it)."""
    return len(_APPROX_TOKEN_RE.findall(text))


def _pieces(line: str, count: Callable[[str], int], limit: int) -> Iterator[tuple[str, int]]:
    """A line as pieces of at most ``limit`` tokens: whole, else by sentences, else cut by characters."""
    tokens = count(line)
    if tokens <= limit:
        yield line, tokens
        return
    sentences = [s for s in _SENTENCE_END_RE.split(line) if s]
    for sentence in sentences if len(sentences) > 1 else [line]:
        n = count(sentence)
        if n <= limit:
            yield sentence, n
            continue
        words = sentence.split(" ")
        if len(words) > 1:  # by words (their counts add up closely enough for a cut)
            part: list[str] = []
            part_tokens = 0
            for word in words:
                tokens = count(word)
                if part and part_tokens + tokens > limit:
                    yield " ".join(part), part_tokens
                    part, part_tokens = [], 0
                part.append(word)
                part_tokens += tokens
            if part:
                yield " ".join(part), part_tokens
            continue
        step = max(1, len(sentence) * limit // (n + 1))  # no spaces (e.g. Chinese): by characters
        for k in range(0, len(sentence), step):
            piece = sentence[k:k + step]
            yield piece, count(piece)


def _seekable(f: Any) -> bool:
    try:
        return bool(f is not None and f.seekable())
    except (AttributeError, OSError, ValueError):
        return False


def _size(f: Any) -> int:
    here = f.tell()
    f.seek(0, os.SEEK_END)
    size = f.tell()
    f.seek(here)
    return size - here


def _arrow_batches(source: Any) -> Iterator[Any]:
    """Record batches of an Arrow IPC stream (what save_to_disk writes) or IPC file."""
    import pyarrow as pa  # see _Validator._read_parquet
    import pyarrow.ipc  # noqa: F401  (pa.ipc)

    try:
        reader = pa.ipc.open_stream(source)
    except pa.ArrowInvalid:
        source.seek(0)
        reader = pa.ipc.open_file(source)
        for i in range(reader.num_record_batches):
            yield reader.get_batch(i)
        return
    yield from reader


def _drop_nulls(value: Any) -> Any:
    """Arrow gives every struct all the fields of its column's type (absent ones as null): drop those, so that a
    message reads as it was written."""
    if isinstance(value, dict):
        return {k: _drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_nulls(v) for v in value]
    return value


class _Validator:
    def __init__(self, *, fmt: str | None, filename: str | None, limits: Limits,
                 labels: Collection[str] | None, token_counter: Callable[[dict], int] | None,
                 max_tokens: int | None, sink: Callable[[bytes], None] | None,
                 mapping: formats.ColumnMapping | None = None, skip_invalid: bool = False,
                 format_reason: str = "", text_counter: Callable[[str], int] | None = None,
                 chunk_tokens: int = DEFAULT_CHUNK_TOKENS) -> None:
        self.report = Report(format=fmt, max_stored_issues=limits.max_stored_issues, format_given=fmt is not None,
                             format_reason=(format_reason or "given") if fmt else "", skip_invalid=skip_invalid,
                             mapping=mapping.model_dump(exclude_none=True) if mapping else {})
        self.fmt = fmt
        self.mapping = mapping if mapping else None
        self.skip_invalid = skip_invalid
        self.text_counter = text_counter or approximate_tokens
        self.chunk_tokens = max(1, int(chunk_tokens))
        self.mixed: dict[str, list[int]] = {}
        self.mixed_counts: Counter[str] = Counter()
        self.normalise = formats.NORMALISERS[fmt] if fmt else None
        self.filename = (filename or "").lower()
        self.limits = limits
        self.labels = set(labels) if labels is not None else None
        self.token_counter = token_counter
        self.max_tokens = max_tokens
        self.sink = sink
        self.format_failed = False
        self.stats = StatsAccumulator()
        self.tokens = LengthHistogram()
        self.duplicates = DuplicateFinder()

    # -- entry -------------------------------------------------------------------------------------------------

    def run(self, fileobj: IO | os.PathLike) -> Report:
        if isinstance(fileobj, (str, os.PathLike)):  # a folder written by datasets' save_to_disk
            src = _Source(None, self.limits.max_bytes)
        else:
            src = _Source(fileobj, self.limits.max_bytes)
        try:
            if isinstance(fileobj, (str, os.PathLike)):
                self._read_saved_dataset(Path(fileobj), src)
            else:
                self._dispatch(src)
        except _Stop:
            self.report.stopped_early = True
        except SinkError:
            raise
        except Exception as exc:  # a bug must surface as a report entry, never as a crash of the upload
            self.report.add(None, "internal_error", f"{type(exc).__name__}: {exc}")
        self.report.bytes_read = src.total
        if src.decode_error:
            self.report.stopped_early = True
            self.report.add(None, "invalid_encoding_file", src.decode_error)
        if src.too_large:
            self.report.stopped_early = True
            self.report.add(None, "file_too_large",
                            f"the file is larger than the maximum of {self.limits.max_bytes:,} bytes")
        try:
            self._finish()
        except Exception as exc:
            self.report.add(None, "internal_error", f"{type(exc).__name__}: {exc}")
        finally:
            self.duplicates.close()
        return self.report

    def _dispatch(self, src: _Source) -> None:
        start = src.f.tell() if _seekable(src.f) else None
        magic = src.peek(10)
        kind = next((k for m, k in COMPRESSED_MAGIC.items() if magic.startswith(m)), None)
        if kind is None and re.match(rb"BZh[1-9]1AY&SY", magic):
            kind = "bzip2"
        if kind is not None:
            self.report.container = "unknown"
            self.report.add(1, "compressed_file", f"the file is a {kind} archive or compressed file; upload the "
                            "uncompressed JSONL, JSON or CSV file instead")
            raise _Stop
        name = self.filename
        head = src.peek(8)
        if head.startswith(PARQUET_MAGIC) or name.endswith(".parquet"):
            self._read_parquet(src, start)
            return
        if head.startswith((ARROW_FILE_MAGIC, ARROW_STREAM_MAGIC)) or name.endswith(".arrow"):
            self._read_arrow_file(src, start)
            return
        encoding = next(((mark, codec, label) for mark, codec, label in UNICODE_BOMS if head.startswith(mark)), None)
        if encoding is not None:
            src.skip(len(encoding[0]))
            src.transcode(encoding[1], encoding[2])
        elif head.startswith(BOM):
            src.skip(len(BOM))
        else:
            self._refuse_bomless_unicode(src)
        first = self._first_significant_byte(src)
        # A .txt / .md file is a corpus unless it holds JSON (and no format says otherwise); --format text makes
        # any text file that is not a data file a corpus.
        looks_json = first in (b"{", b"[")
        corpus = (name.endswith(TEXT_CORPUS_EXTENSIONS) and self.fmt in (None, formats.TEXT)
                  and (self.fmt == formats.TEXT or not looks_json)) \
            or (self.fmt == formats.TEXT and not name.endswith(DATA_EXTENSIONS) and not looks_json)
        if corpus:
            self._read_text(src)
        elif name.endswith((".csv", ".tsv")):
            self._read_csv(src, "\t" if name.endswith(".tsv") else ",")
        elif first == b"[":
            self._read_array(src)
        elif first in (b"{", b"") or name.endswith((".jsonl", ".json", ".ndjson")):
            self._read_jsonl(src)
        else:
            self._read_csv(src, ",")

    @staticmethod
    def _first_significant_byte(src: _Source) -> bytes:
        n = 256
        while True:
            head = src.peek(n)
            stripped = head.lstrip(b" \t\r\n")
            if stripped:
                return stripped[:1]
            if len(head) < n:
                return b""
            n *= 4
            if n > 1 << 20:  # a megabyte of whitespace: let the line reader deal with it
                return b""

    def _refuse_bomless_unicode(self, src: _Source) -> None:
        """UTF-16/32 without a byte-order mark: one clear error instead of one "NUL byte" per line."""
        head = src.peek(4096)
        if len(head) < 4 or head.count(NUL) < len(head) // 4:
            return
        even, odd = head[0::2].count(NUL), head[1::2].count(NUL)
        quads = [head[i::4].count(NUL) for i in range(4)]
        n = len(head) // 4 or 1
        if quads[1] > 0.9 * n and quads[2] > 0.9 * n:
            guess = "UTF-32 (little-endian)" if quads[3] > 0.9 * n else ""
            guess = guess or ("UTF-32 (big-endian)" if quads[0] > 0.9 * n else "")
        else:
            guess = ""
        if not guess and max(even, odd) > 0.4 * len(head) and min(even, odd) < 0.1 * len(head):
            guess = "UTF-16 (little-endian)" if odd > even else "UTF-16 (big-endian)"
        if not guess:
            return
        self.report.container = "unknown"
        self.report.add(1, "invalid_encoding_file",
                        f"the file looks like {guess} text without a byte-order mark; save it as UTF-8 (or with a "
                        "BOM, which we decode)")
        raise _Stop

    # -- plain text corpus ---------------------------------------------------------------------------------------

    def _read_text(self, src: _Source) -> None:
        """A .txt / .md corpus: paragraphs (blank-line separated) packed into rows of at most ``chunk_tokens``
        tokens; a paragraph longer than that is cut at line, then sentence, then character boundaries."""
        report = self.report
        report.container = "text"
        if self.normalise is None:
            report.format, report.format_detected = formats.TEXT, True
            report.format_reason = f"detected from the file name ({self.filename or 'text'}): a plain text corpus"
            self.normalise = formats.NORMALISERS[formats.TEXT]
        elif not report.format_reason.endswith("corpus"):
            report.format_reason += ": a plain text corpus"
        report.format_reason += f", cut into rows of up to {self.chunk_tokens} tokens on paragraph boundaries"
        limit, count, max_line = self.chunk_tokens, self.text_counter, self.limits.max_line_bytes
        chunk: list[str] = []
        chunk_tokens = 0
        chunk_line = 0
        paragraph: list[str] = []
        paragraph_tokens = 0
        paragraph_line = 0

        def emit() -> None:
            nonlocal chunk, chunk_tokens
            if chunk:
                report.examples += 1
                self._example(chunk_line, {"text": "\n\n".join(chunk)})
            chunk, chunk_tokens = [], 0

        def end_paragraph() -> None:
            nonlocal paragraph, paragraph_tokens, chunk_tokens, chunk_line
            if not paragraph:
                return
            if chunk and chunk_tokens + paragraph_tokens > limit:
                emit()
            if not chunk:
                chunk_line = paragraph_line
            chunk.append("\n".join(paragraph))
            chunk_tokens += paragraph_tokens
            paragraph, paragraph_tokens = [], 0

        line_no = 0
        while True:
            raw, overflow = src.readline(max_line)
            if raw is None:
                break
            line_no += 1
            if overflow:
                report.add(line_no, "line_too_long", f"the line is longer than the maximum of {max_line:,} bytes")
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                report.add(line_no, "invalid_encoding", f"invalid UTF-8 byte 0x{raw[exc.start]:02x} at byte "
                                                        f"{exc.start + 1}; the file must be UTF-8")
                raise _Stop from None
            if NUL in raw:
                report.add(line_no, "invalid_encoding", "NUL byte in a text file (a binary file?)")
                raise _Stop
            if not text.strip():
                end_paragraph()
                continue
            for piece, tokens in _pieces(text.rstrip(), count, limit):
                if paragraph and paragraph_tokens + tokens > limit:
                    # The paragraph alone is over the limit: what it has so far becomes its own row.
                    end_paragraph()
                    emit()
                if not paragraph:
                    paragraph_line = line_no
                paragraph.append(piece)
                paragraph_tokens += tokens
        end_paragraph()
        emit()

    # -- Parquet, Arrow, save_to_disk folders ---------------------------------------------------------------------

    def _seekable_file(self, src: _Source, start: int | None) -> Any:
        """The upload as a seekable file from its first byte (spooled to a temporary file when not seekable)."""
        f = getattr(src.f, "file", src.f)  # Django's UploadedFile wraps the real file
        if start is not None and _seekable(f):
            f.seek(start)
            return f
        spool = tempfile.TemporaryFile(prefix="dataset-upload-")
        spool.write(src.buf[src.pos:])
        src.buf, src.pos = b"", 0
        while not src.eof:
            spool.write(src._read())
        spool.seek(0)
        return spool

    def _read_parquet(self, src: _Source, start: int | None) -> None:
        # pyarrow (~40 MB resident) is imported only by the processes that read Parquet or Arrow.
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.report.container = "parquet"
        f = self._seekable_file(src, start)
        try:
            parquet = pq.ParquetFile(f)
            self.report.bytes_read = src.total = _size(f)
            self._check_size(src)
            self._read_batches(parquet.iter_batches(batch_size=ARROW_BATCH_ROWS))
        except (pa.ArrowException, OSError, ValueError, TypeError) as exc:
            self.report.add(None, "unreadable_file", f"not a readable Parquet file: {exc}")
            raise _Stop from None

    def _read_arrow_file(self, src: _Source, start: int | None) -> None:
        import pyarrow as pa  # see _read_parquet

        self.report.container = "arrow"
        f = self._seekable_file(src, start)
        src.total = _size(f)
        self._check_size(src)
        try:
            self._read_batches(_arrow_batches(pa.PythonFile(f, mode="r")))
        except (pa.ArrowException, OSError, ValueError, TypeError) as exc:
            self.report.add(None, "unreadable_file", f"not a readable Arrow file: {exc}")
            raise _Stop from None

    def _read_saved_dataset(self, folder: Path, src: _Source) -> None:
        """A folder written by ``datasets.Dataset.save_to_disk``: ``state.json`` lists its Arrow files."""
        import pyarrow as pa  # see _read_parquet

        self.report.container = "save_to_disk"
        if (folder / "dataset_dict.json").is_file():
            splits = sorted(p.name for p in folder.iterdir() if (p / "state.json").is_file())
            self.report.add(None, "unreadable_file", f"{folder.name} is a DatasetDict with the splits "
                                                     f"{', '.join(splits) or 'none'}: import one split's folder")
            raise _Stop
        try:
            state = json.loads((folder / "state.json").read_text(encoding="utf-8"))
            files = [folder / Path(entry["filename"]).name for entry in state["_data_files"]]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            self.report.add(None, "unreadable_file", f"{folder.name} is not a datasets.save_to_disk folder "
                                                     f"(state.json: {exc})")
            raise _Stop from None
        src.total = sum(p.stat().st_size for p in files if p.is_file())
        self._check_size(src)

        def batches() -> Iterator[Any]:
            for path in files:
                with pa.OSFile(str(path), "rb") as fh:
                    yield from _arrow_batches(fh)

        try:
            self._read_batches(batches())
        except (pa.ArrowException, OSError, ValueError, TypeError) as exc:
            self.report.add(None, "unreadable_file", f"cannot read the Arrow files of {folder.name}: {exc}")
            raise _Stop from None

    def _check_size(self, src: _Source) -> None:
        if src.total > self.limits.max_bytes:
            src.too_large = True
            raise _Stop

    def _read_batches(self, batches: Iterable[Any]) -> None:
        """Rows of Arrow record batches, one batch in memory at a time; a row's number is its "line"."""
        row = 0
        for batch in batches:
            for obj in batch.to_pylist():
                row += 1
                self.report.examples += 1
                self._example(row, _drop_nulls(obj))

    # -- JSON Lines --------------------------------------------------------------------------------------------

    def _read_jsonl(self, src: _Source) -> None:
        report = self.report
        report.container = "jsonl"
        limit = self.limits.max_line_bytes
        add = report.add
        decode = _DECODER.decode
        line_no = 0
        while True:
            raw, overflow = src.readline(limit)
            if raw is None:
                return
            line_no += 1
            if overflow:
                report.examples += 1
                add(line_no, "line_too_long", f"the line is longer than the maximum of {limit:,} bytes")
                continue
            if not raw.strip():
                continue
            report.examples += 1
            if NUL in raw:
                add(line_no, "invalid_encoding", f"NUL byte at byte {raw.index(NUL) + 1} (a binary file?)")
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                add(line_no, "invalid_encoding",
                    f"invalid UTF-8 byte 0x{raw[exc.start]:02x} at byte {exc.start + 1}; the file must be UTF-8")
                continue
            try:
                obj = decode(text)
            except json.JSONDecodeError as exc:
                add(line_no, "invalid_json", self._json_error_message(exc, text))
                continue
            except RecursionError:
                add(line_no, "nesting_too_deep", f"JSON nested deeper than {self.limits.max_depth} levels")
                continue
            except ValueError as exc:  # NaN/Infinity, integers over Python's digit limit
                add(line_no, "invalid_json", str(exc))
                continue
            if isinstance(obj, (dict, list)) and text.count("{") + text.count("[") > self.limits.max_depth \
                    and _too_deep(obj, self.limits.max_depth):
                add(line_no, "nesting_too_deep", f"JSON nested deeper than {self.limits.max_depth} levels")
                continue
            self._example(line_no, obj)

    @staticmethod
    def _json_error_message(exc: json.JSONDecodeError, text: str) -> str:
        message = f"{exc.msg} at column {exc.colno}"
        if text.strip() in ("{", "["):
            message += " (JSON Lines needs one complete example per line; pretty-printed JSON is not JSONL)"
        return message

    # -- JSON array --------------------------------------------------------------------------------------------

    def _read_array(self, src: _Source) -> None:
        self.report.container = "json_array"
        buf = _TextBuffer(src, self.report)
        limit = self.limits.max_line_bytes
        add = self.report.add
        if not buf.skip_ws() or buf.char() != "[":
            add(buf.line, "invalid_json", "expected '[' at the start of the JSON array")
            raise _Stop
        buf.advance(buf.pos + 1)
        first = True
        while True:
            if not buf.skip_ws():
                add(buf.line, "invalid_json", "unexpected end of file: the JSON array is not closed with ']'")
                raise _Stop
            c = buf.char()
            if c == "]":
                buf.advance(buf.pos + 1)
                if buf.skip_ws():
                    add(buf.line, "invalid_json", "unexpected data after the closing ']' of the array")
                return
            if not first:
                if c != ",":
                    add(buf.line, "invalid_json", f"expected ',' or ']' between examples, found {c!r}")
                    raise _Stop
                buf.advance(buf.pos + 1)
                if not buf.skip_ws():
                    add(buf.line, "invalid_json", "unexpected end of file: the JSON array is not closed with ']'")
                    raise _Stop
                if buf.char() == "]":
                    add(buf.line, "invalid_json", "trailing comma before ']'")
                    raise _Stop
            first = False
            start_line = buf.line
            self.report.examples += 1
            while True:
                try:
                    obj, end = _DECODER.raw_decode(buf.text, buf.pos)
                    # A bare number at the end of the buffer may continue in the next chunk.
                    if end == len(buf.text) and not buf.eof and not isinstance(obj, (dict, list, str)):
                        buf.fill()
                        continue
                    break
                except json.JSONDecodeError as exc:
                    near_end = "Unterminated string" in exc.msg or exc.pos >= len(buf.text) - 16
                    if near_end and not buf.eof:
                        if len(buf.text) - buf.pos > limit:
                            add(start_line, "line_too_long",
                                f"the example starting here is longer than the maximum of {limit:,} bytes")
                            raise _Stop from None
                        buf.fill()
                        continue
                    line = start_line + buf.text.count("\n", buf.pos, exc.pos)
                    add(line, "invalid_json", f"{exc.msg} (in the example starting at line {start_line})")
                    raise _Stop from None
                except RecursionError:
                    add(start_line, "nesting_too_deep", f"JSON nested deeper than {self.limits.max_depth} levels")
                    raise _Stop from None
                except ValueError as exc:
                    add(start_line, "invalid_json", str(exc))
                    raise _Stop from None
            too_long = end - buf.pos > limit
            buf.advance(end)
            if too_long:
                add(start_line, "line_too_long", f"the example is longer than the maximum of {limit:,} bytes")
                continue
            if isinstance(obj, (dict, list)) and _too_deep(obj, self.limits.max_depth):
                add(start_line, "nesting_too_deep", f"JSON nested deeper than {self.limits.max_depth} levels")
                continue
            self._example(start_line, obj)

    # -- CSV ---------------------------------------------------------------------------------------------------

    def _read_csv(self, src: _Source, delimiter: str) -> None:
        self.report.container = "csv"
        limit = self.limits.max_line_bytes
        add = self.report.add
        state = {"line": 0, "record_bytes": 0}

        def physical_lines() -> Iterator[str]:
            # One string per physical line (bad ones as empty lines) so csv's line_num stays exact.
            while True:
                raw, overflow = src.readline(limit)
                if raw is None:
                    return
                state["line"] += 1
                line_no = state["line"]
                state["record_bytes"] += len(raw)
                if state["record_bytes"] > limit:
                    raise _RecordTooLong
                if overflow:
                    add(line_no, "line_too_long", f"the line is longer than the maximum of {limit:,} bytes")
                    yield "\n"
                    continue
                if NUL in raw:
                    add(line_no, "invalid_encoding", f"NUL byte at byte {raw.index(NUL) + 1} (a binary file?)")
                    yield "\n"
                    continue
                try:
                    yield raw.decode("utf-8") + "\n"
                except UnicodeDecodeError as exc:
                    add(line_no, "invalid_encoding",
                        f"invalid UTF-8 byte 0x{raw[exc.start]:02x} at byte {exc.start + 1}; the file must be UTF-8")
                    yield "\n"

        reader = csv.reader(physical_lines(), delimiter=delimiter)
        header: list[str] | None = None
        header_line = 0
        while True:
            start = reader.line_num + 1
            state["record_bytes"] = 0
            try:
                row = next(reader)
            except StopIteration:
                break
            except _RecordTooLong:
                add(start, "line_too_long",
                    f"the CSV record starting here is longer than the maximum of {limit:,} bytes "
                    "(an unclosed quote?)")
                raise _Stop from None
            except csv.Error as exc:
                add(start, "invalid_csv", str(exc))
                raise _Stop from None
            if not row or all(not cell.strip() for cell in row):
                continue
            if header is None:
                # Column names are read case-insensitively, except those a mapping names exactly.
                sources = set(self.mapping.columns.values()) if self.mapping else set()
                header = [cell.strip() if cell.strip() in sources else cell.strip().lower() for cell in row]
                header_line = start
                keys = set(header) | {t for t, source in (self.mapping.columns.items() if self.mapping else ())
                                      if source in header}
                if not keys & CSV_KEYS:
                    add(start, "missing_field",
                        "the CSV header needs a 'text' column (and 'label' for classification), or instruction/"
                        "output, prompt/completion, prompt/chosen/rejected columns (or --columns to map yours); got "
                        + ", ".join(repr(h) for h in header[:10]))
                    raise _Stop
                continue
            self.report.examples += 1
            if len(row) != len(header):
                add(start, "invalid_csv",
                    f"the row has {len(row)} columns, the header (line {header_line}) has {len(header)}")
                continue
            self._example(start, {k: v for k, v in zip(header, row, strict=True) if k})

    # -- per example ---------------------------------------------------------------------------------------------

    def _example(self, line: int, obj: Any) -> None:
        report = self.report
        if self.mapping is not None:
            obj = self.mapping.apply(obj)
        if self.normalise is None:
            if self.format_failed:
                return
            if not isinstance(obj, dict):
                report.add(line, "data_type", f"example is {formats.type_name(obj)}, expected a JSON object")
                return
            fmt, why = formats.detect(obj)
            if fmt is None:
                self.format_failed = True
                keys = ", ".join(repr(k) for k in list(obj)[:8]) or "none"
                mapped = f" after the column mapping {self.mapping.describe()}" if self.mapping else ""
                report.add(line, "unknown_format",
                           f"cannot tell the format from the first example's keys ({keys}){mapped}; expected "
                           "messages, conversations, instruction/output, prompt/completion, prompt/chosen/rejected, "
                           "text/label or text. Name the format explicitly, or map the columns.")
                return
            report.format = fmt
            report.format_detected = True
            report.format_reason = f"detected from line {line}: {why}"
            self.normalise = formats.NORMALISERS[fmt]
        if isinstance(obj, dict):
            problem = formats.guard(obj, report.format)
            if problem is not None:
                report.add(line, problem[0], f"{problem[1]} (the file's format: {report.format}, "
                                             f"{report.format_reason})")
                return
        record, problems = self.normalise(obj)
        if record is None:
            row_format, why = formats.detect(obj)
            # A classification row without its label reads as text: that is a missing label, not another format.
            if row_format is not None and row_format != report.format \
                    and {row_format, report.format} != {formats.TEXT, formats.CLASSIFICATION}:
                self._mixed(line, row_format)
                if not report.format_given:
                    report.add(line, "mixed_formats", f"this row is {row_format} ({why}), but the file is "
                                                      f"{report.format} ({report.format_reason})")
                    return
            for code, message in problems:
                report.add(line, code, message)
            return
        if self.labels is not None and "label" in record and record["label"] not in self.labels:
            report.add(line, "label_unseen", f"label {record['label']!r} is not one of the known labels "
                                             f"({', '.join(sorted(self.labels)[:10])})")
            return
        try:
            data = _dumps(record)
        except UnicodeEncodeError:
            report.add(line, "invalid_encoding", "the text contains an unpaired surrogate escape (\\ud800-\\udfff)")
            return
        if self.token_counter is not None:
            try:
                n_tokens = self.token_counter(record)
            except Exception as exc:  # templates raise on conversations they cannot render
                report.add(line, "template_error", f"the base model's chat template rejects it: {exc}", WARNING)
            else:
                self.tokens.add(n_tokens)
                if self.max_tokens and n_tokens > self.max_tokens:
                    report.add(line, "too_long", f"{n_tokens} tokens, over the model's limit of {self.max_tokens} "
                                                 "(it would be truncated)", WARNING)
        report.valid_examples += 1
        self.duplicates.add(hash(data), line)
        self.stats.add(record)
        if self.sink is not None and (self.skip_invalid or report.error_count == 0):
            try:
                self.sink(data + b"\n")
            except Exception as exc:
                raise SinkError(str(exc)) from exc

    def _mixed(self, line: int, row_format: str) -> None:
        self.mixed_counts[row_format] += 1
        lines = self.mixed.setdefault(row_format, [])
        if len(lines) < 10:
            lines.append(line)

    # -- end of file ---------------------------------------------------------------------------------------------

    def _finish(self) -> None:
        report = self.report
        duplicates = self._find_duplicates()
        if self.mixed_counts:
            others = sum(self.mixed_counts.values())
            report.formats_seen = {report.format: report.examples - others, **dict(self.mixed_counts)}
            parts = [f"{fmt}: {n} row(s) (lines {', '.join(map(str, self.mixed[fmt]))}"
                     f"{', …' if n > len(self.mixed[fmt]) else ''})" for fmt, n in self.mixed_counts.most_common()]
            if report.format_given:
                report.add(None, "mixed_formats", f"rows of another format than {report.format} "
                                                  f"({report.format_reason}): " + "; ".join(parts))
            else:
                report.add(None, "mixed_formats", f"the file mixes formats: {report.format} "
                                                  f"({report.format_reason}) on {report.examples - others} row(s); "
                                                  + "; ".join(parts))
        # Counted over all examples, valid or not: a short file is reported even while it has other errors
        # (with skip_invalid only the valid ones count: they are what would be imported).
        counted = report.valid_examples if self.skip_invalid else report.examples
        if counted < self.limits.min_examples and not report.stopped_early:
            what = "valid example(s)" if self.skip_invalid else "example(s)"
            report.add(None, "too_few_examples", "the file has no examples" if not report.examples else
                       f"{counted} {what}; at least {self.limits.min_examples} are needed")
        if self.stats.kind == formats.KIND_CLASSIFICATION and self.stats.labels:
            labels = self.stats.labels
            if len(labels) < 2:
                report.add(None, "too_few_labels", f"only one label ({next(iter(labels))!r}): a classifier "
                                                   "needs at least two", WARNING)
            else:
                (top, top_n), (low, low_n) = labels.most_common(1)[0], min(labels.items(), key=lambda kv: kv[1])
                if top_n >= IMBALANCE_RATIO * low_n:
                    report.add(None, "label_imbalance", f"label {low!r} has {low_n} example(s), {top!r} has "
                                                        f"{top_n}", WARNING)
        report.stats = self.stats.to_dict()
        report.stats["duplicates"] = duplicates
        if self.tokens.count:
            report.stats["tokens"] = self.tokens.summary(limit=self.max_tokens)
        report.errors.sort(key=_issue_order)
        report.warnings.sort(key=_issue_order)

    def _find_duplicates(self) -> int:
        found = 0
        for dup_line, first_line in self.duplicates.pairs():
            self.report.add(dup_line, "duplicate", f"the same example as line {first_line}", WARNING)
            found += 1
        return found


class _RecordTooLong(Exception):
    pass


class _TextBuffer:
    """Decoded text of a byte source, read on demand, with the line number at ``pos``."""

    def __init__(self, src: _Source, report: Report) -> None:
        self.src = src
        self.report = report
        self.text = ""
        self.pos = 0
        self.line = 1
        self.eof = False
        self.decoder = codecs.getincrementaldecoder("utf-8")("strict")

    def fill(self) -> bool:
        """Read one more chunk; False at the end. Encoding errors and NUL bytes stop the reading."""
        if self.eof:
            return False
        chunk = self.src.read_chunk()
        if chunk is None:
            self.eof = True
            try:
                tail = self.decoder.decode(b"", final=True)
            except UnicodeDecodeError:
                self.report.add(self._line_at_end(), "invalid_encoding",
                                "the file ends in the middle of a UTF-8 character")
                raise _Stop from None
            self._append(tail)
            return bool(tail)
        nul = chunk.find(NUL)
        if nul >= 0:
            self.report.add(self._line_at_end() + chunk.count(b"\n", 0, nul), "invalid_encoding",
                            "NUL byte in the file (a binary file?)")
            raise _Stop
        try:
            text = self.decoder.decode(chunk)
        except UnicodeDecodeError as exc:
            bad = max(0, min(exc.start, len(chunk) - 1))
            self.report.add(self._line_at_end() + chunk.count(b"\n", 0, bad), "invalid_encoding",
                            f"invalid UTF-8 byte 0x{chunk[bad]:02x}; the file must be UTF-8")
            raise _Stop from None
        self._append(text)
        return True

    def _append(self, text: str) -> None:
        self.text = self.text[self.pos:] + text
        self.pos = 0

    def _line_at_end(self) -> int:
        return self.line + self.text.count("\n", self.pos)

    def advance(self, new_pos: int) -> None:
        self.line += self.text.count("\n", self.pos, new_pos)
        self.pos = new_pos

    def skip_ws(self) -> bool:
        """Skip whitespace; True when a character is available at ``pos``."""
        while True:
            end = _WS.match(self.text, self.pos).end()
            self.advance(end)
            if self.pos < len(self.text):
                return True
            if not self.fill():
                return False

    def char(self) -> str:
        return self.text[self.pos]


def validate(fileobj: IO | os.PathLike, *, format: str | None = None, filename: str | None = None,
             limits: Limits | None = None, labels: Collection[str] | None = None,
             token_counter: Callable[[dict], int] | None = None, max_tokens: int | None = None,
             sink: Callable[[bytes], None] | None = None, mapping: formats.ColumnMapping | None = None,
             skip_invalid: bool = False, format_reason: str = "",
             text_counter: Callable[[str], int] | None = None, chunk_tokens: int = DEFAULT_CHUNK_TOKENS) -> Report:
    """Validate a binary stream (or a ``save_to_disk`` folder's path); return the report (never raises for
    data problems).

    ``format`` is a canonical format name or None to detect it from the first example (``format_reason`` says
    who gave it, e.g. a dataset_info.json entry); ``filename`` picks the container (``.csv``/``.tsv``,
    ``.txt``/``.md`` corpus, ``.parquet``, ``.arrow``; content sniffing otherwise); ``mapping`` renames the
    file's keys first; ``labels`` turns unseen labels into errors; ``token_counter(record)`` with
    ``max_tokens`` adds too_long warnings and token statistics; ``text_counter(text)`` counts the tokens a
    text corpus is cut by (``chunk_tokens`` a row); ``sink(line_bytes)`` receives each normalised example
    while the report has no errors, or every valid one with ``skip_invalid``.
    """
    fmt = formats.canonical_format(format)
    validator = _Validator(fmt=fmt, filename=filename, limits=limits or Limits(), labels=labels,
                           token_counter=token_counter, max_tokens=max_tokens, sink=sink, mapping=mapping,
                           skip_invalid=skip_invalid, format_reason=format_reason, text_counter=text_counter,
                           chunk_tokens=chunk_tokens)
    try:
        return validator.run(fileobj)
    except SinkError as exc:
        raise exc.__cause__ from None
