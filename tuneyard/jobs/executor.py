"""The local executor: claims queued jobs and runs each in its own OS process.

One loop, run in a thread of `tuneyard serve` or alone by `tuneyard worker`:
- reap finished processes; a process that ended without recording an outcome crashed;
- forward cancel requests (SIGTERM to the job's process group, SIGKILL after a grace period);
- fail running jobs whose heartbeat went stale (their worker or machine died);
- claim queued jobs up to the concurrency limit.
The database is the only channel between API, workers and jobs, so several workers (and the
CLI running a job in the foreground) can share one queue.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import timedelta

import psutil
from sqlalchemy import select, update

from tuneyard.config import Settings, get_settings
from tuneyard.db import session_scope
from tuneyard.jobs import service
from tuneyard.jobs.registry import get_kind
from tuneyard.models import Job, utcnow
from tuneyard.storage import Layout

log = logging.getLogger(__name__)

HOST = socket.gethostname()


@dataclass
class _Running:
    job_id: str
    process: subprocess.Popen
    grace_seconds: float
    term_sent_at: float | None = None
    log_handle: object = field(default=None, repr=False)


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        hint = " (out of memory, or killed by hand)" if name == "SIGKILL" else ""
        return f"The job's process was killed by {name}{hint} before it finished."
    return f"The job's process exited with code {returncode} without recording an outcome."


def child_environment(settings: Settings) -> dict[str, str]:
    """The job process gets the worker's exact settings, whatever their source."""
    env = dict(os.environ)
    for name, value in settings.model_dump().items():
        if value is None:
            continue
        if isinstance(value, bool):
            value = "true" if value else "false"
        env[f"TUNEYARD_{name.upper()}"] = str(value)
    env["PYTHONUNBUFFERED"] = "1"
    # Spinning OpenMP threads crowd out the ones doing work when a job shares its cores
    # (see tuneyard.inference.process.OPENMP_ENV for the measurement).
    env.setdefault("GOMP_SPINCOUNT", "10000")
    return env


