"""The shared job machinery: queueing, the atomic claim, the supervised child process, control
requests (cancel / pause / resume / retry) and crash recovery.

Every kind (``jobs.registry``) reuses all of it. The queue message (django-q2) carries nothing but a wake-up: the worker picks the
next eligible row itself (priority, then FIFO, within each team's running limit, among the jobs whose
requirements its hardware meets), so a lost or re-delivered message can neither skip nor duplicate a job.

Several workers (queue processes, on one host or many) share the queue. A dispatch supervises one job at a
time; before it does, it wakes one dispatch per other job that a free worker could take, and every idle worker
checks for work it can run at each heartbeat, because the broker hands a wake-up to whichever cluster polls
first, and a busy cluster keeps the messages it fetched until its job ends.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.db import InterfaceError, OperationalError, close_old_connections, connection, transaction
from django.db.models import F
from django.utils import timezone
from django_q.tasks import async_task

from accounts.models import Team
from jobs.models import TERMINAL, EventLevel, EventType, Job, JobStatus, Worker
from jobs.registry import get_kind, kind_of, kinds
from jobs.scheduling import (
    can_run,
    holder_is_dead,
    live_workers,
    running_entry,
    supervisor_id,
    team_running,
    unrunnable_reason,
    worker_beat,
    worker_register,
)
from jobs.signals import job_finished
from ml.probe import allocator_library

log = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 5
# How long a silent child may take to honour a cancel before it is killed.
CANCEL_GRACE_SECONDS = 30


def with_db_retry(fn: Callable[[], object], *, what: str, deadline_s: float | None = None):
    """Run a small database operation, riding out a database restart: on a connection error, close the
    broken connection and try again (1 s, 2 s, ... up to 10 s apart) for up to JOB_DB_RETRY_SECONDS.

    Only outside a transaction (a broken transaction cannot be retried piecemeal), and only for
    connection-level errors: everything else is raised at once.
    """
    deadline = time.monotonic() + (settings.JOB_DB_RETRY_SECONDS if deadline_s is None else deadline_s)
    delay = 1.0
    while True:
        try:
            return fn()
        except (OperationalError, InterfaceError) as exc:
            if connection.in_atomic_block or time.monotonic() + delay > deadline:
                raise
            log.warning("database unavailable during %s (%s); retrying in %.0fs", what, exc, delay)
            try:
                connection.close()
            except Exception:  # noqa: BLE001 - the connection is already broken; reconnecting is the point
                pass
            time.sleep(delay)
            delay = min(10.0, delay * 2)


# --------------------------------------------------------------------------------------------- events

def add_event(job: Job, message: str, *, level: str = EventLevel.INFO, type: str = EventType.MESSAGE,
              data: dict | None = None):
    kind = kind_of(job)
    return kind.event_model.objects.create(**{kind.event_fk: job}, level=level, type=type, message=message,
                                           data=data)


# --------------------------------------------------------------------------------------------- queueing

def enqueue(job: Job) -> None:
    """Wake a worker once the surrounding transaction commits (never for an uncommitted row); a job with
    requirements that no live worker meets says so in its log at once."""
    if job.requirements:
        reason = unrunnable_reason(job, live_workers())
        if reason:
            add_event(job, f"{reason} It stays queued until such a worker starts.", level=EventLevel.WARN)
    transaction.on_commit(wake_worker)


def wake_worker() -> None:
    async_task("jobs.runtime.dispatch", q_options={"task_name": f"dispatch-{uuid.uuid4().hex[:8]}"})


def claim(job: Job, *, worker: str | None = None) -> str | None:
    """Atomically move one QUEUED row to RUNNING; returns the new run token, or None if someone else won."""
    token = uuid.uuid4().hex
    now = timezone.now()
    with transaction.atomic():
        # Lock the team row so two workers cannot both pass the team's running limit.
        Team.objects.select_for_update().filter(pk=job.team_id).first()
        if team_running(job.team_id) >= settings.TEAM_MAX_RUNNING:
            return None
        updated = type(job).objects.filter(pk=job.pk, status=JobStatus.QUEUED).update(
            status=JobStatus.RUNNING, run_token=token, started_at=job.started_at or now, heartbeat_at=now,
            worker=worker or supervisor_id(), attempts=F("attempts") + 1, pause_requested=False, paused_at=None,
            error_code="", error_message="", error_param="")
    return token if updated == 1 else None


def next_candidates() -> list[Job]:
    """Queued jobs of every kind, best first (priority, then queue order)."""
    rows: list[Job] = []
    for kind in kinds():
        rows += list(kind.model.objects.filter(status=JobStatus.QUEUED).order_by("-priority", "queued_at", "pk")[:50])
    far_future = timezone.now() + timedelta(days=3650)
    rows.sort(key=lambda j: (-j.priority, j.queued_at or far_future, j.pk))
    return rows


def claimable(hardware: Worker | None = None) -> list[Job]:
    """Queued jobs that could start now, best first: their team is under TEAM_MAX_RUNNING (counting the jobs
    picked before them) and, given ``hardware``, that worker meets their requirements."""
    limit = settings.TEAM_MAX_RUNNING
    running: dict[int, int] = {}
    out = []
    for job in next_candidates():
        if hardware is not None and not can_run(job, hardware):
            continue
        if job.team_id not in running:
            running[job.team_id] = team_running(job.team_id)
        if running[job.team_id] >= limit:
            continue
        running[job.team_id] += 1
        out.append(job)
    return out


def claim_next(*, worker: str | None = None, hardware: Worker | None = None) -> tuple[Job, str] | None:
    """Claim the best queued job this worker can run (``hardware``: its Worker row; None: any job)."""
    for job in claimable(hardware):
        token = claim(job, worker=worker)
        if token:
            job.refresh_from_db()
            return job, token
    return None


def wake_others(me: Worker | None) -> int:
    """One wake-up per queued job that another free live worker could start now (at most one per such worker),
    so that they run at the same time as the job this worker is about to supervise."""
    free = [w for w in live_workers() if not w.running and (me is None or w.name != me.name)]
    if not free:
        return 0
    wanted = sum(1 for job in claimable() if any(can_run(job, w) for w in free))
    for _ in range(min(wanted, len(free))):
        wake_worker()
    return min(wanted, len(free))


# The worker process's own record: set at its start (post_spawn) or first dispatch; what it runs, while it does.
_me: dict[str, object] = {"worker": None, "running": None}


def current_worker() -> Worker:
    if _me["worker"] is None:
        _me["worker"] = worker_register()
    return _me["worker"]


def dispatch(max_jobs: int | None = None) -> int:
    """Queue task body: record this worker, recover stale jobs, then run the jobs this worker can run, one after
    another, waking other workers for the rest before each one."""
    me = with_db_retry(current_worker, what="registering the worker")
    recover_stale()
    done = 0
    while max_jobs is None or done < max_jobs:
        claimed = claim_next(hardware=me)
        if claimed is None:
            break
        job, token = claimed
        try:
            wake_others(me)
        except Exception as exc:  # noqa: BLE001 - the others' own heartbeats find the work too
            log.warning("could not wake other workers: %s", exc)
        supervise(job, token)
        done += 1
        close_old_connections()
    return done


# --------------------------------------------------------------------------------------------- supervision

def run_dir(job: Job) -> Path:
    return Path(settings.DATA_DIR) / "runs" / f"{kind_of(job).name}-{job.pk}"


def _child_preexec() -> None:  # pragma: no cover - runs in the child before exec
    # Die with the supervisor: a killed worker must not leave an orphan training run behind.
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def child_command(job: Job, token: str, processes: int) -> list[str]:
    """``manage.py run_job``; for several processes the same command as torchrun's entry point, one per rank
    (``--standalone``: the group meets on a free local port; no restarts: a failed rank stops the whole group,
    and recovery is ours, from the last checkpoint)."""
    manage = Path(settings.BASE_DIR) / "manage.py"
    args = [str(manage), "run_job", kind_of(job).name, str(job.pk), "--run-token", token]
    if processes <= 1:
        return [sys.executable, *args]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
            "--max-restarts=0", *args]


def child_allocator_env(env: dict[str, str]) -> dict[str, str]:
    """``LD_PRELOAD`` with the allocator of ``JOB_CHILD_ALLOCATOR`` put first (``ml.probe.allocator_library``
    says why); nothing when it is the system's or not on this host. torchrun's ranks inherit it."""
    library = allocator_library(settings.JOB_CHILD_ALLOCATOR)
    if library is None:
        return {}
    others = [p for p in env.get("LD_PRELOAD", "").split(":") if p and p != library]
    return {"LD_PRELOAD": ":".join([library, *others])}


def spawn_child(job: Job, token: str, processes: int = 1) -> subprocess.Popen:
    folder = run_dir(job)
    folder.mkdir(parents=True, exist_ok=True)
    log_path = folder / "log.txt"
    cmd = child_command(job, token, processes)
    # OMP_WAIT_POLICY must be set before torch loads in the child: passive OpenMP threads keep training fast
    # when another process shares the cores (measured on 2 cores: 93 vs 36 tokens/s with one core busy).
    # Ranks share the host's cores (torchrun would give each one thread).
    env = {"OMP_WAIT_POLICY": "PASSIVE", **os.environ, "PYTHONUNBUFFERED": "1"}
    env.update(child_allocator_env(env))
    if processes > 1:
        env.setdefault("OMP_NUM_THREADS", str(max(1, _cpu_count() // processes)))
    logfile = open(log_path, "ab")  # noqa: SIM115 - handed to the child, closed below
    try:
        proc = subprocess.Popen(cmd, stdout=logfile, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                cwd=settings.BASE_DIR, preexec_fn=_child_preexec, start_new_session=True)
    finally:
        logfile.close()
    type(job).objects.filter(pk=job.pk, run_token=token).update(child_pid=proc.pid, log_path=str(log_path))
    return proc


def _kill(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def supervise(job: Job, token: str) -> str:
    """Run a claimed job in a child process and watch it until it ends; returns the final status."""
    where = f"{settings.WORKER_NAME} on {socket.gethostname()}" if settings.WORKER_NAME else socket.gethostname()
    add_event(job, f"Started on {where} (attempt {job.attempts}).")
    running = [running_entry(job)]
    _me["running"] = running
    try:
        _beat_quietly(running)
        return _supervise(job, token)
    finally:
        _me["running"] = None
        _beat_quietly([])


def _beat_quietly(running: list[dict]) -> None:
    """The worker's heartbeat where a failure must not stop the job: the next beat says it again."""
    try:
        worker_beat(running=running)
    except Exception as exc:  # noqa: BLE001 - a database restart, say
        log.warning("worker heartbeat failed: %s", exc)


