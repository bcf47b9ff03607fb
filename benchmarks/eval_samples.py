"""Benchmark: an evaluation's generation samples in the job's own process vs through the model server.

    .venv/bin/python benchmarks/eval_samples.py                  # SmolLM2-135M + a random adapter; RESULTS.md
    .venv/bin/python benchmarks/eval_samples.py --samples 4 --max-tokens 32 --no-write

Builds a private installation (temporary DATA_DIR and SQLite database; the bundled SmolLM2-135M-Instruct and a LoRA
adapter with random weights, cached under ``var/bench/serve/`` like ``serve_throughput.py``), then runs the same
evaluation (metric ``samples``: the base's and the adapter's greedy answers to N prompts) three times, each in a
fresh process as the worker's child would run it:

- **in-process** (``SERVING_URL`` empty): the job loads the base and the adapter and generates one answer after
  the other;
- **model server, cold**: ``manage.py serve_models`` just started, nothing loaded; the job sends ``batch_size``
  requests at a time;
- **model server, warm**: the same server again, its base and adapter already loaded (the usual case under
  ``make serve``, where chats keep the base loaded).

Reported: the run's own duration (``started_at`` → ``finished_at``), the job process's wall time (Python, Django
and torch imports included) and its peak RSS, and whether the answers of the three runs are identical.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "benchmarks" / "RESULTS.md"
START, END = "<!-- eval_samples:start -->", "<!-- eval_samples:end -->"
QA = [("What is the warranty period?", "Two years from the date of purchase."),
      ("How long is the return window?", "Thirty days, unused and in the original box."),
      ("What is the hotline number?", "Call 400-800-1234, every day from 9 to 18."),
      ("Is shipping free?", "Yes, for orders over 50 euros."),
      ("Can I pay by invoice?", "Business customers can, after a credit check."),
      ("Do you ship abroad?", "Within the EU, in five to seven working days."),
      ("How do I reset my password?", "Use the 'forgot password' link on the login page."),
      ("Can I cancel my order?", "Yes, until it has been shipped.")]


def child(run_id: int) -> None:
    """Run one queued evaluation in this process (the worker's child does the same)."""
    import django

    django.setup()
    from evaluation.models import EvaluationRun
    from jobs import runtime

    status = runtime.run_foreground(EvaluationRun.objects.get(pk=run_id))
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over fork and exec from the parent (this benchmark, which
    # loaded the model to write the adapters).
    peak = int(re.search(r"VmHWM:\s+(\d+)", Path("/proc/self/status").read_text())[1]) * 1024
    print(json.dumps({"status": status, "maxrss": peak}))


def run_child(run_id: int, env: dict) -> dict:
    """The evaluation in a fresh process: its wall time and peak RSS."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, __file__, "--child", str(run_id)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate()
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"the evaluation process failed: {err.decode()[-3000:]}")
    return {"wall": wall, "maxrss": json.loads(out.decode().strip().splitlines()[-1])["maxrss"]}


def setup_world(env: dict, base: Path, adapter: Path):
    os.environ.update(env)
    import django

    django.setup()
    import io

    from django.contrib.auth import get_user_model

    from accounts.services import membership_set, team_create
    from catalog.model_scan import inspect_hf_dir
    from catalog.models import BaseModel
    from datasets_app.services import dataset_upload
    from training.models import Adapter

    team = team_create(name="bench")
    user = get_user_model().objects.create_user("bench", password=uuid.uuid4().hex)
    membership_set(team=team, user=user, role="admin")
    info = inspect_hf_dir(base)
    model = BaseModel.objects.create(name=base.name, kind=info.kind, path=str(base), architecture=info.architecture,
                                     parameter_count=info.parameter_count, size_bytes=info.size_bytes,
                                     tokenizer_present=True, has_chat_template=True, config=info.config)
    body = "".join(json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]})
                   + "\n" for q, a in QA * 4).encode()
    version = dataset_upload(user=user, team=team, name="faq", fileobj=io.BytesIO(body), filename="faq.jsonl")
    lora = Adapter.objects.create(name="faq-lora", team=team, base_model=model, path=str(adapter))
    return user, lora, version


def health(url: str) -> dict:
    import urllib.request

    with urllib.request.urlopen(f"{url}/health", timeout=10) as r:
        return json.loads(r.read())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8, help="requests in flight to the model server")
    parser.add_argument("--torch-threads", type=int, default=0,
                        help="torch threads of the job and of the server (0: torch's default)")
    parser.add_argument("--cache", type=Path, default=ROOT / "var" / "bench" / "serve")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    if args.child is not None:
        child(args.child)
        return

    work = Path(tempfile.mkdtemp(prefix="eval-samples-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "PYTEST", "SERVING_"))}
    env.update({"DJANGO_SETTINGS_MODULE": "config.settings", "DATA_DIR": str(work), "LOG_LEVEL": "WARNING",
                "DATABASE_URL": f"sqlite:///{work / 'bench.sqlite3'}", "HF_HUB_OFFLINE": "1",
                "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"})
    if args.torch_threads:
        env.update({"OMP_NUM_THREADS": str(args.torch_threads), "SERVING_TORCH_THREADS": str(args.torch_threads)})
    subprocess.run([sys.executable, "manage.py", "migrate", "--no-input", "-v", "0"], cwd=ROOT, env=env, check=True)
    args.cache.mkdir(parents=True, exist_ok=True)
    os.environ.update(env)
    from benchmarks.serve_throughput import free_port, prepare

    base, adapters = prepare(args.cache)  # sets Django up on env's database
    user, lora, version = setup_world(env, base, adapters[0])
    from evaluation import services
    from evaluation.models import EvaluationRun, EvaluationSample

    generation = {"n_samples": args.samples, "max_new_tokens": args.max_tokens, "batch_size": args.batch_size}
    load = os.getloadavg()[0]

    def evaluate(label: str, serving_url: str) -> dict:
        run = services.evaluation_run_create(user=user, adapter=lora, dataset=version.pk, metrics=["samples"],
                                             generation=generation, name=label)
        measured = run_child(run.pk, {**env, "SERVING_URL": serving_url})
        run = EvaluationRun.objects.get(pk=run.pk)
        assert run.status == "succeeded", (run.error_code, run.error_message)
        answers = list(EvaluationSample.objects.filter(run=run).order_by("index")
                       .values_list("base_answer", "adapter_answer"))
        row = {"label": label, "run_s": (run.finished_at - run.started_at).total_seconds(),
               "process_s": measured["wall"], "rss": measured["maxrss"], "answers": answers}
        print(f"{label}: run {row['run_s']:.1f} s, process {row['process_s']:.1f} s", flush=True)
        return row

    rows = [evaluate("in-process", "")]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(work / "serve_models.log", "wb")  # noqa: SIM115 - closed after the server stops
    server = subprocess.Popen([sys.executable, "manage.py", "serve_models", "--port", str(port)], cwd=ROOT, env=env,
                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        while True:
            try:
                health(url)
                break
            except OSError:
                if server.poll() is not None:
                    raise SystemExit(f"the model server exited; see {work / 'serve_models.log'}") from None
                time.sleep(0.3)
        rows.append(evaluate("model server, cold", url))
        rows.append(evaluate("model server, warm", url))
        batch = health(url)["max_batch_seen"]
        server_rss = int(re.search(r"VmHWM:\s+(\d+)", Path(f"/proc/{server.pid}/status").read_text())[1]) * 1024
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
        log.close()
    same = all(r["answers"] == rows[0]["answers"] for r in rows)
    import torch

    mb = 1024 * 1024
    lines = [START, "## Evaluation samples: in the job's process or through the model server "
             "(`benchmarks/eval_samples.py`)", "",
             f"Machine: {platform.machine()}, {os.cpu_count()} CPUs shared with other work (load average "
             f"{load:.1f} before the run), torch {torch.__version__}, threads: {args.torch_threads or 'default'}. "
             f"SmolLM2-135M-Instruct (float32) + a LoRA adapter (r=8, q/k/v/o, random weights); metric `samples`: "
             f"{args.samples} prompts × 2 answers (base and adapter), greedy, max_new_tokens={args.max_tokens}; "
             f"through the server {args.batch_size} requests in flight (largest batch decoded: {batch}). Each run in a "
             "fresh process, as the worker's child.", "",
             "| samples generated | run s | process wall s | process peak RSS |", "|---|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['label']} | {r['run_s']:.1f} | {r['process_s']:.1f} | {r['rss'] / mb:.0f} MB |")
    fastest = min(rows, key=lambda r: r["run_s"])
    lines += ["", f"Answers identical in the three runs: {'yes' if same else 'NO'}. Model server peak RSS "
              f"{server_rss / mb:.0f} MB. Fastest: {fastest['label']} "
              f"({rows[0]['run_s'] / fastest['run_s']:.1f}× faster than in-process).", END]
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
