"""Benchmark: the API under concurrent clients, and the task/event tables at scale.

    .venv/bin/python benchmarks/api_load.py load                       # 50 clients, 60 s, SQLite; RESULTS.md
    .venv/bin/python benchmarks/api_load.py load --database-url mysql://root@127.0.0.1:3306/lora_studio_bench
    .venv/bin/python benchmarks/api_load.py scale --tasks 10000 --events 1000000      # insert + paginate timings
    .venv/bin/python benchmarks/api_load.py load --clients 10 --duration 5 --no-write

``load`` builds a private installation (a temporary DATA_DIR, a fresh database, a team, a token, a tiny
base model and a dataset version), starts the model server and gunicorn in front of it as ``make serve`` does
(``--web-workers`` processes of 4 threads; both stopped by their process groups), and runs N client threads for
D seconds, each looping over: list tasks, list datasets, list fine-tuning jobs (``/v1/``), read a task, create a
task, cancel one of its tasks, a short chat completion (``/v1/``, 8 tokens of the tiny base model, decoded by the
model server), upload a small file. The queue quota and the chat rate limits are lifted. It reports
requests/s, the status counts (5xx must be zero) and p50/p95/p99 latency per operation, then checks the
database: every task and version a client was told was created exists once, every task it cancelled is
cancelled, nothing else was created.

``scale`` bulk-inserts tasks and events into a fresh database and times the inserts, the first and a
deep page of the task list, and keyset pages of one task's events, with the query plans.

tests/reliability/test_load.py drives ``run_load`` and ``bulk_insert`` in a short mode.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "benchmarks" / "RESULTS.md"
START, END = "<!-- api_load:start -->", "<!-- api_load:end -->"
LIST_OPS = ("list tasks", "list datasets", "list v1 jobs")
LINE = {"messages": [{"role": "user", "content": "What is the warranty period?"},
                     {"role": "assistant", "content": "Two years from the date of purchase."}]}


# ------------------------------------------------------------------------------------------------ load


@dataclass
class LoadResult:
    clients: int
    duration: float
    samples: list[tuple[str, int, float]] = field(default_factory=list)  # (operation, status, seconds)
    errors: list[str] = field(default_factory=list)  # transport errors (no HTTP answer)
    created_tasks: dict[str, int] = field(default_factory=dict)  # name -> id
    cancelled_tasks: set[int] = field(default_factory=set)
    uploaded_versions: set[int] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def statuses(self) -> Counter:
        return Counter(s for _op, s, _t in self.samples)

    def server_errors(self) -> list[tuple[str, int]]:
        return [(op, s) for op, s, _t in self.samples if s >= 500]

    def percentile(self, op: str, q: float) -> float | None:
        times = sorted(t for o, _s, t in self.samples if o == op)
        if not times:
            return None
        return times[min(len(times) - 1, int(round(q / 100 * (len(times) - 1))))]

    def summary(self) -> dict:
        ops = sorted({o for o, _s, _t in self.samples})
        return {
            "clients": self.clients, "duration_s": round(self.duration, 1), "requests": len(self.samples),
            "requests_per_s": round(len(self.samples) / self.duration, 1) if self.duration else 0,
            "statuses": dict(sorted(self.statuses().items())), "transport_errors": len(self.errors),
            "created_tasks": len(self.created_tasks), "cancelled_tasks": len(self.cancelled_tasks),
            "uploaded_versions": len(self.uploaded_versions),
            "ops": {op: {"n": sum(1 for o, _s, _t in self.samples if o == op),
                         "p50_ms": _ms(self.percentile(op, 50)), "p95_ms": _ms(self.percentile(op, 95)),
                         "p99_ms": _ms(self.percentile(op, 99))} for op in ops},
        }


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 1)


def _multipart(fields: dict[str, str], filename: str, content: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = [f"--{boundary}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n".encode()
             for k, v in fields.items()]
    parts.append(f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{filename}\"\r\n"
                 "Content-Type: application/octet-stream\r\n\r\n".encode() + content + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


class _Client(threading.Thread):
    def __init__(self, n: int, host: str, port: int, token: str, base_model: str, train_version: int,
                 until: float, result: LoadResult, chat: bool = False) -> None:
        super().__init__(daemon=True)
        self.n, self.host, self.port, self.token, self.chat = n, host, port, token, chat
        self.base_model, self.train_version, self.until, self.result = base_model, train_version, until, result
        self.conn: http.client.HTTPConnection | None = None
        self.mine: list[int] = []

    def request(self, op: str, method: str, path: str, body: bytes | None = None,
                content_type: str = "application/json") -> tuple[int, dict | None]:
        headers = {"Authorization": f"Bearer {self.token}", "Host": f"{self.host}:{self.port}"}
        if body is not None:
            headers["Content-Type"] = content_type
        for attempt in (1, 2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=120)
            started = time.monotonic()
            try:
                self.conn.request(method, path, body=body, headers=headers)
                response = self.conn.getresponse()
                data = response.read()
            except (OSError, http.client.HTTPException) as exc:
                self.conn.close()
                self.conn = None
                # A keep-alive connection the server closed between requests: retry once on a new one,
                # but only for reads (a write might have been applied).
                if attempt == 1 and method == "GET":
                    continue
                with self.result.lock:
                    self.result.errors.append(f"{op}: {type(exc).__name__}: {exc}")
                return 0, None
            elapsed = time.monotonic() - started
            if response.getheader("Connection", "").lower() == "close":
                self.conn.close()
                self.conn = None
            with self.result.lock:
                self.result.samples.append((op, response.status, elapsed))
            try:
                return response.status, json.loads(data) if data else None
            except ValueError:
                return response.status, None
        return 0, None

    def run(self) -> None:
        i = 0
        while time.monotonic() < self.until:
            i += 1
            step = i % 10
            if step in (0, 3, 6):
                self.request("list tasks", "GET", "/api/training/tasks?limit=20")
            elif step in (1, 7):
                self.request("list datasets", "GET", "/api/datasets?limit=20")
            elif step == 4:
                self.request("list v1 jobs", "GET", "/v1/fine_tuning/jobs?limit=20")
            elif step in (2, 8):
                name = f"load-{self.n}-{i}"
                body = json.dumps({"name": name, "base_model": self.base_model, "train_version": self.train_version,
                                   "params": {"n_epochs": 1, "batch_size": 1}}).encode()
                status, data = self.request("create task", "POST", "/api/training/tasks", body)
                if status == 201 and data:
                    with self.result.lock:
                        self.result.created_tasks[name] = data["id"]
                    self.mine.append(data["id"])
            elif step == 5 and self.mine:
                pk = self.mine.pop(0)
                status, _ = self.request("cancel task", "POST", f"/api/training/tasks/{pk}/cancel", b"{}")
                if status == 200:
                    with self.result.lock:
                        self.result.cancelled_tasks.add(pk)
                self.request("read task", "GET", f"/api/training/tasks/{pk}")
            elif step == 9:
                rows = [json.dumps({"messages": [{"role": "user", "content": f"q {self.n} {i} {k}"},
                                                 {"role": "assistant", "content": f"a {k}"}]}) for k in range(12)]
                body, ctype = _multipart({"name": f"load-{self.n}"}, "small.jsonl", ("\n".join(rows) + "\n").encode())
                status, data = self.request("upload", "POST", "/api/datasets", body, ctype)
                if status == 201 and data:
                    with self.result.lock:
                        self.result.uploaded_versions.add(data["id"])
            if step == 5 and self.chat:  # a short chat with the base model, decoded by the model server
                body = json.dumps({"model": self.base_model, "max_tokens": 8,
                                   "messages": [{"role": "user", "content": f"Hello from client {self.n}"}]}).encode()
                self.request("chat", "POST", "/v1/chat/completions", body)
        if self.conn is not None:
            self.conn.close()


def run_load(url: str, token: str, *, base_model: str, train_version: int, clients: int = 50,
             duration: float = 60.0, chat: bool = False) -> LoadResult:
    """``clients`` threads against ``url`` for ``duration`` seconds (a bounded loop, no think time); with ``chat``,
    each loop of ten requests also sends a short chat completion of ``base_model``."""
    host, _, port = url.removeprefix("http://").rstrip("/").partition(":")
    result = LoadResult(clients=clients, duration=duration)
    until = time.monotonic() + duration
    threads = [_Client(n, host, int(port or 80), token, base_model, train_version, until, result, chat)
               for n in range(clients)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=duration + 300)
    result.duration = time.monotonic() - started
    return result


def check_rows(result: LoadResult) -> list[str]:
    """Compare what the clients were told with the database (Django must be set up): the problems found."""
    from datasets_app.models import DatasetVersion
    from training.models import TrainingTask

    problems = []
    rows = dict(TrainingTask.objects.filter(name__startswith="load-").values_list("name", "id"))
    if rows != result.created_tasks:
        lost = set(result.created_tasks) - set(rows)
        extra = set(rows) - set(result.created_tasks)
        changed = {k for k in set(rows) & set(result.created_tasks) if rows[k] != result.created_tasks[k]}
        problems.append(f"tasks: lost {sorted(lost)[:5]}, extra {sorted(extra)[:5]}, changed {sorted(changed)[:5]}")
    not_cancelled = TrainingTask.objects.filter(pk__in=result.cancelled_tasks).exclude(status="cancelled").count()
    if not_cancelled:
        problems.append(f"{not_cancelled} cancelled tasks are not cancelled")
    versions = set(DatasetVersion.objects.filter(dataset__name__startswith="load-").values_list("pk", flat=True))
    if versions != result.uploaded_versions:
        problems.append(f"versions: lost {sorted(result.uploaded_versions - versions)[:5]}, "
                        f"extra {sorted(versions - result.uploaded_versions)[:5]}")
    duplicates = (DatasetVersion.objects.filter(dataset__name__startswith="load-").values("dataset_id", "number")
                  .distinct().count())
    if duplicates != len(versions):
        problems.append("two versions share a number")
    return problems


# ------------------------------------------------------------------------------------------------ scale


def bulk_insert(*, team, base_model, version, tasks: int, events: int, batch: int = 5000) -> dict:
    """``tasks`` tasks (all of ``team``) and ``events`` events spread over the first 10 tasks (the rest on the
    first): returns the seconds each took and the id of the task holding most events."""
    from django.db import connection, transaction
    from django.utils import timezone

    from training.models import TrainingEvent, TrainingTask

    now = timezone.now()
    t0 = time.monotonic()
    with transaction.atomic():
        for start in range(0, tasks, batch):
            TrainingTask.objects.bulk_create([
                TrainingTask(name=f"bulk-{i}", team=team, base_model=base_model, train_version=version,
                             status="succeeded" if i % 3 else "failed", queued_at=now, created_at=now)
                for i in range(start, min(tasks, start + batch))], batch_size=batch)
    t_tasks = time.monotonic() - t0
    ids = list(TrainingTask.objects.filter(team=team, name__startswith="bulk-").order_by("pk")
               .values_list("pk", flat=True)[:10])
    big = ids[0]
    table = TrainingEvent._meta.db_table
    t0 = time.monotonic()
    # executemany of plain rows: the ORM's bulk_create builds a model object per row, about 3x slower at 1M.
    sql = (f"INSERT INTO {table} (task_id, level, type, message, data, created_at) "
           f"VALUES (%s, %s, %s, %s, %s, %s)")
    stamp = now.replace(tzinfo=None) if connection.vendor == "mysql" else now.isoformat()
    with transaction.atomic(), connection.cursor() as cursor:
        for start in range(0, events, batch):
            rows = []
            for i in range(start, min(events, start + batch)):
                task = big if i % 10 < 5 else ids[i % len(ids)]
                data = json.dumps({"step": i, "train_loss": 1.0 / (1 + i % 97)}) if i % 2 else None
                rows.append((task, "info", "metrics" if data else "message", f"Step {i}", data, stamp))
            cursor.executemany(sql, rows)
    t_events = time.monotonic() - t0
    return {"tasks_s": t_tasks, "events_s": t_events, "big_task": big}


def explain(queryset) -> str:
    """The database's plan for ``queryset`` as text (SQLite: EXPLAIN QUERY PLAN; MySQL: EXPLAIN rows)."""
    from django.db import connection

    sql, params = queryset.query.sql_with_params()
    with connection.cursor() as cursor:
        if connection.vendor == "sqlite":
            cursor.execute("EXPLAIN QUERY PLAN " + sql, params)
            return "\n".join(str(r[-1]) for r in cursor.fetchall())
        cursor.execute("EXPLAIN " + sql, params)
        cols = [c[0] for c in cursor.description]
        rows = [dict(zip(cols, r, strict=False)) for r in cursor.fetchall()]
        return "\n".join(f"table={r.get('table')} type={r.get('type')} key={r.get('key')} rows={r.get('rows')} "
                         f"extra={r.get('Extra') or ''}" for r in rows)