class Executor:
    def __init__(self, settings: Settings | None = None, concurrency: int | None = None):
        self.settings = settings or get_settings()
        self.concurrency = concurrency or self.settings.job_concurrency
        self.layout = Layout(self.settings)
        self.running: dict[str, _Running] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        self.recover()
        self._thread = threading.Thread(target=self.loop, name="tuneyard-executor", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def loop(self, poll_seconds: float = 0.5) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:
                log.exception("executor tick failed; retrying")
            self._stop.wait(poll_seconds)

    def tick(self) -> None:
        self.reap()
        self.forward_cancels()
        self.fail_stale()
        self.claim_and_start()

    # -- recovery --------------------------------------------------------------------------

    def recover(self) -> None:
        """At start: fail jobs this host left running whose process is gone."""
        with session_scope(self.settings) as session:
            jobs = session.scalars(
                select(Job).where(Job.status == "running", Job.worker_id == HOST)
            ).all()
            for job in jobs:
                if job.pid is None or not _alive(job.pid):
                    log.warning("job %s was left running by a previous start; failing it", job.id)
                    service.finish(
                        session,
                        job,
                        "failed",
                        message="Failed",
                        error="Tuneyard stopped while this job ran, and its process is gone. "
                        "Start the job again.",
                    )

    def fail_stale(self) -> None:
        cutoff = utcnow() - timedelta(seconds=self.settings.job_stale_after_seconds)
        with session_scope(self.settings) as session:
            stale = session.scalars(
                select(Job).where(Job.status == "running", Job.heartbeat_at < cutoff)
            ).all()
            for job in stale:
                if job.id in self.running:
                    continue  # ours and alive; reap() decides
                service.finish(
                    session,
                    job,
                    "failed",
                    message="Failed",
                    error=f"The job stopped reporting (no heartbeat for "
                    f"{self.settings.job_stale_after_seconds:.0f} s); its worker died.",
                )

    # -- running ---------------------------------------------------------------------------

    def reap(self) -> None:
        for job_id, entry in list(self.running.items()):
            code = entry.process.poll()
            if code is None:
                continue
            del self.running[job_id]
            if entry.log_handle is not None:
                entry.log_handle.close()
            with session_scope(self.settings) as session:
                job = session.get(Job, job_id)
                if job is None or job.status not in service.ACTIVE:
                    continue
                if job.cancel_requested:
                    service.finish(session, job, "cancelled", message="Cancelled")
                else:
                    service.finish(
                        session, job, "failed", message="Failed", error=describe_exit(code)
                    )

    def forward_cancels(self) -> None:
        if not self.running:
            return
        with session_scope(self.settings) as session:
            wanted = set(
                session.scalars(
                    select(Job.id).where(
                        Job.id.in_(list(self.running)), Job.cancel_requested.is_(True)
                    )
                )
            )
        now = time.monotonic()
        for job_id in wanted:
            entry = self.running[job_id]
            if entry.term_sent_at is None:
                _signal_group(entry.process.pid, signal.SIGTERM)
                entry.term_sent_at = now
            elif now - entry.term_sent_at > entry.grace_seconds:
                _signal_group(entry.process.pid, signal.SIGKILL)

    def claim_and_start(self) -> None:
        free = self.concurrency - len(self.running)
        if free <= 0:
            return
        with session_scope(self.settings) as session:
            candidates = session.scalars(
                select(Job.id).where(Job.status == "queued").order_by(Job.created_at).limit(free)
            ).all()
        for job_id in candidates:
            self.start_job(job_id)

    def claim(self, job_id: str) -> str | None:
        """Take a queued job for this worker; returns its kind, or None if it was not queued."""
        now = utcnow()
        with session_scope(self.settings) as session:
            claimed = session.execute(
                update(Job)
                .where(Job.id == job_id, Job.status == "queued")
                .values(
                    status="running",
                    worker_id=HOST,
                    started_at=now,
                    heartbeat_at=now,
                    attempt=Job.attempt + 1,
                    message="Starting",
                )
            ).rowcount
            return session.get(Job, job_id).kind if claimed else None

    def start_job(self, job_id: str) -> bool:
        """Claim a queued job and start its process; False if another worker took it."""
        kind_name = self.claim(job_id)
        if kind_name is None:
            return False
        log_path = self.layout.job_log(job_id)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        handle = log_path.open("ab")
        try:
            process = subprocess.Popen(
                [sys.executable, "-m", "tuneyard.jobs.child", job_id],
                stdin=subprocess.DEVNULL,
                stdout=handle,
                stderr=subprocess.STDOUT,
                env=child_environment(self.settings),
                start_new_session=True,
            )
        except OSError as exc:
            handle.close()
            with session_scope(self.settings) as session:
                service.finish(
                    session,
                    session.get(Job, job_id),
                    "failed",
                    message="Failed",
                    error=f"Could not start the job's process: {exc}",
                )
            return False
        kind = get_kind(kind_name)
        grace = kind.cancel_grace_seconds or self.settings.job_cancel_grace_seconds
        self.running[job_id] = _Running(job_id, process, grace, log_handle=handle)
        with session_scope(self.settings) as session:
            session.execute(update(Job).where(Job.id == job_id).values(pid=process.pid))
        log.info("started job %s in process %s", job_id, process.pid)
        return True

    def run_until_finished(self, job_id: str, on_poll=None, poll_seconds: float = 0.3) -> Job:
        """Run one job in the foreground (the CLI's --wait) or follow it if a worker has it."""
        self.start_job(job_id)
        while True:
            self.reap()
            self.forward_cancels()
            with session_scope(self.settings) as session:
                job = session.get(Job, job_id)
            if on_poll is not None:
                on_poll(job)
            if job.status in service.FINISHED:
                return job
            time.sleep(poll_seconds)


def _alive(pid: int) -> bool:
    try:
        process = psutil.Process(pid)
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)
