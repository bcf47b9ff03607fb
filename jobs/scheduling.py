"""Which worker may run which job: each queue worker process records its hardware in ``Worker`` (at start and with
every heartbeat), a job's ``requirements`` are matched against it at the claim, and a queued job says why it
waits (``job_waiting_reason``) from the live workers, instead of waiting silently.

Hardware is probed without CUDA: GPUs come from ``nvidia-smi`` in a short subprocess (a CUDA context in the
queue worker would be inherited by, and break, the children it forks), CPU cores from the affinity mask,
memory from psutil.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
from datetime import timedelta
from functools import lru_cache

import psutil
from django.conf import settings
from django.utils import timezone

from jobs.models import Job, JobStatus, Worker
from jobs.registry import kinds
from jobs.requirements import requirements_parse, requirements_unmet
from ml.probe import available_cpus

log = logging.getLogger(__name__)

# Rows of workers gone for longer than this are deleted when a worker starts (default names carry a pid).
FORGET_AFTER = timedelta(days=1)


# ------------------------------------------------------------------------------------------- identity

def supervisor_id() -> str:
    """What a job's ``worker`` column says: ``host:pid`` of the supervising process (the recovery of a dead
    worker's jobs on the same host reads the pid), then the worker's name when one is set."""
    base = f"{socket.gethostname()}:{os.getpid()}"
    return f"{base} ({settings.WORKER_NAME})" if settings.WORKER_NAME else base


def worker_name() -> str:
    """WORKER_NAME, or host:pid; with several queue processes per worker (Q_WORKERS > 1) each is NAME:pid."""
    if not settings.WORKER_NAME:
        return f"{socket.gethostname()}:{os.getpid()}"
    if settings.Q_CLUSTER.get("workers", 1) > 1:
        return f"{settings.WORKER_NAME}:{os.getpid()}"
    return settings.WORKER_NAME


# ------------------------------------------------------------------------------------------- hardware

def _visible(gpus: list[dict]) -> list[dict]:
    """Only the GPUs CUDA_VISIBLE_DEVICES lets this worker's children use (indices or UUIDs), renumbered."""
    raw = os.environ.get("CUDA_VISIBLE_DEVICES")
    if raw is None:
        return gpus
    wanted = [item.strip() for item in raw.split(",") if item.strip()]
    chosen = []
    for item in wanted:
        if item.startswith("-"):  # "-1" (or any invalid entry) hides the rest from CUDA
            break
        match = next((g for g in gpus if item in (g["index"], g["uuid"])), None)
        if match is None:
            break
        chosen.append(match)
    return [{**g, "index": str(i)} for i, g in enumerate(chosen)]


