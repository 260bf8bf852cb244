"""What a job body gets (JobContext) and how it says it stopped on request (JobCancelled).

Kept apart from the job process's entry module, which runs as __main__: classes defined there
would not be the ones job bodies import.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import update

from tuneyard.config import Settings
from tuneyard.db import session_scope
from tuneyard.models import Job, JobEvent
from tuneyard.storage import Layout

log = logging.getLogger("tuneyard.job")


class JobCancelled(Exception):
    """Raised inside a job body to stop it after a cancel request."""


class JobContext:
    """What a job body gets: its parameters, and ways to report back."""

    def __init__(self, job: Job, settings: Settings):
        self.job_id = job.id
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
            session.execute(update(Job).where(Job.id == self.job_id).values(**values))

    def event(self, kind: str, data: dict[str, Any]) -> None:
        """Record a structured event (a metric row, a warning) for this job."""
        with session_scope(self.settings) as session:
            session.add(JobEvent(job_id=self.job_id, kind=kind, data=data))

    def check_cancelled(self) -> None:
        """Call at safe points in a cooperative job body."""
        if self.cancel_requested:
            raise JobCancelled()
