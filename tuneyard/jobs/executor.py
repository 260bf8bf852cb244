"""The local executor: claims queued jobs and runs each in its own OS process.

One loop, run in a thread of `tuneyard serve` or alone by `tuneyard worker`:
- reap finished processes; a process that ended without recording an outcome crashed;
- forward cancel requests (SIGTERM to the job's process group, SIGKILL after a grace period);
- sweep the jobs other workers left: adopt or fail those of dead workers on this machine, fail
  those whose heartbeat went stale elsewhere;
- claim queued jobs up to the concurrency limit, higher priority first, then oldest first.
The database is the only channel between API, workers and jobs, so several workers (and the
CLI running a job in the foreground) can share one queue.

Each executor has an identity of its own, `host:pid:start:n` (its process's pid and start
time, and a count within the process), kept in `jobs.worker_id`: it tells whether the worker
that runs a job is alive, and the host part whether the job runs on this machine.

Who ends a job whose worker is gone, and who removes its files:
- Job processes run in sessions of their own, so they outlive their worker (a restart, a
  crash, kill -9). On the job's own machine its process is checked directly: by its pid, a
  start time no earlier than the job's claim, and a command line naming the job. A worker
  adopts the running jobs of a dead worker of its machine whose process is alive (tracked
  with psutil: cancel signals it, the concurrency limit counts it, its end is reaped); one
  whose process is gone is failed. Heartbeats do not matter there.
- A worker on another machine sees only the heartbeat. After `job_stale_after_seconds` of
  silence it fails the job (only if the heartbeat is still that old when it writes), and the
  domain rows follow (the kind's on_failure); but the job may be alive, cut off from the
  database or just slow, so its files are left and `pid` stays set to say so. The job process
  is fenced: its heartbeat, progress reports and result writes (JobContext.session) hold only
  while its attempt is still running, so once failed it stops writing and exits. A worker of
  its machine (its own, or the next to start there) then sees the process gone and removes
  the files (the kind's cleanup).
- Everywhere else (the job's own process, the worker that reaps it) the process has ended,
  and on_failure and cleanup run together.
- A job that can resume (its kind has a resume_point, and it has a checkpoint) is not failed
  in those cases: it goes back to the queue, half-written files removed, to resume on the next
  worker that claims it, up to `job_lost_resumes` times; then it is failed, saying so.

Stopping gracefully (`drain`, on SIGTERM to `tuneyard worker` or `tuneyard serve`): the worker
claims nothing more and sends each of its jobs HANDOVER_SIGNAL. A job that can resume stops at
its next step with a checkpoint and goes back to the queue at once; any other job has the first
half of `worker_stop_grace_seconds` to finish, and is then interrupted, its partial output
removed, and put back in the queue to run from the start. The job's own process writes the
requeue (only while its attempt runs: fencing holds), so another worker claims it once. Jobs
still running when the grace ends go on in their own processes, as after any stop. (The ray
executor's jobs run on the cluster: a stopping ray worker claims nothing more and leaves them
there, for the next worker to adopt.)
"""

from __future__ import annotations

import contextlib
import itertools
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
from typing import IO

import psutil
from sqlalchemy import and_, or_, select, update
from sqlalchemy.exc import SQLAlchemyError

from tuneyard.config import Settings, get_settings
from tuneyard.db import rows_changed, session_scope
from tuneyard.jobs import service
from tuneyard.jobs.context import HANDOVER_SIGNAL
from tuneyard.jobs.registry import get_kind
from tuneyard.jobs.workers import forget_worker, record_heartbeat
from tuneyard.models import Job, utcnow
from tuneyard.storage import Layout

log = logging.getLogger(__name__)

HOST = socket.gethostname()
CHILD_MODULE = "tuneyard.jobs.child"
# How far a process's start time (whole clock ticks after a boot time in whole seconds) may
# fall before the job's claim time and still be the process started for that claim.
START_TIME_SLACK_SECONDS = 2.0

