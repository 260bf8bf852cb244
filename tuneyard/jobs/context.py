"""What a job body gets (JobContext), how it says it stopped on request (JobCancelled), and
how it learns that its attempt was ended elsewhere (JobFenced).

Kept apart from the job process's entry module, which runs as __main__: classes defined there
would not be the ones job bodies import.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import update
from sqlalchemy.orm import Session

from tuneyard.config import Settings
from tuneyard.db import rows_changed, session_scope
from tuneyard.models import Job, JobEvent, utcnow
from tuneyard.storage import Layout

log = logging.getLogger("tuneyard.job")


class JobCancelled(Exception):
    """Raised inside a job body to stop it after a cancel request."""


class JobFenced(BaseException):
    """The job is no longer running for this attempt: a worker took it for dead and failed it.
    The process stops without writing more (a BaseException, so that no `except Exception` in
    a job body carries on); what it left is removed on its machine once it has exited."""


class JobContext:
    """What a job body gets: its parameters, and ways to report back."""

    def __init__(self, job: Job, settings: Settings):
        self.job_id = job.id
        self.attempt = job.attempt
        self.kind = job.kind
        self.project_id = job.project_id
        self.params: dict[str, Any] = dict(job.params or {})
        self.settings = settings
        self.layout = Layout(settings)
        self.work_dir = self.layout.job_dir(job.id)
        self.cancel_requested = False
        self.log = log

    def progress(self, percent: float, message: str | None = None) -> None:
        """Record progress (0-100) and an optional one-line status message."""
        values: dict[str, Any] = {"progress": max(0.0, min(100.0, float(percent)))}
        if message is not None:
            values["message"] = message
            log.info("%s (%.0f%%)", message, values["progress"])
        with session_scope(self.settings) as session:
            self._still_running(session, values)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A unit of work that commits only while this attempt is still running: for the writes
        that make the job's result visible (a row saying ready). Raises JobFenced, writing
        nothing, once a worker has ended the attempt; and while it is open, a worker that took
        the job for dead cannot end it (the job's row is written first, and stays locked)."""
        with session_scope(self.settings) as session:
            self._still_running(session, {"heartbeat_at": utcnow()})
            yield session

    def _still_running(self, session: Session, values: dict[str, Any]) -> None:
        written = rows_changed(
            session,
            update(Job)
            .where(Job.id == self.job_id, Job.status == "running", Job.attempt == self.attempt)
            .values(**values),
        )
        if not written:
            raise JobFenced(f"Job {self.job_id} is no longer running for attempt {self.attempt}.")

    def event(self, kind: str, data: dict[str, Any]) -> None:
        """Record a structured event (a metric row, a warning) for this job."""
        with session_scope(self.settings) as session:
            session.add(JobEvent(job_id=self.job_id, kind=kind, data=data))

    def check_cancelled(self) -> None:
        """Call at safe points in a cooperative job body."""
        if self.cancel_requested:
            raise JobCancelled()
