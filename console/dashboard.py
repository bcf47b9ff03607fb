"""The admin index as the team's cockpit: jobs running, queued and failed, workers, device, disk, team counts.

``dashboard_data(user)`` computes everything from our own rows, through the visibility rule (a member
sees their teams' jobs and counts, a superuser sees all); the admin index renders it, and
``/admin/dashboard/`` serves it again as an HTML fragment (polled by the page) or as JSON.

Worker status comes from three sources, none needing a cache server:
- the ``Worker`` table (``jobs.scheduling``): each queue worker process records its host, hardware (CUDA GPUs
  with their memory, CPU cores, free memory), labels and the jobs it supervises, at start and with a heartbeat
  every five seconds, from whichever host it runs on;
- django-q2's cluster statistics (``Stat``): each ``qcluster`` sentinel saves its status every half second
  with a three-second lifetime into the ``queue-stats`` cache (a file cache under ``DATA_DIR``, shared by the
  processes of one host). A cluster is alive while its entry is there, idle or busy.
- our own job heartbeats: the supervisor of a running job writes ``heartbeat_at`` every five seconds, with
  the worker's ``host:pid``, so a worker on another host shows as alive while it runs a job.

The server-wide facts (workers, device, disk of ``DATA_DIR``) name no team's objects and are shown to
every console user; job rows and counts are filtered.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from django.apps import apps
from django.conf import settings
from django.db.models import Count, Q
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.template.loader import render_to_string
from django.urls import NoReverseMatch, reverse
from django.utils import timezone

from accounts import visibility
from core.admin_ui import format_duration, job_progress, status_badge
from core.commands import format_bytes
from datasets_app.models import Dataset, DatasetVersion
from jobs.models import JobStatus, Worker
from jobs.registry import kinds
from jobs.scheduling import is_live
from ml.probe import available_cpus
from training.models import Adapter

DATA_SUBFOLDERS = ("datasets", "models", "adapters", "runs", "exports")
QUEUE_LIMIT = 20
FAILURE_LIMIT = 10
FAILURE_WINDOW = timedelta(days=7)
DISK_CACHE_SECONDS = 30
GPU_CACHE_SECONDS = 10
REFRESH_SECONDS = 5


# ------------------------------------------------------------------------------------------------ jobs

def job_kinds() -> list:
    """Every registered job kind (training, classifier, evaluation, and any added later such as merges)."""
    return kinds()


def _admin_url(obj) -> str:
    meta = obj._meta
    try:
        return reverse(f"admin:{meta.app_label}_{meta.model_name}_change", args=[obj.pk])
    except NoReverseMatch:
        return ""


def _job_row(kind, job, now) -> dict[str, Any]:
    stale_after = getattr(settings, "JOB_STALE_SECONDS", 90)
    beat_age = (now - job.heartbeat_at).total_seconds() if job.heartbeat_at else None
    return {
        "kind": kind.name,
        "kind_label": str(kind.model._meta.verbose_name),
        "id": job.pk,
        "name": job.name,
        "team": job.team.name,
        "team_id": job.team_id,
        "status": job.status,
        "percent": job.progress_percent,
        "step": job.step,
        "total_steps": job.total_steps,
        "eta_seconds": job.eta_seconds,
        "priority": job.priority,
        "device": job.device,
        "worker": job.worker,
        "heartbeat_age": beat_age,
        "stale": job.status == "running" and (beat_age is None or beat_age > stale_after),
        "queued_for": (now - job.queued_at).total_seconds() if job.queued_at else None,
        "running_for": job.duration_seconds,
        "finished_at": job.finished_at,
        "created_at": job.created_at,
        "error_code": job.error_code,
        "error_message": (job.error_message or "")[:300],
        "url": _admin_url(job),
        "badge": status_badge(job.status),
        "progress_html": job_progress(job),
        "eta_human": format_duration(job.eta_seconds) if job.eta_seconds else "",
        "waiting_human": format_duration((now - job.queued_at).total_seconds()) if job.queued_at else "",
        "running_human": format_duration(job.duration_seconds) if job.started_at else "",
        "heartbeat_human": format_duration(beat_age) if beat_age is not None else "never",
    }


def _visible_jobs(user, kind):
    return visibility.visible_to(user, kind.model.objects.select_related("team"))


def jobs_overview(user) -> dict[str, list[dict]]:
    """Running jobs (with progress and ETA), the queue in the order the workers take it, recent failures."""

    now = timezone.now()
    running, queued, failed = [], [], []
    for kind in job_kinds():
        qs = _visible_jobs(user, kind)
        running += [_job_row(kind, j, now) for j in qs.filter(status__in=[JobStatus.RUNNING, JobStatus.PAUSED])
                    .order_by("started_at", "pk")[:50]]
        queued += [(j.priority, j.queued_at or j.created_at, j.pk, _job_row(kind, j, now))
                   for j in qs.filter(status__in=[JobStatus.QUEUED, JobStatus.VALIDATING])
                   .order_by("-priority", "queued_at", "pk")[:QUEUE_LIMIT]]
        recent = Q(finished_at__gte=now - FAILURE_WINDOW) | Q(finished_at__isnull=True,
                                                               created_at__gte=now - FAILURE_WINDOW)
        failed += [_job_row(kind, j, now) for j in qs.filter(recent, status=JobStatus.FAILED)
                   .order_by("-finished_at", "-pk")[:FAILURE_LIMIT]]
    # The order of jobs.runtime.next_candidates: priority first, then first come, first served.
    queued.sort(key=lambda t: (-t[0], t[1], t[2]))
    queue = []
    for position, (*_, row) in enumerate(queued[:QUEUE_LIMIT], start=1):
        row["position"] = position
        queue.append(row)
    running.sort(key=lambda r: (r["status"] != "running", -(r["running_for"] or 0)))
    failed.sort(key=lambda r: r["finished_at"] or r["created_at"], reverse=True)
    return {"running": running, "queued": queue, "failed": failed[:FAILURE_LIMIT]}


# --------------------------------------------------------------------------------------------- workers

def queue_clusters() -> list[dict[str, Any]]:
    """Alive qcluster processes from django-q2's statistics (empty when none runs or no stats cache is set)."""
    try:
        from django_q.status import Stat

        stats = Stat.get_all()
    except Exception:  # a missing or unreadable stats cache means "unknown", never a broken dashboard
        return []
    clusters = []
    for stat in stats:
        tob = getattr(stat, "tob", None)
        clusters.append({
            "host": stat.host,
            "cluster_id": str(stat.cluster_id),
            "pid": stat.pid,
            "status": str(stat.status),
            "workers": len(stat.workers or []),
            "uptime_seconds": (timezone.now() - tob).total_seconds() if tob else None,
            "uptime_human": format_duration((timezone.now() - tob).total_seconds()) if tob else "",
        })
    clusters.sort(key=lambda c: (c["host"], c["pid"] or 0))
    return clusters