_executor_numbers = itertools.count(1)
# Executors of this process that run (constructed and not stopped): a stopped one is dead to
# the others even though its process lives on.
_live_here: set[str] = set()


def _process_start(process: psutil.Process) -> str:
    return f"{process.create_time():.2f}"


def new_worker_id() -> str:
    return f"{HOST}:{os.getpid()}:{_process_start(psutil.Process())}:{next(_executor_numbers)}"


def worker_host(worker_id: str) -> str:
    """The machine of a worker id (an id written before ids had parts is a host name)."""
    return worker_id.split(":", 1)[0]


def worker_alive(worker_id: str) -> bool:
    """Whether the worker with this id still runs (on this machine; False for another's)."""
    parts = worker_id.split(":")
    if len(parts) != 4 or parts[0] != HOST or not parts[1].isdigit():
        return False
    pid, started = int(parts[1]), parts[2]
    if pid == os.getpid():
        return worker_id in _live_here
    try:
        process = psutil.Process(pid)
        return _process_start(process) == started and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def job_process(job: Job) -> psutil.Process | None:
    """The live process of `job` on this machine, if any: its recorded pid (or, before the
    process recorded it, a search), a command line naming the job, started after the claim."""
    if job.pid is not None:
        candidates = [job.pid]
    else:
        candidates = [
            process.pid
            for process in psutil.process_iter(["cmdline"])
            if (process.info["cmdline"] or [])[-2:] == [CHILD_MODULE, job.id]
        ]
    for pid in candidates:
        try:
            process = psutil.Process(pid)
            if process.status() == psutil.STATUS_ZOMBIE:
                continue
            if process.cmdline()[-2:] != [CHILD_MODULE, job.id]:
                continue  # the pid now belongs to another program
            claimed = job.started_at.timestamp() if job.started_at else 0.0
            if process.create_time() >= claimed - START_TIME_SLACK_SECONDS:
                return process
        except psutil.Error:
            continue
    return None


# Stands for the exit code of an adopted process, which is not ours to know.
ADOPTED_EXIT = -1000


@dataclass
class _Running:
    job_id: str
    # Popen for a process this executor started; psutil.Process for one it adopted.
    process: subprocess.Popen | psutil.Process
    grace_seconds: float
    attempt: int
    term_sent_at: float | None = None
    handover_sent: bool = False
    log_handle: IO[bytes] | None = field(default=None, repr=False)

    def exit_code(self) -> int | None:
        """None while it runs; its exit code once ended (for an adopted process, which is not
        our child, the code is unknown: ADOPTED_EXIT)."""
        if isinstance(self.process, subprocess.Popen):
            return self.process.poll()
        try:
            if self.process.is_running() and self.process.status() != psutil.STATUS_ZOMBIE:
                return None
        except psutil.NoSuchProcess:
            pass
        return ADOPTED_EXIT

    def signal_group(self, sig: signal.Signals) -> None:
        # psutil's is_running also compares start times: a reused pid is not signalled.
        if isinstance(self.process, psutil.Process) and not self.process.is_running():
            return
        _signal_group(self.process.pid, sig)

    def hand_over(self) -> None:
        """Ask the job's process (not its group) to stop and go back to the queue."""
        with contextlib.suppress(psutil.NoSuchProcess, ProcessLookupError):
            # Both check that the pid is still this process's.
            self.process.send_signal(HANDOVER_SIGNAL)
        self.handover_sent = True