@lru_cache(maxsize=1)
def probe_gpus() -> tuple[dict, ...]:
    """CUDA GPUs of this host as nvidia-smi lists them (index, uuid, name, memory_bytes); none without it."""
    smi = shutil.which("nvidia-smi")
    if not smi:
        return ()
    try:
        out = subprocess.run([smi, "--query-gpu=index,uuid,name,memory.total", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=15, check=True).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("nvidia-smi failed (%s): this worker reports no GPU", exc)
        return ()
    gpus = []
    for line in out.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < 4:
            continue
        try:
            memory = int(float(parts[3])) * 1024**2
        except ValueError:
            continue
        gpus.append({"index": parts[0], "uuid": parts[1], "name": parts[2], "memory_bytes": memory})
    return tuple(_visible(gpus))


def hardware() -> dict:
    """This process's hardware as the Worker row records it."""
    gpus = [{k: g[k] for k in ("index", "name", "memory_bytes")} for g in probe_gpus()]
    wanted = settings.TRAINING_DEVICE
    device = wanted if wanted in ("cpu", "cuda") else ("cuda" if gpus else "cpu")
    memory = psutil.virtual_memory()
    return {"host": socket.gethostname(), "pid": os.getpid(), "device": device, "gpus": gpus,
            "cpu_count": available_cpus(), "memory_total_bytes": memory.total, "memory_free_bytes": memory.available,
            "labels": list(settings.WORKER_LABELS)}


# ------------------------------------------------------------------------------------------- the table

def worker_register() -> Worker:
    """Record this worker process (its hardware, a fresh heartbeat, nothing running); forget long-gone ones."""
    now = timezone.now()
    Worker.objects.filter(heartbeat_at__lt=now - FORGET_AFTER).delete()
    worker, _ = Worker.objects.update_or_create(name=worker_name(), defaults={
        **hardware(), "started_at": now, "heartbeat_at": now, "running": []})
    return worker


def worker_beat(*, running: list[dict]) -> None:
    """The worker's heartbeat: alive, its free memory, and the jobs it supervises now."""
    updated = Worker.objects.filter(name=worker_name()).update(
        heartbeat_at=timezone.now(), memory_free_bytes=psutil.virtual_memory().available, running=running)
    if not updated:  # deleted meanwhile (by an operator, say): record it again
        worker_register()
        Worker.objects.filter(name=worker_name()).update(running=running)


def running_entry(job: Job) -> dict:
    return {"kind": job._meta.label_lower, "id": job.pk, "name": job.name, "team": job.team_id}


def holder_is_dead(worker: str) -> bool:
    """True when ``worker`` ("host:pid ...") names a process of this host that no longer runs (or is a zombie).

    Lets a restarted worker recover its predecessor's jobs at once instead of waiting for their heartbeat
    to go stale; on another host, or when unsure, it says False and the heartbeat rule decides.
    """
    host, _, rest = (worker or "").partition(":")
    pid = rest.split(" ", 1)[0]
    if host != socket.gethostname() or not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            return fh.read().rsplit(")", 1)[-1].split()[0] in ("Z", "X")
    except OSError:
        return False


def is_live(worker: Worker, *, now=None) -> bool:
    """Heartbeat younger than JOB_STALE_SECONDS, and, on this host, its process still there."""
    now = now or timezone.now()
    if worker.heartbeat_at < now - timedelta(seconds=settings.JOB_STALE_SECONDS):
        return False
    return not holder_is_dead(f"{worker.host}:{worker.pid}")


def live_workers() -> list[Worker]:
    now = timezone.now()
    fresh = Worker.objects.filter(heartbeat_at__gte=now - timedelta(seconds=settings.JOB_STALE_SECONDS))
    return [w for w in fresh if is_live(w, now=now)]


# ------------------------------------------------------------------------------------------- waiting

def team_running(team_id: int) -> int:
    """Jobs of every kind the team runs now, on all workers (what TEAM_MAX_RUNNING limits)."""
    return sum(kind.model.objects.filter(team_id=team_id, status=JobStatus.RUNNING).count() for kind in kinds())


def can_run(job: Job, worker: Worker) -> bool:
    try:
        return requirements_unmet(job.requirements or {}, worker) is None
    except Exception:  # noqa: BLE001 - a row written around the validation (by hand, say) is run by nobody
        return False


def unrunnable_reason(job: Job, workers: list[Worker]) -> str:
    """Why none of ``workers`` can run the job ("" when one can)."""
    if any(can_run(job, w) for w in workers):
        return ""
    try:
        wanted = requirements_parse(job.requirements or {}).describe()
    except Exception:  # noqa: BLE001 - see can_run
        return f"Its requirements {job.requirements!r} are invalid: no worker runs it."
    if not workers:
        return f"No worker is running; it needs {wanted}."
    why = "; ".join(f"{w.name}: {requirements_unmet(job.requirements, w)}" for w in workers[:5])
    more = f"; and {len(workers) - 5} more" if len(workers) > 5 else ""
    return f"No live worker can run it: it needs {wanted} ({why}{more})."


def job_waiting_reason(job: Job, *, workers: list[Worker] | None = None) -> str:
    """Why a queued job is not running yet, from the live workers ("" when it is not queued or about to start)."""
    if job.status != JobStatus.QUEUED:
        return ""
    workers = live_workers() if workers is None else workers
    if not workers:
        return "No worker is running: start one with `manage.py qcluster`."
    reason = unrunnable_reason(job, workers)
    if reason:
        return reason
    limit = settings.TEAM_MAX_RUNNING
    running = team_running(job.team_id)
    if running >= limit:
        return (f"Waiting for the team's {running} running job{'s' if running != 1 else ''} to finish "
                f"(TEAM_MAX_RUNNING={limit}).")
    able = [w for w in workers if can_run(job, w)]
    if all(w.running for w in able):
        names = ", ".join(w.name for w in able[:5])
        return f"Waiting for a free worker: {names} {'is' if len(able) == 1 else 'are'} busy."
    return ""