def busy_workers() -> list[dict[str, Any]]:
    """Workers supervising a job right now, from our job heartbeats (all teams: no job is named)."""

    fresh = timezone.now() - timedelta(seconds=getattr(settings, "JOB_STALE_SECONDS", 90))
    seen: dict[str, dict[str, Any]] = {}
    for kind in job_kinds():
        rows = kind.model.objects.filter(status=JobStatus.RUNNING, heartbeat_at__gte=fresh).exclude(worker="")
        for worker, beat, device in rows.values_list("worker", "heartbeat_at", "device"):
            entry = seen.setdefault(worker, {"worker": worker, "jobs": 0, "heartbeat_at": beat, "devices": set()})
            entry["jobs"] += 1
            entry["heartbeat_at"] = max(entry["heartbeat_at"], beat)
            if device:
                entry["devices"].add(device)
    out = []
    for entry in sorted(seen.values(), key=lambda e: e["worker"]):
        entry["devices"] = sorted(entry["devices"])
        entry["heartbeat_age"] = (timezone.now() - entry["heartbeat_at"]).total_seconds()
        entry["heartbeat_human"] = format_duration(entry["heartbeat_age"])
        out.append(entry)
    return out


WORKER_GONE_SHOWN = timedelta(hours=1)


def _running_label(entry: dict, visible_teams: set[int]) -> dict[str, Any]:
    """A job a worker runs, named only for a user who can see its team."""
    if entry.get("team") not in visible_teams:
        return {"label": "a job of another team", "url": ""}
    try:
        model = apps.get_model(str(entry.get("kind", "")))
    except (LookupError, ValueError):
        return {"label": f"job {entry.get('name')}", "url": ""}
    return {"label": f"{model._meta.verbose_name} {entry.get('name')}", "url": _admin_url(model(pk=entry.get("id")))}