def describe_exit(returncode: int) -> str:
    if returncode == ADOPTED_EXIT:
        return (
            "The job's process ended without recording an outcome (it was adopted after its "
            "worker stopped, so how it ended is unknown; its log may say)."
        )
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
    # The store's credentials stay with the worker and the cluster's actors: a job never needs
    # them, and its process could show its environment.
    env.pop("TUNEYARD_ARTIFACT_STORE_OPTIONS", None)
    for name, value in settings.model_dump(exclude={"artifact_store_options"}).items():
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
        self.worker_id = new_worker_id()
        _live_here.add(self.worker_id)
        self.running: dict[str, _Running] = {}
        self._stop = threading.Event()
        self._draining = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_beat = 0.0

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        self.sweep()
        self._thread = threading.Thread(target=self.loop, name="tuneyard-executor", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the loop. Running jobs go on in their own processes; the next executor to start
        on this machine adopts them."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        _live_here.discard(self.worker_id)
        with contextlib.suppress(SQLAlchemyError), session_scope(self.settings) as session:
            forget_worker(session, self.worker_id)

    def drain(self, grace_seconds: float | None = None, poll_seconds: float = 0.3) -> None:
        """Stop gracefully (see the module's notes): claim nothing more, hand each running job
        over to another worker, wait up to the grace for their processes to end, then stop."""
        grace = self.settings.worker_stop_grace_seconds if grace_seconds is None else grace_seconds
        self._draining.set()
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10.0)
        started = time.monotonic()
        log.info("stopping: handing %d running job(s) over to other workers", len(self.running))
        while self.running and time.monotonic() - started < grace:
            try:
                self.beat()
                self.reap()
                self.forward_cancels()
                self._hand_over(finish_first=time.monotonic() - started < grace / 2)
            except Exception:
                log.exception("stopping: tick failed; retrying")
            time.sleep(poll_seconds)
        if self.running:
            log.warning(
                "stopping with %d job(s) still running after %.0f s; their processes go on",
                len(self.running),
                grace,
            )
        self.stop()

    def _hand_over(self, finish_first: bool) -> None:
        """Signal the running jobs not signalled yet whose process has recorded its pid (so it
        handles the signal): the resumable ones at once, the others once `finish_first` ends."""
        waiting = [entry for entry in self.running.values() if not entry.handover_sent]
        if not waiting:
            return
        with session_scope(self.settings) as session:
            jobs = session.scalars(select(Job).where(Job.id.in_([e.job_id for e in waiting]))).all()
            ready = {job.id for job in jobs if job.pid is not None and job.status == "running"}
            resumable = {job.id for job in jobs if get_kind(job.kind).resume_point is not None}
        for entry in waiting:
            if entry.job_id in ready and (entry.job_id in resumable or not finish_first):
                log.info("handing job %s over", entry.job_id)
                entry.hand_over()

    def loop(self, poll_seconds: float = 0.5) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:
                log.exception("executor tick failed; retrying")
            self._stop.wait(poll_seconds)

    def tick(self) -> None:
        self.beat()
        self.reap()
        self.forward_cancels()
        self.sweep()
        self.claim_and_start()

    def busy(self) -> int:
        """Jobs this executor runs now (counted against its concurrency)."""
        return len(self.running)

    def beat(self) -> None:
        """Tell the others this worker is alive (at most once per job heartbeat period)."""
        now = time.monotonic()
        if now - self._last_beat < self.settings.job_heartbeat_seconds:
            return
        with session_scope(self.settings) as session:
            record_heartbeat(session, self.worker_id, HOST, self.busy())
        self._last_beat = now

    # -- jobs other workers left -----------------------------------------------------------

    def sweep(self) -> None:
        """Settle the jobs of other workers that cannot settle them (see the module's notes):
        at start, and on every tick (a worker beside this one may die)."""
        cutoff = utcnow() - timedelta(seconds=self.settings.job_stale_after_seconds)
        with session_scope(self.settings) as session:
            jobs = session.scalars(
                select(Job).where(
                    Job.worker_id != self.worker_id,
                    or_(
                        Job.status == "running",
                        and_(
                            Job.status.in_(service.FINISHED),
                            Job.pid.is_not(None),
                            Job.worker_id.startswith(f"{HOST}:", autoescape=True),
                        ),
                    ),
                )
            ).all()
            session.expunge_all()
        for job in jobs:
            worker_id = job.worker_id or ""
            if worker_host(worker_id) != HOST:
                if job.heartbeat_at is not None and job.heartbeat_at < cutoff:
                    self._fail_silent(job, cutoff)
            elif worker_alive(worker_id):
                continue  # its worker reaps it
            elif job.status != "running":
                if job_process(job) is None:
                    self._clean_up(job)
            else:
                process = job_process(job)
                if process is None:
                    self._fail_orphan(job)
                else:
                    self._adopt(job, process)

    def _adopt(self, job: Job, process: psutil.Process) -> None:
        with session_scope(self.settings) as session:
            taken = rows_changed(
                session,
                update(Job)
                .where(Job.id == job.id, Job.status == "running", Job.worker_id == job.worker_id)
                .values(worker_id=self.worker_id),
            )
        if not taken:
            return  # another worker of this machine adopted it first, or it ended
        grace = get_kind(job.kind).cancel_grace_seconds or self.settings.job_cancel_grace_seconds
        self.running[job.id] = _Running(job.id, process, grace, job.attempt)
        log.warning(
            "adopted job %s (process %s) from stopped worker %s", job.id, process.pid, job.worker_id
        )

    def _fail_orphan(self, job: Job) -> None:
        log.warning("job %s was left running by a stopped worker; its process is gone", job.id)
        with session_scope(self.settings) as session:
            row = session.get_one(Job, job.id)
            if row.worker_id != job.worker_id or row.attempt != job.attempt:
                return  # adopted meanwhile
            if self._resume_lost(session, row, job.worker_id):
                return
            service.finish(
                session,
                row,
                "failed",
                message="Failed",
                error="Tuneyard stopped while this job ran, and its process is gone. "
                + self._why_not_resumed(session, row)
                + "Start the job again.",
                attempt=job.attempt,
            )

    def _fail_silent(self, job: Job, cutoff) -> None:
        with session_scope(self.settings) as session:
            row = session.get_one(Job, job.id)
            if row.attempt != job.attempt:
                return  # requeued meanwhile
            if self._resume_lost(session, row, job.worker_id, stale_before=cutoff):
                return
            failed = service.finish(
                session,
                row,
                "failed",
                message="Failed",
                error=f"The job stopped reporting (no heartbeat for "
                f"{self.settings.job_stale_after_seconds:.0f} s): its machine "
                f"{worker_host(job.worker_id or '')} died or lost the database. "
                + self._why_not_resumed(session, row)
                + "Start the job again.",
                process_may_live=True,
                stale_before=cutoff,
                attempt=job.attempt,
            )
        if failed:
            log.warning("job %s on %s went silent; failed it", job.id, job.worker_id)

    def _resume_lost(self, session, job: Job, worker_id: str | None, stale_before=None) -> bool:
        """Put a job whose worker died back in the queue to resume from its checkpoint, if its
        kind can and it has not used up `job_lost_resumes`; False when it did not."""
        if job.cancel_requested or service.resume_point(session, job) is None:
            return False
        if service.lost_resumes(session, job.id) >= self.settings.job_lost_resumes:
            return False
        requeued = service.requeue(
            session,
            job,
            attempt=job.attempt,
            reason=service.LOST,
            worker_id=worker_id,
            stale_before=stale_before,
        )
        if requeued:
            log.warning("job %s lost its worker %s; requeued: %s", job.id, worker_id, job.message)
        return requeued

    def _why_not_resumed(self, session, job: Job) -> str:
        """For the error of a lost job that could resume but was not: why."""
        if job.cancel_requested or service.resume_point(session, job) is None:
            return ""
        return (
            f"It was already put back in the queue {service.lost_resumes(session, job.id)} "
            f"time(s) after losing its worker, the most allowed (TUNEYARD_JOB_LOST_RESUMES). "
        )

    def _clean_up(self, job: Job) -> None:
        with session_scope(self.settings) as session:
            service.clean_up(session, session.get_one(Job, job.id))

    # -- running ---------------------------------------------------------------------------

    def reap(self) -> None:
        for job_id, entry in list(self.running.items()):
            code = entry.exit_code()
            if code is None:
                continue
            del self.running[job_id]
            if entry.log_handle is not None:
                entry.log_handle.close()
            with session_scope(self.settings) as session:
                job = session.get(Job, job_id)
                if job is None:
                    continue
                if job.status == "queued" or job.attempt != entry.attempt:
                    # Handed over: back in the queue, or running elsewhere now. Programs the
                    # job started (the handover went to its process alone) end with it.
                    entry.signal_group(signal.SIGTERM)
                    continue
                if job.status not in service.ACTIVE:
                    if job.pid is not None:  # failed elsewhere while it ran: clean up now
                        service.clean_up(session, job)
                elif job.cancel_requested:
                    service.finish(
                        session, job, "cancelled", message="Cancelled", attempt=entry.attempt
                    )
                else:
                    service.finish(
                        session,
                        job,
                        "failed",
                        message="Failed",
                        error=describe_exit(code),
                        attempt=entry.attempt,
                    )

    def forward_cancels(self) -> None:
        if not self.running:
            return
        with session_scope(self.settings) as session:
            wanted = service.cancels_asked(session, self.running)
        now = time.monotonic()
        for job_id in wanted:
            entry = self.running[job_id]
            if entry.term_sent_at is None:
                entry.signal_group(signal.SIGTERM)
                entry.term_sent_at = now
            elif now - entry.term_sent_at > entry.grace_seconds:
                entry.signal_group(signal.SIGKILL)

    def claim_and_start(self) -> None:
        free = self.concurrency - self.busy()
        if free <= 0 or self._draining.is_set():
            return
        with session_scope(self.settings) as session:
            candidates = session.scalars(
                select(Job.id)
                .where(Job.status == "queued")
                .order_by(Job.priority.desc(), Job.created_at, Job.id)
                .limit(free)
            ).all()
        for job_id in candidates:
            self.start_job(job_id)

    def claim(self, job_id: str) -> tuple[str, int] | None:
        """Take a queued job for this worker; returns its kind and attempt, or None if it was
        not queued."""
        now = utcnow()
        with session_scope(self.settings) as session:
            claimed = rows_changed(
                session,
                update(Job)
                .where(Job.id == job_id, Job.status == "queued")
                .values(
                    status="running",
                    worker_id=self.worker_id,
                    started_at=now,
                    heartbeat_at=now,
                    attempt=Job.attempt + 1,
                    pid=None,
                    message="Starting",
                ),
            )
            if not claimed:
                return None
            job = session.get_one(Job, job_id)
            return job.kind, job.attempt

    def start_job(self, job_id: str) -> bool:
        """Claim a queued job and start its process (which records its own pid); False if
        another worker took it."""
        claimed = self.claim(job_id)
        if claimed is None:
            return False
        kind_name, attempt = claimed
        log_path = self.layout.job_log(job_id)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        handle = log_path.open("ab")
        try:
            process = subprocess.Popen(
                [sys.executable, "-m", CHILD_MODULE, job_id],
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
                    session.get_one(Job, job_id),
                    "failed",
                    message="Failed",
                    error=f"Could not start the job's process: {exc}",
                )
            return False
        kind = get_kind(kind_name)
        grace = kind.cancel_grace_seconds or self.settings.job_cancel_grace_seconds
        self.running[job_id] = _Running(job_id, process, grace, attempt, log_handle=handle)
        log.info("started job %s in process %s", job_id, process.pid)
        return True

    def run_until_finished(self, job_id: str, on_poll=None, poll_seconds: float = 0.3) -> Job:
        """Run one job in the foreground (the CLI's --wait) or follow it if a worker has it."""
        self.start_job(job_id)
        while True:
            self.reap()
            self.forward_cancels()
            with session_scope(self.settings) as session:
                job = session.get_one(Job, job_id)
            if on_poll is not None:
                on_poll(job)
            if job.status in service.FINISHED:
                return job
            time.sleep(poll_seconds)


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)