def _supervise(job: Job, token: str) -> str:
    model = type(job)
    processes = max(1, int(kind_of(job).processes(job, _me["worker"])))
    if processes > 1:
        add_event(job, f"Starting {processes} processes (torchrun, one rank each).")
    proc = spawn_child(job, token, processes)
    cancel_seen_at: float | None = None
    last_beat = 0.0
    last_recover = time.monotonic()
    while True:
        try:
            returncode = proc.wait(timeout=1)
            break
        except subprocess.TimeoutExpired:
            pass
        now = time.monotonic()
        if now - last_beat >= HEARTBEAT_SECONDS:
            last_beat = now
            try:
                alive = model.objects.filter(pk=job.pk, run_token=token).update(heartbeat_at=timezone.now())
                flags = model.objects.filter(pk=job.pk).values("cancel_requested", "status").first()
                worker_beat(running=_me["running"] or [])
            except Exception as exc:  # database restarting: keep the child running and try again
                log.warning("heartbeat for %s %s failed: %s", model.__name__, job.pk, exc)
                close_old_connections()
                continue
            if not alive or flags is None:
                # The claim moved to another run (or the row is gone): this run must stop now.
                _kill(proc)
                proc.wait()
                return flags["status"] if flags else "gone"
            if flags["cancel_requested"] and cancel_seen_at is None:
                cancel_seen_at = now
        if cancel_seen_at is not None and now - cancel_seen_at > CANCEL_GRACE_SECONDS:
            log.warning("child of %s %s ignored cancel for %ss: killing it", model.__name__, job.pk,
                        CANCEL_GRACE_SECONDS)
            _kill(proc)
        if now - last_recover > 60:
            last_recover = now
            try:
                recover_stale()
            except Exception as exc:  # pragma: no cover - best effort while busy
                log.warning("recover_stale failed: %s", exc)
    return _after_child_exit(job, token, returncode, processes)