def timed(fn, repeat: int = 5) -> float:
    """Median seconds of ``fn()`` over ``repeat`` runs."""
    times = []
    for _ in range(repeat):
        t0 = time.monotonic()
        fn()
        times.append(time.monotonic() - t0)
    return statistics.median(times)


def scale_queries(*, member, superuser, big_task: int) -> dict:
    """Plans and timings of the task list (a team member's and a superuser's; first and a deep page) and of
    keyset event pages. Each timing runs a fresh clone of the queryset (a sliced queryset caches its rows)."""
    from accounts.visibility import Principal
    from jobs.services import job_events_page
    from training import services
    from training.models import TrainingTask

    task = TrainingTask.objects.get(pk=big_task)
    # As /api/training/tasks runs them: no joins in the page query (related rows are prefetched).
    team_qs = services.training_task_list(user=Principal(user=member), team=None, status=None).select_related(None)
    all_qs = services.training_task_list(user=Principal(user=superuser), team=None, status=None).select_related(None)
    middle_id = task.events.order_by("id").values_list("id", flat=True)[200_000 if task.events.count() > 200_000 else 10]
    queries = {
        "team task list, first page": team_qs[:50],
        "team task list, offset 9000": team_qs[9000:9050],
        "superuser task list (all teams), first page": all_qs[:50],
        "events, first page": task.events.order_by("id")[:101],
        "events, keyset page deep in the log": task.events.order_by("id").filter(id__gt=middle_id)[:101],
    }
    out = {name: (timed(lambda qs=qs: list(qs.all())), explain(qs)) for name, qs in queries.items()}
    out["events, /api/ page (service)"] = (
        timed(lambda: job_events_page(job=task, after=middle_id, limit=100)), "")
    return out


