"""Jobs: list, show, log, events, cancel."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import PlainTextResponse

from tuneyard.bounds import INT64_MAX
from tuneyard.deps import CurrentPrincipal, DbSession, Paging
from tuneyard.errors import Invalid
from tuneyard.jobs import service
from tuneyard.jobs.schemas import JobEventOut, JobOut
from tuneyard.pagination import Page

router = APIRouter(prefix="/jobs", tags=["jobs"])


@router.get("", response_model=Page[JobOut])
def list_jobs(
    principal: CurrentPrincipal,
    session: DbSession,
    page: Paging,
    status: Annotated[str | None, Query(json_schema_extra={"enum": list(service.STATUSES)})] = None,
    kind: str | None = None,
):
    if status is not None and status not in service.STATUSES:
        raise Invalid(f"Unknown status '{status}'; use one of: {', '.join(service.STATUSES)}.")
    items, total = service.list_jobs(session, principal, status, kind, page.limit, page.offset)
    return {"items": items, "total": total}


@router.get("/{job_id}", response_model=JobOut)
def get_job(job_id: str, principal: CurrentPrincipal, session: DbSession):
    return service.get_job(session, principal, job_id)


@router.get(
    "/{job_id}/logs", responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}}
)
def job_logs(
    job_id: str,
    principal: CurrentPrincipal,
    session: DbSession,
    tail: Annotated[
        int | None, Query(ge=1, le=INT64_MAX, description="Only the last N bytes")
    ] = None,
):
    return PlainTextResponse(service.read_log(service.get_job(session, principal, job_id), tail))


@router.get("/{job_id}/events", response_model=list[JobEventOut])
def job_events(
    job_id: str, principal: CurrentPrincipal, session: DbSession, kind: str | None = None
):
    job = service.get_job(session, principal, job_id)
    return service.events(session, job.id, kind)


@router.post("/{job_id}/cancel", response_model=JobOut)
def cancel_job(job_id: str, principal: CurrentPrincipal, session: DbSession):
    return service.cancel_job(session, principal, job_id)
