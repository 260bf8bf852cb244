"""Creating, reading, cancelling and finishing jobs. Never commits: the caller owns the unit."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from tuneyard.auth.service import Principal
from tuneyard.db import rows_changed
from tuneyard.errors import Conflict, NotFound
from tuneyard.jobs.keys import UseKey, check, stored
from tuneyard.jobs.registry import get_kind
from tuneyard.models import Job, JobEvent, utcnow
from tuneyard.pagination import paginate
from tuneyard.storage import Layout

log = logging.getLogger(__name__)

ACTIVE = ("queued", "running")
FINISHED = ("succeeded", "failed", "cancelled")
STATUSES = ACTIVE + FINISHED


def enqueue(
    session: Session,
    principal: Principal,
    kind: str,
    params: dict[str, Any] | None = None,
    uses: list[UseKey] | None = None,
    message: str = "Waiting for a worker",
    priority: int = 0,
) -> Job:
    """Queue a job; a worker sees it once the caller's transaction commits, and claims queued
    jobs by priority (higher first), then by age. Work is queued by members (and admins); the
    caller checks its own rules first."""
    principal.require("member")
    get_kind(kind)  # fail now, not in the worker, on an unknown kind
    job = Job(
        project_id=principal.project_id,
        kind=kind,
        params=params or {},
        uses=stored(uses or []),
        created_by=principal.user_id,
        message=message,
        priority=priority,
    )
    session.add(job)
    session.flush()
    return job


def get_job(session: Session, principal: Principal, job_id: str) -> Job:
    job = session.get(Job, job_id)
    if job is None or job.project_id != principal.project_id:
        raise NotFound(f"No job '{job_id}'. List jobs with `tuneyard jobs list`.")
    return job


def list_jobs(
    session: Session,
    principal: Principal,
    status: str | None = None,
    kind: str | None = None,
    limit: int = 50,
    offset: int = 0,
):
    stmt = select(Job).where(Job.project_id == principal.project_id)
    if status:
        stmt = stmt.where(Job.status == status)
    if kind:
        stmt = stmt.where(Job.kind == kind)
    return paginate(session, stmt.order_by(Job.created_at.desc(), Job.id), limit, offset)


def cancel_job(session: Session, principal: Principal, job_id: str) -> Job:
    """Cancel a queued job at once; ask the worker to stop a running one."""
    principal.require("member")
    job = get_job(session, principal, job_id)
    if job.status in FINISHED:
        raise Conflict(f"Job {job_id} has already {job.status}; nothing to cancel.")
    queued = rows_changed(
        session,
        update(Job)
        .where(Job.id == job.id, Job.status == "queued")
        .values(status="cancelled", finished_at=utcnow(), message="Cancelled before it started"),
    )
    if queued == 0:
        job.cancel_requested = True
        job.message = "Cancelling"
    session.flush()
    session.refresh(job)
    if queued:
        # No process will ever report this job, so its domain settles here (an import that
        # never started is marked failed, not left "importing").
        _run_on_failure(session, job)
        clean_up(session, job)
    return job


def events(session: Session, job_id: str, kind: str | None = None) -> list[JobEvent]:
    stmt = select(JobEvent).where(JobEvent.job_id == job_id)
    if kind:
        stmt = stmt.where(JobEvent.kind == kind)
    return list(session.scalars(stmt.order_by(JobEvent.id)))


def read_log(job: Job, tail_bytes: int | None = None) -> str:
    path: Path = Layout().job_log(job.id)
    if not path.exists():
        return ""
    size = path.stat().st_size
    with path.open("rb") as handle:
        if tail_bytes is not None and size > tail_bytes:
            handle.seek(size - tail_bytes)
        return handle.read().decode("utf-8", errors="replace")


def active_jobs_using(session: Session, key: UseKey) -> list[Job]:
    """Jobs queued or running that read or write the resource `key`."""
    text = str(check(key))
    active = session.scalars(select(Job).where(Job.status.in_(ACTIVE)))
    return [job for job in active if text in (job.uses or [])]


def ensure_not_in_use(session: Session, key: UseKey, what: str) -> None:
    busy = active_jobs_using(session, key)
    if busy:
        job = busy[0]
        raise Conflict(
            f"{what} is in use by {job.kind} job {job.id} ({job.status}); "
            f"wait for it or cancel it with `tuneyard jobs cancel {job.id}`."
        )


def finish(
    session: Session,
    job: Job,
    status: str,
    *,
    message: str | None = None,
    error: str | None = None,
    result: dict[str, Any] | None = None,
    process_may_live: bool = False,
    stale_before: datetime | None = None,
    attempt: int | None = None,
) -> bool:
    """Move a running job to a final status, once. Returns False if it was already final.

    Running the kind's on_failure hook here keeps the domain entity in step with the job
    (a dataset whose parse died is marked failed, not left "parsing"). Its files are removed
    (the kind's cleanup) only when no process of the job can still be writing them: with
    `process_may_live` (a worker on another machine saw only its heartbeat stop) they are left,
    and `pid` stays set to say so, until the job's own machine sees the process gone
    (clean_up). `stale_before` fails the job only if its heartbeat is still older than that
    when the row is written: a job that just reported keeps running. `attempt` ends the job
    only while that attempt runs (not once it went back to the queue, or was claimed again).
    """
    values: dict[str, Any] = {"status": status, "finished_at": utcnow()}
    if message is not None:
        values["message"] = message
    if error is not None:
        values["error"] = error
    if result is not None:
        values["result"] = result
    if status == "succeeded":
        values["progress"] = 100.0
    if not process_may_live:
        values["pid"] = None
    where = [Job.id == job.id, Job.status.in_(ACTIVE)]
    if stale_before is not None:
        where.append(Job.heartbeat_at < stale_before)
    if attempt is not None:
        where += [Job.status == "running", Job.attempt == attempt]
    changed = rows_changed(session, update(Job).where(*where).values(**values))
    if not changed:
        return False
    session.refresh(job)
    if status in ("failed", "cancelled"):
        _run_on_failure(session, job)
        if not process_may_live:
            clean_up(session, job)
    return True


# JobEvent kind written each time a running job goes back to the queue; its data's "reason" is
# HANDED_OVER (its worker stopped gracefully) or LOST (its worker or machine died).
REQUEUED = "requeued"
HANDED_OVER = "worker stopped"
LOST = "worker lost"


def cancels_asked(session: Session, job_ids: Iterable[str]) -> set[str]:
    """Which of these jobs someone asked to cancel (a worker forwards it to their processes)."""
    return set(
        session.scalars(
            select(Job.id).where(Job.id.in_(list(job_ids)), Job.cancel_requested.is_(True))
        )
    )


def resume_point(session: Session, job: Job) -> int | None:
    """The checkpoint step a new attempt of `job` resumes from; None for a kind that cannot
    resume, or one with no checkpoint yet."""
    kind = get_kind(job.kind)
    return kind.resume_point(session, job) if kind.resume_point is not None else None


def lost_resumes(session: Session, job_id: str) -> int:
    """How many times the job went back to the queue because its worker died."""
    return sum(1 for row in events(session, job_id, REQUEUED) if row.data.get("reason") == LOST)


def requeue(
    session: Session,
    job: Job,
    *,
    attempt: int,
    reason: str,
    worker_id: str | None = None,
    stale_before: datetime | None = None,
) -> bool:
    """Put a running attempt back in the queue, once: only while that attempt is still the one
    running (and, if given, still on `worker_id`, or silent since `stale_before`), and no one
    asked to cancel it. What the attempt left half-written goes first (the kind's cleanup; a
    resumable kind keeps its finished checkpoints), so that the next worker to claim it starts
    clean, from its last checkpoint or from the start. Returns False when it did not apply."""
    step = resume_point(session, job)
    where = [
        Job.id == job.id,
        Job.status == "running",
        Job.attempt == attempt,
        Job.cancel_requested.is_(False),
    ]
    if worker_id is not None:
        where.append(Job.worker_id == worker_id)
    if stale_before is not None:
        where.append(Job.heartbeat_at < stale_before)
    where_from = f"from checkpoint step {step}" if step is not None else "from the start"
    message = f"{reason.capitalize()}; resumes {where_from} on another worker"
    changed = rows_changed(
        session,
        update(Job)
        .where(*where)
        .values(status="queued", pid=None, worker_id=None, heartbeat_at=None, message=message),
    )
    if not changed:
        return False
    session.refresh(job)
    kind = get_kind(job.kind)
    if kind.cleanup is not None:
        try:
            kind.cleanup(session, job)
        except Exception:
            log.exception("could not remove what job %s (%s) left", job.id, job.kind)
    if kind.on_requeue is not None:
        kind.on_requeue(session, job)
    session.add(
        JobEvent(
            job_id=job.id,
            kind=REQUEUED,
            data={"reason": reason, "attempt": attempt, "resume_step": step},
        )
    )
    session.flush()
    return True


def _run_on_failure(session: Session, job: Job) -> None:
    kind = get_kind(job.kind)
    if kind.on_failure is not None:
        kind.on_failure(session, job)


def clean_up(session: Session, job: Job) -> None:
    """No process of this finished job is left: remove what a failed or cancelled run left on
    disk (the kind's cleanup), and clear `pid`, which said that one might still be writing.

    A cleanup reads rows and removes files; one that fails is logged, not raised: the job
    stays failed, and what is left on disk is a leftover, never a model that looks whole.
    """
    if job.status in ("failed", "cancelled"):
        kind = get_kind(job.kind)
        if kind.cleanup is not None:
            try:
                kind.cleanup(session, job)
            except Exception:
                log.exception("could not remove what job %s (%s) left", job.id, job.kind)
    job.pid = None
    session.flush()


def finished_since(session: Session, principal: Principal, since: datetime) -> list[Job]:
    """The user's jobs that ended after `since`, oldest first (for "job finished" notices)."""
    stmt = (
        select(Job)
        .where(
            Job.project_id == principal.project_id,
            Job.created_by == principal.user_id,
            Job.status.in_(FINISHED),
            Job.finished_at > since,
        )
        .order_by(Job.finished_at)
        .limit(20)
    )
    return list(session.scalars(stmt))
