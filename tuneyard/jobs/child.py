"""The process one job runs in: `python -m tuneyard.jobs.child JOB_ID`.

It records its pid, heartbeats, reports progress and events, runs the job body and records how
it ended. stdout and stderr are the job's log file (the worker opened it for us). Each write it
makes about its job holds only while the job is still running for this attempt: a process
whose job a worker took for dead (and failed) stops and exits without writing more, and so does
one that could not heartbeat for as long as others wait before taking a job for dead.

A stopping worker sends HANDOVER_SIGNAL: the body stops as on cancel (a cooperative one at its
next safe point, training with a checkpoint; any other at once), and the job goes back to the
queue for another worker instead of ending cancelled.

On a cluster node that shares no disk with the API (an artifact store; TUNEYARD_API_DATA_DIR
set), a job that succeeds does not mark itself succeeded: its files are still on this node. It
writes how it ended (`outcome.json` in its job folder) and exits 0; its actor publishes what it
made, and the worker, once those files are in the API's data dir, marks it succeeded (see
tuneyard.jobs.ray_executor).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
import traceback

from sqlalchemy import update

from tuneyard.config import Settings, get_settings
from tuneyard.db import rows_changed, session_scope
from tuneyard.errors import AppError
from tuneyard.jobs import service
from tuneyard.jobs.context import HANDOVER_SIGNAL, JobCancelled, JobContext, JobFenced
from tuneyard.jobs.registry import get_kind
from tuneyard.models import Job, utcnow
from tuneyard.storage import atomic_file

log = logging.getLogger("tuneyard.job")

# The exit code of a process that stopped because its attempt was ended elsewhere.
FENCED_EXIT = 3
# In the job's folder on a node with an artifact store: the result its worker records.
OUTCOME_FILE = "outcome.json"


def _heartbeat(ctx: JobContext, settings: Settings, stop: threading.Event) -> None:
    last_beat = time.monotonic()
    while not stop.wait(settings.job_heartbeat_seconds):
        try:
            with session_scope(settings) as session:
                beat = rows_changed(
                    session,
                    update(Job)
                    .where(
                        Job.id == ctx.job_id,
                        Job.status == "running",
                        Job.attempt == ctx.attempt,
                    )
                    .values(heartbeat_at=utcnow()),
                )
        except Exception:  # a missed beat is not fatal; the next one may get through
            log.warning("heartbeat failed", exc_info=True)
            if time.monotonic() - last_beat > settings.job_stale_after_seconds:
                # A worker elsewhere now takes this job for dead and may run it again: leave,
                # so that two processes never write the same job's files.
                log.error("job %s could not heartbeat for too long; stopping", ctx.job_id)
                logging.shutdown()
                os._exit(FENCED_EXIT)
            continue
        if beat:
            last_beat = time.monotonic()
        elif not stop.is_set():
            # The body may be in the middle of a write: leave at once; the job's machine
            # removes what it left once it sees this process gone.
            log.error("job %s was ended elsewhere (taken for dead); stopping", ctx.job_id)
            logging.shutdown()
            os._exit(FENCED_EXIT)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, AppError):
        return exc.message
    return f"{type(exc).__name__}: {exc}"


def _start(job_id: str, settings: Settings) -> JobContext | None:
    """Record this process as the job's, in the same write that checks the job is running."""
    with session_scope(settings) as session:
        started = rows_changed(
            session,
            update(Job)
            .where(Job.id == job_id, Job.status == "running")
            .values(pid=os.getpid(), heartbeat_at=utcnow()),
        )
        if not started:
            job = session.get(Job, job_id)
            log.error("job %s is not running here (status %s)", job_id, job and job.status)
            return None
        return JobContext(session.get_one(Job, job_id), settings)


def run(job_id: str) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stdout
    )
    settings = get_settings()
    # Until the body runs, a handover is only noted (the default action would kill us). The
    # worker sends it only once the pid is recorded, which comes after this.
    early_handover = threading.Event()
    signal.signal(HANDOVER_SIGNAL, lambda *_: early_handover.set())
    ctx = _start(job_id, settings)
    if ctx is None:
        return 2
    kind = get_kind(ctx.kind)

    def on_term(_signum, _frame):
        ctx.cancel_requested = True
        if not kind.cooperative_cancel:
            raise JobCancelled()

    def on_handover(_signum, _frame):
        ctx.handover_requested = ctx.cancel_requested = True
        if not kind.cooperative_cancel:
            raise JobCancelled()

    def ignore_stops() -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(HANDOVER_SIGNAL, signal.SIG_IGN)

    signal.signal(signal.SIGTERM, on_term)
    stop = threading.Event()
    beat = threading.Thread(target=_heartbeat, args=(ctx, settings, stop), daemon=True)
    beat.start()
    log.info("job %s (%s) started in process %s", job_id, ctx.kind, os.getpid())
    started = time.monotonic()
    try:
        signal.signal(HANDOVER_SIGNAL, on_handover)
        if early_handover.is_set():
            on_handover(HANDOVER_SIGNAL, None)
        result = kind.run(ctx)
        ignore_stops()
    except JobCancelled:
        ignore_stops()
        stop.set()
        beat.join()  # a heartbeat would take the requeued job as ended elsewhere
        with session_scope(settings) as session:
            job = session.get_one(Job, job_id)
            if ctx.handover_requested and service.requeue(
                session, job, attempt=ctx.attempt, reason=service.HANDED_OVER
            ):
                log.info("worker stopped: %s", job.message)
                return 0
            service.finish(session, job, "cancelled", message="Cancelled", attempt=ctx.attempt)
        log.info("job cancelled")
        return 0
    except JobFenced as fenced:
        log.error("%s Stopping without writing more.", fenced)
        return FENCED_EXIT
    except BaseException as exc:
        ignore_stops()
        log.error("job failed: %s\n%s", _describe(exc), traceback.format_exc())
        with session_scope(settings) as session:
            service.finish(
                session,
                session.get_one(Job, job_id),
                "failed",
                message="Failed",
                error=_describe(exc),
                attempt=ctx.attempt,
            )
        return 1
    finally:
        stop.set()
        beat.join()
    elapsed = time.monotonic() - started
    log.info("job succeeded in %.1f s", elapsed)
    with session_scope(settings) as session:
        job = session.get_one(Job, job_id)
        if settings.api_data_dir is not None:
            outcome = {
                "message": job.message if job.message else "Done",
                "result": result if isinstance(result, dict) else {},
            }
            with atomic_file(ctx.layout.job_dir(job_id) / OUTCOME_FILE, "w") as handle:
                json.dump(outcome, handle)
            log.info("the worker records the job as succeeded once its files are home")
            return 0
        service.finish(
            session,
            job,
            "succeeded",
            message=job.message if job.message else "Done",
            result=result if isinstance(result, dict) else {},
            attempt=ctx.attempt,
        )
    return 0


if __name__ == "__main__":
    sys.exit(run(sys.argv[1]))
