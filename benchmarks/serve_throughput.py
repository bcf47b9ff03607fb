"""Benchmark: the model server under 1, 4, 8 and 16 concurrent streaming clients vs the same requests in sequence.

    .venv/bin/python benchmarks/serve_throughput.py                 # SmolLM2-135M + 3 random adapters; RESULTS.md
    .venv/bin/python benchmarks/serve_throughput.py --clients 1 8 --max-tokens 32 --no-write

Builds a private installation: the bundled SmolLM2-135M-Instruct converted from its GGUF (cached under
``var/bench/``), three LoRA adapters with random weights (r=8 on q/k/v/o), and ``manage.py serve_models`` as
``make serve`` starts it. Each client streams its requests one after another (``/generate``, the newline-delimited
JSON the web process reads), spread round-robin over the base and the three adapters, greedy, with a fixed
``max_tokens``. The sequential row sends the 8-client level's requests one at a time to the same server.

Reported per level: aggregate completion tokens/s (all tokens / wall time of the level), time to first token
p50/p95, the mean gap between tokens within a stream (per-token latency as one client sees it), the largest batch
the engine decoded, and the server's peak RSS (``VmHWM``) and its RSS before/after the adapters were loaded.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import re
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "benchmarks" / "RESULTS.md"
START, END = "<!-- serve_throughput:start -->", "<!-- serve_throughput:end -->"
PROMPTS = ["Explain how a warranty works, in detail.", "Write a short story about a lighthouse keeper.",
           "List the steps to return an item bought online.", "Describe the water cycle to a child.",
           "What should I pack for a week of hiking?", "Explain what a LoRA adapter is.",
           "Give me three tips for writing clear emails.", "Describe how a bicycle gear works."]


def prepare(cache: Path) -> tuple[Path, list[Path]]:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    os.environ.setdefault("DATA_DIR", str(cache / "data"))
    import django

    django.setup()
    from catalog import model_scan

    base = cache / "SmolLM2-135M-Instruct"
    if not (base / "config.json").is_file():
        cand = next(c for c in model_scan.bundled_candidates() if c.name == "SmolLM2-135M-Instruct")
        model_scan.convert_gguf(cand.path, base)
    adapters = [cache / f"lora-{i}" for i in (1, 2, 3)]
    if not all((a / "adapter_config.json").is_file() for a in adapters):
        import torch
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM

        for i, folder in enumerate(adapters, start=1):
            torch.manual_seed(i)
            model = get_peft_model(AutoModelForCausalLM.from_pretrained(str(base)),
                                   LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj",
                                                                                  "o_proj"],
                                              init_lora_weights=False, task_type="CAUSAL_LM"))
            with torch.no_grad():
                for name, p in model.named_parameters():
                    if "lora_B" in name:
                        p.normal_(0, 0.01)
            model.save_pretrained(str(folder))
    return base, adapters


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss(pid: int) -> dict:
    text = Path(f"/proc/{pid}/status").read_text()
    return {k: int(re.search(rf"{k}:\s+(\d+)", text)[1]) * 1024 for k in ("VmRSS", "VmHWM")}


def stream(port: int, base: Path, adapter: Path | None, prompt: str, max_tokens: int) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    body = {"base_path": str(base), "adapter_key": adapter and adapter.name, "adapter_path": adapter and str(adapter),
            "request": {"messages": [{"role": "user", "content": prompt}], "max_new_tokens": max_tokens}}
    start = time.perf_counter()
    conn.request("POST", "/generate", body=json.dumps(body))
    response = conn.getresponse()
    assert response.status == 200, response.read()
    times = []
    result = None
    for line in response:
        event = json.loads(line)
        if "text" in event:
            times.append(time.perf_counter())
        elif "done" in event:
            result = event["done"]
            break
        else:
            raise RuntimeError(event)
    conn.close()
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    return {"ttft": times[0] - start, "tokens": result["completion_tokens"], "gaps": gaps,
            "end": time.perf_counter()}


def level(port: int, jobs: list[tuple], clients: int, max_tokens: int, base: Path) -> dict:
    per_client = [jobs[i::clients] for i in range(clients)]
    out: list[dict] = []
    lock = threading.Lock()

    def client(mine):
        for adapter, prompt in mine:
            r = stream(port, base, adapter, prompt, max_tokens)
            with lock:
                out.append(r)

    start = time.perf_counter()
    threads = [threading.Thread(target=client, args=(m,)) for m in per_client]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    ttfts = sorted(r["ttft"] for r in out)
    gaps = [g for r in out for g in r["gaps"]]
    tokens = sum(r["tokens"] for r in out)
    return {"requests": len(out), "tokens": tokens, "wall": wall, "tps": tokens / wall,
            "ttft_p50": statistics.median(ttfts), "ttft_p95": ttfts[min(len(ttfts) - 1, int(0.95 * len(ttfts)))],
            "gap": statistics.mean(gaps) if gaps else 0.0}


def health(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as r:
        return json.loads(r.read())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--requests-per-client", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--cache", type=Path, default=ROOT / "var" / "bench" / "serve")
    parser.add_argument("--torch-threads", type=int, default=0,
                        help="SERVING_TORCH_THREADS of the server (0: torch's default)")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    base, adapters = prepare(args.cache)
    load = os.getloadavg()[0]
    port = free_port()
    env = {**os.environ, "SERVING_MAX_BATCH": str(max(args.clients)), "SERVING_MAX_QUEUE": "64",
           "SERVING_TORCH_THREADS": str(args.torch_threads),
           "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
    log = open(args.cache / "serve_models.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "manage.py", "serve_models", "--port", str(port), "--preload", str(base)],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        while True:
            try:
                health(port)
                break
            except OSError:
                if proc.poll() is not None:
                    raise SystemExit("the model server exited; see " + str(args.cache / "serve_models.log")) from None
                time.sleep(0.5)
        models = [None, *adapters]
        rss_base = rss(proc.pid)["VmRSS"]
        for m in models:  # warm up: load every adapter once
            stream(port, base, m, "Hi", 4)
        rss_adapters = rss(proc.pid)["VmRSS"]
        rows = []

        def jobs_for(n: int) -> list[tuple]:
            return [(models[i % len(models)], PROMPTS[i % len(PROMPTS)]) for i in range(n)]

        seq_jobs = jobs_for(8 * args.requests_per_client)
        seq = level(port, seq_jobs, 1, args.max_tokens, base)
        seq["label"] = f"sequential ({len(seq_jobs)} requests, one at a time)"
        seq["batch"] = 1
        rows.append(seq)
        print(f"sequential: {seq['tps']:.1f} tok/s", flush=True)
        for n in args.clients:
            before = health(port)["max_batch_seen"]
            row = level(port, jobs_for(n * args.requests_per_client), n, args.max_tokens, base)
            row["label"] = f"{n} concurrent client{'s' if n > 1 else ''}"
            row["batch"] = max(before, health(port)["max_batch_seen"])
            rows.append(row)
            print(f"{n} clients: {row['tps']:.1f} tok/s, TTFT p95 {row['ttft_p95']:.2f}s", flush=True)
        peak = rss(proc.pid)["VmHWM"]
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
        log.close()
    import torch

    mb = 1024 * 1024
    lines = [START, "## Model server throughput (`benchmarks/serve_throughput.py`)", "",
             f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch "
             f"{torch.__version__} (server threads: {args.torch_threads or 'default'}), load average before the run "
             f"{load:.1f} (the cores are shared with other work), Python {platform.python_version()}. "
             f"SmolLM2-135M-Instruct (float32) + 3 LoRA adapters (r=8, q/k/v/o, random weights); requests spread "
             f"round-robin over the base and the adapters, greedy, max_tokens={args.max_tokens}, "
             f"{args.requests_per_client} requests per client, streamed from `manage.py serve_models`.", "",
             "| clients | requests | completion tokens | wall s | tokens/s | × sequential | TTFT p50 | TTFT p95 "
             "| per-token latency | largest batch |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['label']} | {r['requests']} | {r['tokens']} | {r['wall']:.1f} | {r['tps']:.1f} | "
                     f"{r['tps'] / rows[0]['tps']:.2f}× | {r['ttft_p50']:.2f} s | {r['ttft_p95']:.2f} s | "
                     f"{r['gap'] * 1000:.0f} ms | {r['batch']} |")
    lines += ["", f"Server memory: RSS {rss_base / mb:.0f} MB with the base loaded, {rss_adapters / mb:.0f} MB with "
              f"the 3 adapters too (+{(rss_adapters - rss_base) / mb:.0f} MB), peak (VmHWM) {peak / mb:.0f} MB "
              "over the whole run.", END]
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        current = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
        if START in current:
            current = current[:current.index(START)] + text + current[current.index(END) + len(END):]
        else:
            current = current.rstrip("\n") + "\n\n" + text + "\n"
        RESULTS.write_text(current)


if __name__ == "__main__":
    main()
