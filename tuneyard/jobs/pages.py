"""The console's view of jobs: the project's recent jobs, and one job with its live log."""

from __future__ import annotations

import json
from typing import Any

from nicegui import ui

from tuneyard.console.jobs import JobWatch, job_label
from tuneyard.console.session import fetch, read
from tuneyard.console.shell import console_page
from tuneyard.console.widgets import PagedTable, column, heading, when
from tuneyard.errors import AppError
from tuneyard.jobs import service

LOG_TAIL_BYTES = 16_000
LOG_SECONDS = 2.0


def _job_rows(session, principal, limit: int, offset: int) -> tuple[list[dict[str, Any]], int]:
    jobs, total = service.list_jobs(session, principal, limit=limit, offset=offset)
    rows = [
        {
            "id": job.id,
            "kind": job_label(job.kind),
            "status": job.status,
            "progress": f"{job.progress:.0f}%",
            "message": job.error or job.message,
            "created": when(job.created_at),
        }
        for job in jobs
    ]
    return rows, total


def recent_jobs() -> PagedTable:
    """The project's jobs, newest first; a row opens the job."""
    return PagedTable(
        [
            column("kind", "Job"),
            column("status", "Status"),
            column("progress", "Progress", wide_only=True),
            column("message", "Message", wide_only="gt-sm"),
            column("created", "Created", wide_only=True),
        ],
        _job_rows,
        link=lambda row: f"/jobs/{row['id']}",
        rows_per_page=10,
        empty="No jobs yet: uploads, imports, trainings, saves and deploys run as jobs.",
    )


def _job_view(session, principal, job_id: str) -> dict[str, Any]:
    job = service.get_job(session, principal, job_id)
    return {
        "id": job.id,
        "kind": job.kind,
        "params": job.params,
        "result": job.result,
        "attempt": job.attempt,
        "created_at": job.created_at,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
        "placement": placement_text(job.node, job.resources),
    }


def placement_text(node: str | None, resources: dict[str, float] | None) -> str | None:
    """Where a job ran and what it was given there (jobs of the ray executor)."""
    if resources is None:
        return None
    given = [f"{resources.get('num_cpus', 0):g} CPU"]
    if resources.get("num_gpus"):
        given.append(f"{resources['num_gpus']:g} GPU")
    if resources.get("memory"):
        given.append(f"{resources['memory'] / 2**30:.1f} GiB memory")
    return f"On {node or 'a Ray node (not placed yet)'}: {', '.join(given)}"


def _log_tail(session, principal, job_id: str) -> tuple[str, bool]:
    """The log's last lines, and whether the job has ended (then the log is complete)."""
    job = service.get_job(session, principal, job_id)
    return service.read_log(job, LOG_TAIL_BYTES), job.status in service.FINISHED


@console_page("/jobs/{job_id}", "Job", "/")
def job_page(job_id: str):
    job = read(lambda session, principal: _job_view(session, principal, job_id))
    started = f"Started {when(job['started_at'])}" if job["started_at"] else "Not started yet."
    heading(f"Job {job_label(job['kind'])}", started)
    if job["placement"]:
        ui.label(job["placement"]).classes("text-sm").props('data-testid="job-placement"')
    with ui.card().classes("w-full"):
        JobWatch(job_id)
    with ui.card().classes("w-full"):
        ui.label("Log (last lines)").classes("font-semibold")
        log = ui.log(max_lines=400).classes("w-full h-80 text-xs").props('data-testid="job-log"')
        shown: dict[str, str | None] = {"text": None}

        async def refresh() -> None:
            try:
                text, ended = await fetch(lambda s, p: _log_tail(s, p, job_id))
            except AppError:
                timer.cancel()
                return
            if text != shown["text"]:
                shown["text"] = text
                log.clear()
                log.push(
                    text.rstrip("\n") or "(the log is empty so far)",
                    classes="whitespace-pre-wrap break-all",
                )
            if ended:
                timer.cancel()

        timer = ui.timer(LOG_SECONDS, refresh, immediate=True)
    with ui.expansion("Parameters and result", icon="data_object").classes("w-full"):
        shown_json = json.dumps({"params": job["params"], "result": job["result"]}, indent=2)
        ui.code(shown_json, language="json").classes("w-full text-xs")