# ------------------------------------------------------------------------------------------------ self-hosting


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _environment(database_url: str | None, data_dir: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "PYTEST"))}
    env.update({"DATA_DIR": str(data_dir), "DJANGO_DEBUG": "1", "LOG_LEVEL": "WARNING", "HF_HUB_OFFLINE": "1",
                "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                "DATABASE_URL": database_url or f"sqlite:///{data_dir / 'bench.sqlite3'}"})
    return env


def _prepare_database(env: dict) -> None:
    url = env["DATABASE_URL"]
    if url.startswith("mysql://"):
        name = url.rsplit("/", 1)[1].split("?")[0]
        subprocess.run(["mysql", "-uroot", "-h127.0.0.1", "-e",
                        f"DROP DATABASE IF EXISTS `{name}`; CREATE DATABASE `{name}` CHARACTER SET utf8mb4 "
                        "COLLATE utf8mb4_unicode_ci"], check=True)
    subprocess.run([sys.executable, "manage.py", "migrate", "--no-input", "-v", "0"], cwd=ROOT, env=env, check=True)


def _setup_django(env: dict) -> None:
    os.environ.update(env)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()


def _fixtures(data_dir: Path):
    """A team, a member with a token, the tiny test model as a base model and a dataset version."""
    import io

    from django.contrib.auth import get_user_model

    from accounts.services import api_token_create, membership_set, team_create
    from catalog.model_scan import inspect_hf_dir
    from catalog.models import BaseModel
    from datasets_app.services import dataset_upload
    from tests.training.tiny import save_tiny_model

    team = team_create(name="bench")
    user = get_user_model().objects.create_user("bench", password=uuid.uuid4().hex)
    membership_set(team=team, user=user, role="admin")
    folder = save_tiny_model(data_dir / "models" / "tiny-llama")
    info = inspect_hf_dir(folder)
    base = BaseModel.objects.create(name="tiny-llama", kind=info.kind, path=str(folder), architecture=info.architecture,
                                    parameter_count=info.parameter_count, size_bytes=info.size_bytes,
                                    tokenizer_present=True, has_chat_template=True, config=info.config)
    body = "".join(json.dumps({"messages": [{"role": "user", "content": f"question {i}"},
                                            {"role": "assistant", "content": f"answer {i}"}]}) + "\n"
                   for i in range(16)).encode()
    version = dataset_upload(user=user, team=team, name="faq", fileobj=io.BytesIO(body), filename="faq.jsonl")
    _token, secret = api_token_create(user=user, team=team)
    return team, user, base, version, secret


def _wait_listening(port: int, proc: subprocess.Popen, what: str, log: Path) -> None:
    for _ in range(600):
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited; see {log}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"{what} did not start; see {log}")


def _stop_group(proc: subprocess.Popen) -> None:
    """Stop a server we started in its own session by its process group (gunicorn's workers with it)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def _warm_up(port: int, token: str, *, base_model: str, workers: int) -> None:
    """Each gunicorn worker imports the project on its first request and the model server loads the base model on
    its first chat: done before the clock starts (2 concurrent rounds per worker, reads and one chat each)."""
    def one(n: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        for method, path, body in (("GET", "/api/training/tasks?limit=20", None),
                                   ("POST", "/v1/chat/completions", json.dumps(
                                       {"model": base_model, "max_tokens": 2,
                                        "messages": [{"role": "user", "content": f"warm-up {n}"}]}))):
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            response.read()
            if response.status != 200:
                raise SystemExit(f"warm-up {method} {path}: HTTP {response.status}")
        conn.close()

    threads = [threading.Thread(target=one, args=(n,)) for n in range(2 * workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def cmd_load(args) -> str:
    data_dir = Path(tempfile.mkdtemp(prefix="api-load-"))
    load = os.getloadavg()[0]
    env = _environment(args.database_url, data_dir)
    _prepare_database(env)
    _setup_django(env)
    _team, _user, base, version, token = _fixtures(data_dir)
    # The team's queue quota and chat rate limits are rules of their own, tested elsewhere: lifted here, where
    # thousands of requests measure the servers and the database.
    env.update({"TEAM_MAX_ACTIVE_JOBS": "1000000", "INFERENCE_TEAM_REQUESTS_PER_MINUTE": "1000000",
                "INFERENCE_TEAM_TOKENS_PER_MINUTE": "1000000000", "SERVING_TORCH_THREADS": "1"})
    models_port, port = _free_port(), _free_port()
    env["SERVING_URL"] = f"http://127.0.0.1:{models_port}"
    # As `make serve` runs them: the model server, then gunicorn (gthread, 4 threads a worker) pointed at it, each
    # in its own session so that stopping its process group stops all of it. Logs go to files: a pipe nobody reads
    # fills up and stalls a server.
    models_log, web_log = data_dir / "serve_models.log", data_dir / "gunicorn.log"
    with open(models_log, "wb") as log:
        models = subprocess.Popen([sys.executable, "manage.py", "serve_models", "--port", str(models_port)],
                                  cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    web = None
    try:
        _wait_listening(models_port, models, "the model server", models_log)
        with open(web_log, "wb") as log:
            web = subprocess.Popen([sys.executable, "-m", "gunicorn", "config.wsgi:application", "--workers",
                                    str(args.web_workers), "--worker-class", "gthread", "--threads", "4", "--bind",
                                    f"127.0.0.1:{port}", "--timeout", "600", "--graceful-timeout", "30"],
                                   cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        _wait_listening(port, web, "gunicorn", web_log)
        _warm_up(port, token, base_model=base.name, workers=args.web_workers)
        result = run_load(f"http://127.0.0.1:{port}", token, base_model=base.name, train_version=version.pk,
                          clients=args.clients, duration=args.duration, chat=True)
    finally:
        if web is not None:
            _stop_group(web)
        _stop_group(models)
    problems = check_rows(result)
    summary = result.summary()
    print(json.dumps(summary, indent=1))
    print("row checks:", problems or "ok")
    shutil.rmtree(data_dir, ignore_errors=True)
    engine = "MariaDB" if env["DATABASE_URL"].startswith("mysql") else "SQLite (WAL)"
    lines = [f"### Load: {args.clients} clients for {args.duration:.0f} s, gunicorn ({args.web_workers} workers × 4 "
             f"threads) + the model server, {engine}", "",
             f"Load average before the run: {load:.1f} on {os.cpu_count()} cores"
             + (" (shared with other work running at the same time)." if load > 1.5 else "."),
             "",
             f"{summary['requests']} requests, {summary['requests_per_s']} req/s; statuses {summary['statuses']}; "
             f"transport errors {summary['transport_errors']}; 5xx: {len(result.server_errors())}. "
             f"{summary['created_tasks']} tasks created, {summary['cancelled_tasks']} cancelled, "
             f"{summary['uploaded_versions']} files uploaded; row checks: {'ok' if not problems else problems}.", "",
             "| operation | requests | p50 ms | p95 ms | p99 ms |", "| --- | ---: | ---: | ---: | ---: |"]
    for op, s in summary["ops"].items():
        mark = " (list)" if op in LIST_OPS else ""
        lines.append(f"| {op}{mark} | {s['n']} | {s['p50_ms']} | {s['p95_ms']} | {s['p99_ms']} |")
    return "\n".join(lines)


def cmd_scale(args) -> str:
    data_dir = Path(tempfile.mkdtemp(prefix="api-scale-"))
    env = _environment(args.database_url, data_dir)
    _prepare_database(env)
    _setup_django(env)
    team, user, base, version, _token = _fixtures(data_dir)
    inserted = bulk_insert(team=team, base_model=base, version=version, tasks=args.tasks, events=args.events)
    from django.contrib.auth import get_user_model
    from django.db import connection

    with connection.cursor() as cursor:  # fresh statistics, as after a day of normal use
        cursor.execute("ANALYZE TABLE training_trainingtask, training_trainingevent" if connection.vendor == "mysql"
                       else "ANALYZE")
    superuser = get_user_model().objects.create_superuser("bench-root", password=uuid.uuid4().hex)
    queries = scale_queries(member=user, superuser=superuser, big_task=inserted["big_task"])
    shutil.rmtree(data_dir, ignore_errors=True)
    engine = "MariaDB" if env["DATABASE_URL"].startswith("mysql") else "SQLite (WAL)"
    lines = [f"### Scale: {args.tasks:,} tasks and {args.events:,} events, {engine}", "",
             f"Bulk insert: tasks {inserted['tasks_s']:.1f} s, events {inserted['events_s']:.1f} s "
             f"({args.events / max(inserted['events_s'], 1e-9):,.0f} rows/s).", "",
             "| query | median ms | plan |", "| --- | ---: | --- |"]
    for name, (seconds, plan) in queries.items():
        plan_text = _short_plan(plan)
        lines.append(f"| {name} | {seconds * 1000:.1f} | {plan_text} |")
    text = "\n".join(lines)
    print(text)
    return text


def _short_plan(plan: str) -> str:
    return " / ".join(line.strip() for line in plan.splitlines())[:300].replace("|", "\\|")


def write_results(key: str, section: str) -> None:
    """Replace the ``key`` block inside our RESULTS.md section (other scripts' sections stay as they are)."""
    text = RESULTS.read_text(encoding="utf-8") if RESULTS.exists() else "# Benchmark results\n"
    if START not in text:
        text = text.rstrip() + (f"\n\n## API under load and at scale (`benchmarks/api_load.py`)\n\n{START}\n{END}\n")
    inner = re.search(re.escape(START) + r"\n?(.*?)" + re.escape(END), text, flags=re.S).group(1)
    blocks = dict(re.findall(r"<!-- (\S+) -->\n(.*?)<!-- /\1 -->\n", inner, flags=re.S))
    blocks[key] = section.rstrip() + "\n"
    machine = f"_{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}_\n"
    body = machine + "".join(f"\n<!-- {k} -->\n{v}<!-- /{k} -->\n" for k, v in sorted(blocks.items()))
    text = re.sub(re.escape(START) + r".*?" + re.escape(END), lambda _m: f"{START}\n{body}{END}", text, flags=re.S)
    RESULTS.write_text(text, encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    load = sub.add_parser("load", help="concurrent clients against gunicorn + the model server")
    load.add_argument("--clients", type=int, default=50)
    load.add_argument("--web-workers", type=int, default=3, help="gunicorn workers (make serve's WEB_WORKERS)")
    load.add_argument("--duration", type=float, default=60.0)
    scale = sub.add_parser("scale", help="bulk insert tasks and events, time pagination")
    scale.add_argument("--tasks", type=int, default=10_000)
    scale.add_argument("--events", type=int, default=1_000_000)
    for p in (load, scale):
        p.add_argument("--database-url", default=None,
                       help="default: a temporary SQLite file; mysql://... is dropped and re-created")
        p.add_argument("--no-write", action="store_true", help="Print only; do not update RESULTS.md.")
    args = parser.parse_args()
    section = cmd_load(args) if args.command == "load" else cmd_scale(args)
    if not args.no_write:
        engine = "mysql" if (args.database_url or "").startswith("mysql") else "sqlite"
        write_results(f"{args.command}-{engine}", section)


if __name__ == "__main__":
    main()

