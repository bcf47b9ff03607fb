"""Benchmark: validate generated chat data and report rows/s and peak RSS.

    .venv/bin/python benchmarks/validate_throughput.py            # 50k and 200k rows, writes RESULTS.md
    .venv/bin/python benchmarks/validate_throughput.py --rows 200000 50000 1000000 --no-write
    .venv/bin/python benchmarks/validate_throughput.py --tokenizer var/models/SmolLM2-135M-Instruct

Each measurement runs in a fresh child process so that its peak RSS (``ru_maxrss``) is its own.
Two modes are timed: ``validate`` (the validator alone, no output) and ``upload path`` (validator
plus writing the normalised file and its SHA-256, as ``dataset_upload`` does, minus the database).
Three inputs: OpenAI chat JSONL, the same rows as Parquet (pyarrow, row groups of 10,000, read in record
batches), and OpenAI tool-calling JSONL (``tools``, ``tool_calls``, ``tool`` messages, every call checked).
Memory is "flat" when the peak RSS hardly moves from the smaller file to the larger one (the duplicate
detector spills its per-row records to temporary files past 64k rows).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "benchmarks" / "RESULTS.md"
START, END = "<!-- validate_throughput:start -->", "<!-- validate_throughput:end -->"

QUESTIONS = ["What is the warranty period of the {p}?", "How do I return the {p}?", "{p} 的保修期是多久？",
             "Where is the serial number of the {p}?", "我的 {p} 不制冷了，怎么办？"]
ANSWERS = ["The {p} has a 2-year whole-unit warranty; the compressor is covered for 5 years.",
           "You can return it within 7 days of delivery without a reason. Call 400-820-3366.",
           "{p} 整机保修 2 年，压缩机保修 5 年，保修期内免费上门维修。",
           "It is on the rating plate on the back of the {p}.",
           "请先检查电源和温控设置；如果仍不制冷，请拨打 400-820-3366 预约上门检测。"]


TOOLS = [{"type": "function", "function": {"name": "order_status", "description": "Status of an order",
                                           "parameters": {"type": "object",
                                                          "properties": {"order_id": {"type": "string"}}}}},
         {"type": "function", "function": {"name": "book_repair", "description": "Book a technician visit",
                                           "parameters": {"type": "object",
                                                          "properties": {"product": {"type": "string"},
                                                                         "date": {"type": "string"}}}}}]


def chat_rows(rows: int, seed: int = 0):
    rng = random.Random(seed)
    for i in range(rows):
        product = f"model X{i}"
        k = rng.randrange(len(QUESTIONS))
        messages = [{"role": "system", "content": "You are the support assistant of Xinghe Appliances."},
                    {"role": "user", "content": QUESTIONS[k].format(p=product)},
                    {"role": "assistant", "content": ANSWERS[k].format(p=product)}]
        if i % 4 == 0:
            messages += [{"role": "user", "content": "Thanks! 谢谢。"},
                         {"role": "assistant", "content": "You're welcome. 不客气！", "weight": 1}]
        yield {"messages": messages}


def tool_rows(rows: int):
    for i in range(rows):
        order = f"A{i:07d}"
        yield {"tools": TOOLS, "messages": [
            {"role": "user", "content": f"Where is my order {order}? 我的订单到哪了？"},
            {"role": "assistant", "tool_calls": [{"id": f"call_{i}", "type": "function", "function": {
                "name": "order_status", "arguments": json.dumps({"order_id": order})}}]},
            {"role": "tool", "tool_call_id": f"call_{i}", "content": json.dumps({"status": "shipped", "eta": "2 days"})},
            {"role": "assistant", "content": f"Order {order} has shipped and arrives in about 2 days."}]}


def generate(path: Path, rows: int, seed: int = 0, kind: str = "chat") -> None:
    """Write ``rows`` generated rows: chat or tool-calling JSONL, or chat rows as Parquet (by the suffix)."""
    source = tool_rows(rows) if kind == "tools" else chat_rows(rows, seed)
    if path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        writer = None
        batch: list[dict] = []
        for row in source:
            batch.append(row)
            if len(batch) == 10_000:
                table = pa.Table.from_pylist(batch, schema=writer.schema if writer else None)
                writer = writer or pq.ParquetWriter(path, table.schema)
                writer.write_table(table)
                batch = []
        if batch:
            table = pa.Table.from_pylist(batch, schema=writer.schema if writer else None)
            writer = writer or pq.ParquetWriter(path, table.schema)
            writer.write_table(table)
        writer.close()
        return
    with path.open("w", encoding="utf-8") as fh:
        for row in source:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def rss_kb() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def child(path: str, mode: str, tokenizer: str | None, limit_rows: int | None) -> None:
    """Run one measurement and print it as JSON (called in a fresh process)."""
    import numpy  # noqa: F401  (imported by the duplicate detector: count it in the baseline)

    from datasets_app import validation

    counter = max_tokens = None
    if tokenizer:
        from ml.data import count_tokens
        from ml.model import cached_tokenizer

        tok = cached_tokenizer(tokenizer)
        counter, max_tokens = (lambda record: count_tokens(tok, record)), 2048
    baseline = rss_kb()
    sink = None
    out_fh = None
    digest = hashlib.sha256()
    if mode == "upload":
        out_fh = tempfile.NamedTemporaryFile(prefix="bench-", suffix=".jsonl", delete=False)

        def sink(line: bytes) -> None:
            out_fh.write(line)
            digest.update(line)

    source = open(path, "rb")
    if limit_rows:
        import io
        import itertools

        source = io.BytesIO(b"".join(itertools.islice(source, limit_rows)))
    started = time.perf_counter()
    report = validation.validate(source, sink=sink, token_counter=counter, max_tokens=max_tokens,
                                 limits=validation.Limits(max_bytes=1 << 40), filename=os.path.basename(path))
    elapsed = time.perf_counter() - started
    if out_fh is not None:
        out_fh.close()
        os.unlink(out_fh.name)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"rows": report.examples, "valid": report.valid_examples, "errors": report.error_count,
                      "seconds": elapsed, "rows_per_s": report.examples / elapsed, "peak_rss_mb": peak / 1024,
                      "baseline_rss_mb": baseline / 1024, "bytes": report.bytes_read}))


def measure(path: Path, mode: str, tokenizer: str | None = None, limit_rows: int | None = None) -> dict:
    cmd = [sys.executable, __file__, "--child", str(path), "--mode", mode]
    if tokenizer:
        cmd += ["--tokenizer", tokenizer]
    if limit_rows:
        cmd += ["--limit-rows", str(limit_rows)]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env, cwd=ROOT).stdout
    return json.loads(out.strip().splitlines()[-1])


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            names = [line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")]
            cpu = names[0] if names else cpu
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} CPUs, Python {platform.python_version()}, {platform.system()}"


def write_results(section: str) -> None:
    text = RESULTS.read_text(encoding="utf-8") if RESULTS.exists() else "# Benchmark results\n"
    block = f"{START}\n{section.rstrip()}\n{END}"
    if START in text and END in text:
        text = re.sub(re.escape(START) + r".*?" + re.escape(END), lambda _m: block, text, flags=re.S)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    RESULTS.write_text(text, encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[50_000, 200_000])
    parser.add_argument("--inputs", nargs="+", default=["chat", "parquet", "tools"],
                        choices=["chat", "parquet", "tools"], help="Which generated inputs to time.")
    parser.add_argument("--tokenizer", default=None,
                        help="Also time token counting with this local tokenizer folder (on 5,000 rows).")
    parser.add_argument("--no-write", action="store_true", help="Print only; do not update RESULTS.md.")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--generate", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--kind", default="chat", help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="validate", help=argparse.SUPPRESS)
    parser.add_argument("--limit-rows", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.mode, args.tokenizer, args.limit_rows)
        return
    if args.generate:
        generate(Path(args.generate), args.rows[0], kind=args.kind)
        return

    rows_list = sorted(args.rows)
    results = []
    names = {"chat": ("chat", ".jsonl", "OpenAI chat JSONL"), "parquet": ("chat", ".parquet", "chat Parquet"),
             "tools": ("tools", ".jsonl", "tool-calling JSONL")}
    with tempfile.TemporaryDirectory(prefix="validate-bench-") as tmp:
        for name in args.inputs:
            kind, suffix, label = names[name]
            for rows in rows_list:
                path = Path(tmp) / f"{name}-{rows}{suffix}"
                # In a child too: pyarrow's tables would raise this process's RSS, which its children inherit as
                # their starting ru_maxrss.
                subprocess.run([sys.executable, __file__, "--generate", str(path), "--kind", kind, "--rows",
                                str(rows)], check=True, cwd=ROOT)
                size_mb = path.stat().st_size / 1e6
                for mode in ("validate", "upload"):
                    r = measure(path, mode)
                    r.update(mode=mode, file_mb=size_mb, input=label, name=name)
                    results.append(r)
                    print(f"{label:18} {rows:>9,} rows {size_mb:7.1f} MB  {mode:8}  {r['rows_per_s']:>9,.0f} rows/s  "
                          f"{r['seconds']:6.2f} s  peak RSS {r['peak_rss_mb']:6.1f} MB "
                          f"(baseline {r['baseline_rss_mb']:.1f} MB)", flush=True)
        token_row = None
        if args.tokenizer:
            path = Path(tmp) / f"chat-{rows_list[-1]}.jsonl"
            if not path.exists():
                subprocess.run([sys.executable, __file__, "--generate", str(path), "--kind", "chat", "--rows",
                                str(rows_list[-1])], check=True, cwd=ROOT)
            token_row = measure(path, "validate", tokenizer=args.tokenizer, limit_rows=5000)
            print(f"    5,000 rows with token counting ({args.tokenizer}): {token_row['rows_per_s']:,.0f} rows/s")

    lines = [
        "## Dataset validation throughput (`benchmarks/validate_throughput.py`)",
        "",
        f"Machine: {machine()}. Generated data validated by `datasets_app.validation.validate` in a fresh process",
        "for each table row (peak RSS is that process's `ru_maxrss`, including Python, numpy, pyarrow and the",
        "validator; *baseline* is the RSS just before validating). Inputs: OpenAI-chat JSONL (3 or 5 messages per",
        "row, English and Chinese); the same rows as Parquet (row groups of 10,000, read in record batches of 1,024);",
        "tool-calling JSONL (`tools` with two functions, an assistant `tool_calls` entry, its `tool` answer and the",
        "final answer; every call checked against the declared tools, its arguments parsed, its answer matched).",
        "`validate`: validator only; `upload path`: validator + normalised file written + SHA-256 (what",
        "`dataset_upload` does before the database insert). No token counting.",
        "",
        "| input | rows | file | mode | rows/s | seconds | peak RSS | baseline RSS |",
        "|---|---:|---:|---|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(f"| {r['input']} | {r['rows']:,} | {r['file_mb']:.1f} MB |"
                     f" {'upload path' if r['mode'] == 'upload' else r['mode']}"
                     f" | {r['rows_per_s']:,.0f} | {r['seconds']:.2f} | {r['peak_rss_mb']:.1f} MB |"
                     f" {r['baseline_rss_mb']:.1f} MB |")
    lines.append("")
    for name in args.inputs:
        mine = [r for r in results if r["name"] == name and r["mode"] == "upload"]
        small = next(r for r in mine if r["rows"] == rows_list[0])
        large = next(r for r in mine if r["rows"] == rows_list[-1])
        lines.append(f"- {small['input']}: peak RSS grows by {large['peak_rss_mb'] - small['peak_rss_mb']:.1f} MB "
                     f"from {small['rows']:,} to {large['rows']:,} rows ({large['file_mb'] / small['file_mb']:.1f}x "
                     "the data).")
    lines += [
        "",
        "The readers keep one line, one array element or one Arrow record batch at a time, and the only per-row"
        " state, the exact duplicate detector's 12-byte (hash, line) records, stays in memory up to 65,536 rows and"
        " beyond that is spilled to 128 hash-partitioned temporary files that are checked one by one at the end."
        " Timings are from a shared 2-CPU machine (other jobs running); repeated runs vary by about ±25%."
        " The baseline includes pydantic (the column mapping's model; the web process imports it anyway); the"
        " Parquet rows' higher peak is pyarrow itself (imported only by the processes that read Parquet/Arrow),"
        " and it stays flat with the number of rows.",
    ]
    if token_row:
        lines += ["", f"With token counting through `{args.tokenizer}`'s chat template (5,000 rows): "
                      f"{token_row['rows_per_s']:,.0f} rows/s."]
    section = "\n".join(lines)
    print()
    print(section)
    if not args.no_write:
        write_results(section)
        print(f"\nwritten to {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
