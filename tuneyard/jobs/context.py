"""What a job body gets (JobContext), how it says it stopped on request (JobCancelled), and
how it learns that its attempt was ended elsewhere (JobFenced).

Kept apart from the job process's entry module, which runs as __main__: classes defined there
would not be the ones job bodies import.
"""

from __future__ import annotations

import json
import logging
import signal
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from tuneyard.config import Settings
from tuneyard.db import rows_changed, session_scope
from tuneyard.models import Job, JobEvent, utcnow
from tuneyard.storage import Layout, atomic_file

log = logging.getLogger("tuneyard.job")

# What a stopping worker sends a job's process (not its group: programs a job runs would die of
# it): stop at the next safe point, with a checkpoint where the kind writes them, and go back
# to the queue for another worker.
HANDOVER_SIGNAL = signal.SIGUSR1
# On a cluster node without the API's data dir: the folder in the job's folder where the body
# asks for an artifact folder to be brought home (`JobContext.land`), and the kind of the job
# event its worker records once it is.
LAND_REQUESTS = "land"
LANDED = "landed"
LAND_POLL_SECONDS = 0.3


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
        # Set with cancel_requested when the stop is a handover: the body stops the same way,
        # and the job goes back to the queue instead of ending cancelled.
        self.handover_requested = False
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

    def events(self, kind: str, items: list[dict[str, Any]]) -> None:
        """Record several events of one kind in one write (per-step metrics, a batch at a
        time: a tiny model's steps take milliseconds, and each write is a transaction)."""
        with session_scope(self.settings) as session:
            session.add_all(JobEvent(job_id=self.job_id, kind=kind, data=data) for data in items)

    def check_cancelled(self) -> None:
        """Call at safe points in a cooperative job body."""
        if self.cancel_requested:
            raise JobCancelled()

    def land(self, folder: Path) -> None:
        """Have `folder` (an artifact folder or file of this data dir, written whole) in the
        API's data dir before the body writes the rows that say it is ready, so that no reader
        of those rows looks for files that are not there yet. Only a job on a cluster node that
        shares no disk with the API has anything to do: its actor publishes it to the artifact
        store, its worker fetches it and records the job event `landed`, which this waits for
        (see tuneyard.jobs.ray_executor). Elsewhere it is already there."""
        if self.settings.api_data_dir is None:
            return
        key = folder.relative_to(self.layout.root).as_posix()
        token = uuid.uuid4().hex
        with atomic_file(self.work_dir / LAND_REQUESTS / f"{token}.json", "w") as handle:
            json.dump({"key": key}, handle)
        log.info("waiting for %s to reach the API's data dir", key)
        while True:
            with session_scope(self.settings) as session:
                landed = session.scalars(
                    select(JobEvent.data).where(
                        JobEvent.job_id == self.job_id, JobEvent.kind == LANDED
                    )
                ).all()
            for data in landed:
                if data.get("token") == token:
                    if data.get("error"):
                        raise RuntimeError(data["error"])
                    return
            self.check_cancelled()
            time.sleep(LAND_POLL_SECONDS)