def _after_child_exit(job: Job, token: str, returncode: int, processes: int = 1) -> str:
    return with_db_retry(lambda: _record_child_exit(job, token, returncode, processes),
                         what="recording the child's exit")


# torchrun's report of the rank that failed first ("Root Cause (first observed failure)": rank, exitcode)
ROOT_CAUSE = re.compile(r"Root Cause \(first observed failure\):.*?rank\s*:\s*(\d+).*?exitcode\s*:\s*(-?\d+)", re.S)


def group_failure(log_path: Path, processes: int) -> str | None:
    """Which rank ended a group, from the report torchrun writes to the log when it stops one; None if absent."""
    try:
        with open(log_path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 64 * 1024))
            tail = fh.read().decode("utf-8", errors="replace")
    except OSError:
        return None
    found = ROOT_CAUSE.findall(tail)
    if not found:
        return None
    rank, code = int(found[-1][0]), int(found[-1][1])
    if code < 0:
        what = f"was killed by signal {-code}" + (" (out of memory, or killed by an operator)"
                                                  if -code == signal.SIGKILL else "")
    else:
        what = f"exited with code {code}"
    return f"rank {rank} of {processes} {what}, so torchrun stopped the group"


def _record_child_exit(job: Job, token: str, returncode: int, processes: int = 1) -> str:
    model = type(job)
    close_old_connections()
    row = model.objects.filter(pk=job.pk).first()
    if row is None:
        return "gone"
    if row.run_token != token or row.status != JobStatus.RUNNING:
        return row.status  # the child recorded its own outcome (succeeded/failed/cancelled/paused)
    if row.cancel_requested:
        finish(row, token, JobStatus.CANCELLED)
        add_event(row, "Cancelled.")
        return JobStatus.CANCELLED
    group = group_failure(run_dir(job) / "log.txt", processes) if processes > 1 and returncode > 0 else None
    if group:
        reason = f"a training process failed: {group}"
    elif returncode < 0:
        reason = f"the training process was killed by signal {-returncode}"
        if -returncode == signal.SIGKILL:
            reason += " (out of memory, or killed by an operator)"
    else:
        reason = f"the training process exited with code {returncode} without reporting a result"
    return recover_or_fail(row, token, reason)


