"""The process one job runs in: `python -m tuneyard.jobs.child JOB_ID`.

It records its pid, heartbeats, reports progress and events, runs the job body and records how
it ended. stdout and stderr are the job's log file (the worker opened it for us). Each write it
makes about its job holds only while the job is still running for this attempt: a process
whose job a worker took for dead (and failed) stops and exits without writing more.
"""

from __future__ import annotations

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
from tuneyard.jobs.context import JobCancelled, JobContext, JobFenced
from tuneyard.jobs.registry import get_kind
from tuneyard.models import Job, utcnow

log = logging.getLogger("tuneyard.job")

# The exit code of a process that stopped because its attempt was ended elsewhere.
FENCED_EXIT = 3


def _heartbeat(ctx: JobContext, settings: Settings, stop: threading.Event) -> None:
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
            continue
        if not beat and not stop.is_set():
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
    ctx = _start(job_id, settings)
    if ctx is None:
        return 2
    kind = get_kind(ctx.kind)

    def on_term(_signum, _frame):
        ctx.cancel_requested = True
        if not kind.cooperative_cancel:
            raise JobCancelled()

    signal.signal(signal.SIGTERM, on_term)
    stop = threading.Event()
    beat = threading.Thread(target=_heartbeat, args=(ctx, settings, stop), daemon=True)
    beat.start()
    log.info("job %s (%s) started in process %s", job_id, ctx.kind, os.getpid())
    started = time.monotonic()
    try:
        result = kind.run(ctx)
    except JobCancelled:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        log.info("job cancelled")
        with session_scope(settings) as session:
            service.finish(session, session.get_one(Job, job_id), "cancelled", message="Cancelled")
        return 0
    except JobFenced as fenced:
        log.error("%s Stopping without writing more.", fenced)
        return FENCED_EXIT
    except BaseException as exc:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        log.error("job failed: %s\n%s", _describe(exc), traceback.format_exc())
        with session_scope(settings) as session:
            service.finish(
                session,
                session.get_one(Job, job_id),
                "failed",
                message="Failed",
                error=_describe(exc),
            )
        return 1
    finally:
        stop.set()
        beat.join()
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    elapsed = time.monotonic() - started
    log.info("job succeeded in %.1f s", elapsed)
    with session_scope(settings) as session:
        job = session.get_one(Job, job_id)
        service.finish(
            session,
            job,
            "succeeded",
            message=job.message if job.message else "Done",
            result=result if isinstance(result, dict) else {},
        )
    return 0


if __name__ == "__main__":
    sys.exit(run(sys.argv[1]))