def worker_hosts(user) -> list[dict[str, Any]]:
    """The workers of every host with their hardware and what each runs (live ones first, then those gone in the
    last hour); jobs of teams the user cannot see are not named."""
    now = timezone.now()
    visible = set(visibility.teams(user).values_list("pk", flat=True))
    rows = []
    for worker in Worker.objects.filter(heartbeat_at__gte=now - WORKER_GONE_SHOWN):
        live = is_live(worker, now=now)
        age = (now - worker.heartbeat_at).total_seconds()
        gpus = [{"index": g.get("index"), "name": g.get("name"),
                 "memory_human": format_bytes(int(g.get("memory_bytes") or 0))} for g in worker.gpus or []]
        rows.append({
            "name": worker.name, "host": worker.host, "pid": worker.pid, "live": live, "device": worker.device,
            "gpus": gpus, "cpu_count": worker.cpu_count, "labels": list(worker.labels or []),
            "memory_human": f"{format_bytes(worker.memory_free_bytes)} free of {format_bytes(worker.memory_total_bytes)}",
            "running": [_running_label(e, visible) for e in (worker.running or [])] if live else [],
            "heartbeat_age": age, "heartbeat_human": format_duration(age),
            "uptime_human": format_duration((now - worker.started_at).total_seconds()),
        })
    rows.sort(key=lambda r: (not r["live"], r["name"]))
    return rows


# ---------------------------------------------------------------------------------------------- device

_gpu_cache: dict[str, Any] = {"at": 0.0, "value": None}
_lock = threading.Lock()


def gpus() -> list[dict[str, Any]]:
    """GPUs with their memory in use, from nvidia-smi (no CUDA context in the web process); [] without one."""
    with _lock:
        if time.monotonic() - _gpu_cache["at"] < GPU_CACHE_SECONDS and _gpu_cache["value"] is not None:
            return _gpu_cache["value"]
    found: list[dict[str, Any]] = []
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi, "--query-gpu=index,name,memory.used,memory.total,utilization.gpu",
                                  "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=5,
                                 check=True).stdout
        except (OSError, subprocess.SubprocessError):
            out = ""
        for line in out.strip().splitlines():
            parts = [p.strip() for p in line.split(",")]
            if len(parts) < 4:
                continue
            try:
                used, total = int(float(parts[2])) * 1024**2, int(float(parts[3])) * 1024**2
            except ValueError:
                continue
            util = parts[4] if len(parts) > 4 and parts[4].replace(".", "", 1).isdigit() else None
            found.append({"index": parts[0], "name": parts[1], "memory_used": used, "memory_total": total,
                          "memory_human": f"{format_bytes(used)} of {format_bytes(total)}",
                          "memory_percent": round(100 * used / total, 1) if total else 0.0,
                          "utilization": float(util) if util is not None else None})
    with _lock:
        _gpu_cache.update(at=time.monotonic(), value=found)
    return found


def device_info() -> dict[str, Any]:
    import psutil

    mem = psutil.virtual_memory()
    gpu_list = gpus()
    configured = getattr(settings, "TRAINING_DEVICE", "auto")
    return {
        "configured": configured,
        "device": configured if configured != "auto" else ("cuda" if gpu_list else "cpu"),
        "gpus": gpu_list,
        "cpu_threads": available_cpus(),
        "ram_used": mem.total - mem.available,
        "ram_total": mem.total,
        "ram_percent": mem.percent,
        "ram_human": f"{format_bytes(mem.total - mem.available)} of {format_bytes(mem.total)}",
    }


# ------------------------------------------------------------------------------------------------ disk

_disk_cache: dict[str, tuple[float, dict]] = {}


def folder_size(path: Path) -> tuple[int, int]:
    """(bytes, files) under ``path``, not following symlinks; unreadable entries are skipped."""
    total = files = 0
    stack = [str(path)]
    while stack:
        current = stack.pop()
        try:
            with os.scandir(current) as entries:
                for entry in entries:
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            stack.append(entry.path)
                        elif entry.is_file(follow_symlinks=False):
                            total += entry.stat(follow_symlinks=False).st_size
                            files += 1
                    except OSError:
                        continue
        except OSError:
            continue
    return total, files


def disk_usage(data_dir: Path | str | None = None, *, fresh: bool = False) -> dict[str, Any]:
    """Sizes of DATA_DIR's subfolders and the free space of its file system (cached for a few seconds:
    walking checkpoints on every refresh of every open console would be wasted work)."""
    root = Path(data_dir or settings.DATA_DIR)
    key = str(root)
    cached = _disk_cache.get(key)
    if cached and not fresh and time.monotonic() - cached[0] < DISK_CACHE_SECONDS:
        return cached[1]
    sizes = {name: (0, 0) for name in DATA_SUBFOLDERS}
    other = 0
    try:
        entries = list(os.scandir(root))
    except OSError:
        entries = []
    for entry in entries:  # one walk: the known subfolders, and everything else as "other"
        try:
            if entry.name in sizes and entry.is_dir(follow_symlinks=False):
                sizes[entry.name] = folder_size(Path(entry.path))
            elif entry.is_dir(follow_symlinks=False):
                other += folder_size(Path(entry.path))[0]
            elif entry.is_file(follow_symlinks=False):
                other += entry.stat(follow_symlinks=False).st_size
        except OSError:
            continue
    folders = [{"name": name, "bytes": size, "files": files, "human": format_bytes(size)}
               for name, (size, files) in sizes.items()]
    everything = sum(size for size, _ in sizes.values()) + other
    folders.append({"name": "other", "bytes": other, "files": None, "human": format_bytes(other)})
    try:
        fs = shutil.disk_usage(root)
        fs_info = {"total": fs.total, "used": fs.used, "free": fs.free,
                   "percent": round(100 * fs.used / fs.total, 1) if fs.total else 0.0}
    except OSError:
        fs_info = {"total": 0, "used": 0, "free": 0, "percent": 0.0}
    for folder in folders:
        folder["percent"] = round(100 * folder["bytes"] / everything, 1) if everything else 0.0
    result = {"path": key, "total_bytes": everything, "total_human": format_bytes(everything),
              "folders": folders, "filesystem": fs_info,
              "free_human": format_bytes(fs_info["free"]), "fs_total_human": format_bytes(fs_info["total"])}
    _disk_cache[key] = (time.monotonic(), result)
    return result