def recover_or_fail(job: Job, token: str, reason: str) -> str:
    """After a crash: resume from the last good checkpoint (bounded attempts), else fail with the reason."""
    kind = kind_of(job)
    if job.recoveries < settings.JOB_MAX_RECOVERIES:
        checkpoint = kind.latest_checkpoint(job) or ""
        updated = type(job).objects.filter(pk=job.pk, run_token=token, status=JobStatus.RUNNING).update(
            status=JobStatus.QUEUED, queued_at=timezone.now(), recoveries=F("recoveries") + 1, run_token="",
            resume_from=checkpoint, child_pid=None)
        if updated:
            where = f"from checkpoint {Path(checkpoint).name}" if checkpoint else "from the start"
            add_event(job, f"Recovering {where}: {reason}.", level=EventLevel.WARN)
            wake_worker()
            return JobStatus.QUEUED
        return type(job).objects.get(pk=job.pk).status
    # Several workers recover at once (each one's heartbeat does): only the one whose write wins logs it.
    if finish(job, token, JobStatus.FAILED, error_code="worker_crashed",
              error_message=f"{reason[0].upper()}{reason[1:]}; gave up after {job.recoveries} automatic recoveries."):
        add_event(job, f"Failed: {reason}.", level=EventLevel.ERROR)
        return JobStatus.FAILED
    return type(job).objects.get(pk=job.pk).status


