"""The workers table: every executor records itself at each heartbeat, so that readiness and
the dashboard can tell which workers are alive, on which hosts, running how many jobs."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from tuneyard.config import Settings
from tuneyard.db import rows_changed
from tuneyard.models import Job, Worker, utcnow

# A worker unseen for this long is gone for good (stopped without saying so): its row goes.
FORGET_AFTER = timedelta(days=1)


def record_heartbeat(session: Session, worker_id: str, host: str, running_jobs: int) -> None:
    """Mark the worker seen now; its first heartbeat adds it (and drops long-gone workers)."""
    now = utcnow()
    seen = rows_changed(
        session,
        update(Worker).where(Worker.id == worker_id).values(seen_at=now, running_jobs=running_jobs),
    )
    if seen:
        return
    session.execute(delete(Worker).where(Worker.seen_at < now - FORGET_AFTER))
    session.add(
        Worker(id=worker_id, host=host, started_at=now, seen_at=now, running_jobs=running_jobs)
    )


def forget_worker(session: Session, worker_id: str) -> None:
    """The worker stopped: it is no longer counted as alive."""
    session.execute(delete(Worker).where(Worker.id == worker_id))


def live_workers(session: Session, settings: Settings) -> list[Worker]:
    """Workers seen within the time after which a silent job is taken as dead."""
    cutoff = utcnow() - timedelta(seconds=settings.job_stale_after_seconds)
    return list(
        session.scalars(select(Worker).where(Worker.seen_at >= cutoff).order_by(Worker.host))
    )


def backlog(session: Session) -> int:
    """Jobs waiting for a worker."""
    return session.scalar(select(func.count()).select_from(Job).where(Job.status == "queued")) or 0