# ---------------------------------------------------------------------------------------------- counts

def team_counts(user) -> list[dict[str, Any]]:
    """Per visible team: datasets, versions, jobs by kind, adapters, and jobs running / queued / failed."""

    teams = list(visibility.teams(user).order_by("name"))
    ids = [t.pk for t in teams]
    rows = {t.pk: {"team": t.name, "team_id": t.pk, "datasets": 0, "versions": 0, "adapters": 0, "jobs": {},
                   "running": 0, "queued": 0, "failed": 0, "url": _admin_url(t)} for t in teams}
    if not ids:
        return []

    def per_team(qs, field: str = "team_id", **annotations):
        return qs.filter(**{f"{field}__in": ids}).values(field).annotate(**annotations)

    for r in per_team(Dataset.objects.all(), n=Count("id")):
        rows[r["team_id"]]["datasets"] = r["n"]
    for r in per_team(DatasetVersion.objects.all(), "dataset__team_id", n=Count("id")):
        rows[r["dataset__team_id"]]["versions"] = r["n"]
    for r in per_team(Adapter.objects.exclude(status=Adapter.Status.ARCHIVED), n=Count("id")):
        rows[r["team_id"]]["adapters"] = r["n"]
    for kind in job_kinds():
        label = str(kind.model._meta.verbose_name_plural)
        for r in per_team(kind.model.objects.all(), n=Count("id"),
                          running=Count("id", filter=Q(status=JobStatus.RUNNING)),
                          queued=Count("id", filter=Q(status__in=[JobStatus.QUEUED, JobStatus.VALIDATING])),
                          failed=Count("id", filter=Q(status=JobStatus.FAILED))):
            row = rows[r["team_id"]]
            row["jobs"][label] = r["n"]
            row["running"] += r["running"]
            row["queued"] += r["queued"]
            row["failed"] += r["failed"]
    labels = [str(k.model._meta.verbose_name_plural) for k in job_kinds()]
    for row in rows.values():
        row["job_counts"] = [(label, row["jobs"].get(label, 0)) for label in labels]
    return [rows[pk] for pk in ids]


# ------------------------------------------------------------------------------------------------ all

def dashboard_data(user) -> dict[str, Any]:
    jobs_ = jobs_overview(user)
    clusters = queue_clusters()
    busy = busy_workers()
    hosts = worker_hosts(user)
    live = sum(1 for w in hosts if w["live"])
    return {
        **jobs_,
        "workers": {"clusters": clusters, "busy": busy, "hosts": hosts,
                    "alive": live or len(clusters) or len(busy),
                    "source": "worker heartbeats" if live else
                    ("queue stats + job heartbeats" if clusters else "job heartbeats")},
        "device": device_info(),
        "disk": disk_usage(),
        "teams": team_counts(user),
        "job_kinds": [str(k.model._meta.verbose_name_plural) for k in job_kinds()],
        "generated_at": timezone.now(),
        "refresh_seconds": REFRESH_SECONDS,
        "is_superuser": bool(getattr(user, "is_superuser", False)),
    }


# ----------------------------------------------------------------------------------------------- views

def index_view(request: HttpRequest) -> HttpResponse:
    """The admin index with the dashboard above the app list."""
    from django.contrib import admin

    return admin.site.index(request, extra_context={"dashboard": dashboard_data(request.user)})


def fragment_view(request: HttpRequest) -> HttpResponse:
    """The dashboard panel alone (polled by the index page), or its data as JSON with ``?format=json``."""
    data = dashboard_data(request.user)
    if request.GET.get("format") == "json":
        return JsonResponse(data)
    return HttpResponse(render_to_string("admin/dashboard/panel.html", {"dashboard": data}, request=request))