def recover_stale(now=None) -> int:
    """Jobs RUNNING whose heartbeat stopped (worker or machine died), or whose supervising process on this
    host is gone, are recovered from their last good checkpoint or failed."""
    now = now or timezone.now()
    cutoff = now - timedelta(seconds=settings.JOB_STALE_SECONDS)
    count = 0
    for kind in kinds():
        for job in kind.model.objects.filter(status=JobStatus.RUNNING):
            if job.heartbeat_at is not None and job.heartbeat_at < cutoff:
                seconds = int((now - job.heartbeat_at).total_seconds())
                reason = f"no heartbeat for {seconds}s from worker {job.worker or '?'}"
            elif holder_is_dead(job.worker):
                reason = f"its worker process {job.worker} is gone"
            else:
                continue
            recover_or_fail(job, job.run_token, reason)
            count += 1
    return count


def on_worker_spawn(sender=None, **kwargs) -> None:
    """django-q2's ``post_spawn``, in each queue worker process: record the worker and its hardware, start its
    heartbeat, and ask for a dispatch, which recovers the jobs of a worker that died and picks up queued ones,
    instead of waiting for the periodic schedule."""
    try:
        _me["worker"] = worker_register()
        start_heartbeat()
        wake_worker()
    except Exception as exc:  # noqa: BLE001 - never keep a worker from starting
        log.warning("could not register the worker or queue the start-up dispatch: %s", exc)


def heartbeat_once() -> bool:
    """One beat of the worker's heartbeat thread: recover what dead workers held (also while this one supervises,
    so a dead worker's job is queued again at once); when idle, say it is alive, and when a queued job it can
    run waits (its wake-up went to a busy worker), ask for a dispatch. True when it asked."""
    recover_stale()
    if _me["running"] is not None:
        return False  # the supervisor beats while it runs a job
    worker_beat(running=[])
    me = current_worker()
    if claimable(me):
        wake_worker()
        return True
    return False


def _heartbeat_loop() -> None:
    while True:
        time.sleep(HEARTBEAT_SECONDS)
        try:
            close_old_connections()
            heartbeat_once()
        except Exception as exc:  # noqa: BLE001 - a database restart: beat again next time
            log.warning("worker heartbeat failed: %s", exc)
            try:
                connection.close()
            except Exception:  # noqa: BLE001 - the connection is already broken
                pass


_heartbeat: dict[str, threading.Thread | None] = {"thread": None}


def start_heartbeat() -> threading.Thread:
    """A daemon thread of the queue worker process (it ends with it): the idle worker's heartbeat."""
    thread = _heartbeat["thread"]
    if thread is None or not thread.is_alive():
        thread = threading.Thread(target=_heartbeat_loop, name="jobs-worker-heartbeat", daemon=True)
        thread.start()
        _heartbeat["thread"] = thread
    return thread


def finish(job: Job, token: str | None, status: str, **fields) -> bool:
    """Record a final (or paused) state for the run holding ``token``."""
    now = timezone.now()
    values = {"status": status, "heartbeat_at": now, "child_pid": None, **fields}
    if status in TERMINAL:
        values["finished_at"] = now
        values.setdefault("eta_seconds", None)
    if status == JobStatus.PAUSED:
        values["paused_at"] = now
        values["pause_requested"] = False
    qs = type(job).objects.filter(pk=job.pk)
    if token is not None:
        qs = qs.filter(run_token=token)
    if qs.update(**values) != 1:
        return False
    if status in TERMINAL:
        announce_finished(job)
    return True


def announce_finished(job: Job) -> None:
    """``jobs.signals.job_finished`` once the ending is committed; a failing receiver is logged, never raised."""
    def send() -> None:
        row = type(job).objects.filter(pk=job.pk).first()
        if row is None:
            return
        for receiver, response in job_finished.send_robust(sender=type(row), job=row, kind=kind_of(row).name):
            if isinstance(response, Exception):
                log.error("job_finished receiver %r failed for %s %s: %s", receiver, type(row).__name__, row.pk,
                          response)

    transaction.on_commit(send)


# --------------------------------------------------------------------------------------------- child side

class LostClaim(Exception):
    """The run's claim was taken over (recovered elsewhere): stop without writing anything more."""


class GroupLost(Exception):  # noqa: N818 - an ending, not an error of the job
    """Another process of the job's group died: this one records nothing and exits with an error, so that the
    launcher stops the group and the worker recovers the job from its last checkpoint."""


class JobContext:
    """What a job's child process uses to report: progress, events, heartbeat and control flags."""

    reports = True  # rank 0 of a group (or the only process) writes the job's rows

    def __init__(self, job: Job, token: str) -> None:
        self.job = job
        self.token = token
        self.model = type(job)
        self._flags_checked = 0.0
        self._flags = (False, False)

    # Every write and read of the child goes through with_db_retry: a database restart pauses the run
    # (at most JOB_DB_RETRY_SECONDS) instead of failing it.

    def update(self, **fields) -> None:
        fields.setdefault("heartbeat_at", timezone.now())
        updated = with_db_retry(lambda: self.model.objects.filter(pk=self.job.pk, run_token=self.token)
                                .update(**fields), what="a progress update")
        if not updated:
            raise LostClaim(f"{self.model.__name__} {self.job.pk} is no longer held by this run")
        for key, value in fields.items():
            setattr(self.job, key, value)

    def event(self, message: str, *, level: str = EventLevel.INFO, type: str = EventType.MESSAGE,
              data: dict | None = None) -> None:
        with_db_retry(lambda: add_event(self.job, message, level=level, type=type, data=data), what="an event")

    def control(self, *, max_age: float = 1.0) -> str | None:
        """'cancel', 'pause' or None; reads the row at most once per ``max_age`` seconds."""
        now = time.monotonic()
        if now - self._flags_checked >= max_age:
            self._flags_checked = now
            row = with_db_retry(lambda: self.model.objects.filter(pk=self.job.pk).values(
                "cancel_requested", "pause_requested", "run_token").first(), what="reading control flags")
            if row is None or row["run_token"] != self.token:
                raise LostClaim("claim lost")
            self._flags = (row["cancel_requested"], row["pause_requested"])
        if self._flags[0]:
            return "cancel"
        if self._flags[1]:
            return "pause"
        return None

    def finish(self, status: str, **fields) -> None:
        if not with_db_retry(lambda: finish(self.job, self.token, status, **fields), what="recording the result"):
            raise LostClaim("claim lost before the result was recorded")


class FollowerContext(JobContext):
    """The context of a rank other than 0 of a group: it writes nothing (rank 0 reports for the whole group) and
    reads no control flags (rank 0 sends its stop decision to every rank)."""

    reports = False

    def update(self, **fields) -> None:
        pass

    def event(self, message: str, *, level: str = EventLevel.INFO, type: str = EventType.MESSAGE,
              data: dict | None = None) -> None:
        pass

    def control(self, *, max_age: float = 1.0) -> str | None:
        return None

    def finish(self, status: str, **fields) -> None:
        pass

    def wait_for_ending(self, timeout: float) -> None:
        """Give rank 0 a moment to record how the run ended (a failure that every rank meets at the same step)
        before this rank's exit makes torchrun stop the group."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.model.objects.filter(pk=self.job.pk).values_list("status", flat=True).first()
            if status != JobStatus.RUNNING:
                return
            time.sleep(0.5)


def _die_with_launcher() -> None:
    """A rank started by torchrun dies with it: torchrun starts each rank in a session of its own, so the
    supervisor's kill of torchrun's process group would not reach the ranks."""
    try:
        import ctypes

        parent = os.getppid()
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the launcher died before the line above
            os._exit(1)
    except OSError:
        pass


# Exit code of rank 0 after it recorded a failure: torchrun then stops the other ranks, which may be waiting
# for it in a collective operation.
GROUP_FAILED_EXIT = 5
# Exit code of a rank whose group lost another rank (it recorded nothing; the worker recovers the job).
GROUP_LOST_EXIT = 6


def run_child(kind_name: str, pk: int, token: str) -> int:
    """Body of ``manage.py run_job``: run one claimed job in this process; exit code for the supervisor.

    Under torchrun (several processes) every rank runs it: rank 0 with the job's context, the others with a
    ``FollowerContext`` that writes nothing.
    """
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if world > 1:
        _die_with_launcher()
    kind = get_kind(kind_name)
    job = kind.model.objects.get(pk=pk)
    if job.run_token != token or job.status != JobStatus.RUNNING:
        log.error("%s %s is not claimed by token %s; refusing to run", kind.name, pk, token)
        return 3
    ctx = JobContext(job, token) if rank == 0 else FollowerContext(job, token)
    try:
        status = kind.runner_class()(job, ctx).handle()
    except LostClaim as exc:
        log.error("%s", exc)
        return 4
    except GroupLost as exc:
        log.error("rank %s: %s", rank, exc)
        return GROUP_LOST_EXIT
    return GROUP_FAILED_EXIT if world > 1 and status == JobStatus.FAILED else 0


def run_foreground(job: Job) -> str:
    """``manage.py run_training ID``: claim a queued job and run it in this process, for debugging."""
    kind = kind_of(job)
    if job.status == JobStatus.PAUSED or (job.status in (JobStatus.FAILED, JobStatus.CANCELLED)):
        raise ValueError(f"{kind.name} {job.pk} is {job.status}: resume or retry it first")
    if job.status != JobStatus.QUEUED:
        raise ValueError(f"{kind.name} {job.pk} is {job.status}, not queued")
    token = claim(job, worker=f"{socket.gethostname()}:{os.getpid()} (foreground)")
    if token is None:
        raise ValueError(f"{kind.name} {job.pk} could not be claimed (another worker took it, or the team is at "
                         "its running limit)")
    job.refresh_from_db()
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(HEARTBEAT_SECONDS):
            type(job).objects.filter(pk=job.pk, run_token=token).update(heartbeat_at=timezone.now())

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        kind.runner_class()(job, JobContext(job, token)).handle()
    finally:
        stop.set()
    job.refresh_from_db()
    if job.status == JobStatus.RUNNING and job.run_token == token:
        recover_or_fail(job, token, "the run ended without reporting a result")
        job.refresh_from_db()
    return job.status


# --------------------------------------------------------------------------------------------- control

def request_cancel(job: Job) -> str:
    """Cancel now if not running; otherwise ask the child to stop at its next step."""
    model = type(job)
    now = timezone.now()
    if model.objects.filter(pk=job.pk, status__in=[JobStatus.QUEUED, JobStatus.PAUSED, JobStatus.VALIDATING]) \
            .update(status=JobStatus.CANCELLED, cancel_requested=True, finished_at=now, run_token="") == 1:
        add_event(job, "Cancelled before running.")
        announce_finished(job)
        return JobStatus.CANCELLED
    if model.objects.filter(pk=job.pk, status=JobStatus.RUNNING).update(cancel_requested=True) == 1:
        add_event(job, "Cancel requested: stopping at the next step.")
        return JobStatus.RUNNING
    return model.objects.get(pk=job.pk).status


def request_pause(job: Job) -> bool:
    model = type(job)
    if model.objects.filter(pk=job.pk, status=JobStatus.RUNNING, cancel_requested=False).update(
            pause_requested=True) == 1:
        add_event(job, "Pause requested: saving a checkpoint at the next step.")
        return True
    if model.objects.filter(pk=job.pk, status=JobStatus.QUEUED).update(status=JobStatus.PAUSED,
                                                                       paused_at=timezone.now()) == 1:
        add_event(job, "Paused while queued.")
        return True
    return False


def requeue(job: Job, *, from_statuses: set[str], resume_from: str = "", reset: bool = False, note: str) -> bool:
    """Put a paused (resume) or failed/cancelled (retry) job back in the queue."""
    values = {"status": JobStatus.QUEUED, "queued_at": timezone.now(), "cancel_requested": False,
              "pause_requested": False, "resume_from": resume_from, "run_token": "", "finished_at": None,
              "error_code": "", "error_message": "", "error_param": ""}
    if reset:
        values["recoveries"] = 0
    if type(job).objects.filter(pk=job.pk, status__in=list(from_statuses)).update(**values) != 1:
        return False
    add_event(job, note)
    enqueue(job)
    return True


