"""Saving customized models; complete models: list, show, delete, archive, push."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Query, status
from fastapi.responses import StreamingResponse

from tuneyard.complete import service
from tuneyard.complete.archive import FORMATS as ARCHIVE_FORMATS
from tuneyard.complete.archive import tar_size, tar_stream
from tuneyard.complete.schemas import (
    CompleteModelOut,
    CompleteModelSummary,
    PushRequest,
    SaveRequest,
)
from tuneyard.deps import CurrentPrincipal, DbSession, Paging
from tuneyard.jobs.schemas import JobAccepted
from tuneyard.pagination import Page

router = APIRouter(tags=["complete models"])

ArchiveFormat = Annotated[
    str,
    Query(
        alias="format",
        description="tar (default) or tar.gz",
        json_schema_extra={"enum": list(ARCHIVE_FORMATS)},
    ),
]
ARCHIVE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The folder as a tar or tar.gz stream",
        "content": {
            media: {"schema": {"type": "string", "format": "binary"}}
            for media in ("application/x-tar", "application/gzip")
        },
    }
}


def archive_response(folder: Path, name: str, fmt: str) -> StreamingResponse:
    """A model folder as a tar (with its length) or tar.gz stream, written as it is sent."""
    headers = {"Content-Disposition": f'attachment; filename="{name}.{fmt}"'}
    if fmt == "tar":
        headers["Content-Length"] = str(tar_size(folder, name))
    media = "application/x-tar" if fmt == "tar" else "application/gzip"
    return StreamingResponse(tar_stream(folder, name, fmt), media_type=media, headers=headers)


@router.post(
    "/customized-models/{model_id}/save",
    response_model=JobAccepted,
    status_code=status.HTTP_202_ACCEPTED,
)
def save_customized(
    model_id: str,
    principal: CurrentPrincipal,
    session: DbSession,
    body: SaveRequest | None = None,
):
    """Merge the adapter into its base as a new complete model (status "saving" at once)."""
    row = service.start_save(session, principal, model_id, (body or SaveRequest()).dtype)
    return JobAccepted(id=row.id, job_id=row.job_id)


@router.get("/customized-models/{model_id}/archive", responses=ARCHIVE_RESPONSES)
def customized_archive(
    model_id: str, principal: CurrentPrincipal, session: DbSession, fmt: ArchiveFormat = "tar"
):
    """The adapter folder as a tar stream."""
    service.check_archive_format(fmt)
    folder, name = service.adapter_archive(session, principal, model_id)
    return archive_response(folder, name, fmt)


@router.get("/complete-models", response_model=Page[CompleteModelSummary])
def list_complete(
    principal: CurrentPrincipal,
    session: DbSession,
    page: Paging,
    customized_model_id: str | None = None,
):
    items, total = service.list_complete(
        session, principal, customized_model_id, page.limit, page.offset
    )
    return {"items": [service.summary(row) for row in items], "total": total}


@router.get("/complete-models/{model_id}", response_model=CompleteModelOut)
def get_complete(model_id: str, principal: CurrentPrincipal, session: DbSession):
    return service.get_complete(session, principal, model_id)


@router.delete("/complete-models/{model_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_complete(model_id: str, principal: CurrentPrincipal, session: DbSession):
    service.delete_complete(session, principal, model_id)


@router.get("/complete-models/{model_id}/archive", responses=ARCHIVE_RESPONSES)
def complete_archive(
    model_id: str, principal: CurrentPrincipal, session: DbSession, fmt: ArchiveFormat = "tar"
):
    """The model folder as a tar stream, written as it is sent."""
    service.check_archive_format(fmt)
    folder, name = service.complete_archive(session, principal, model_id)
    return archive_response(folder, name, fmt)


@router.post(
    "/complete-models/{model_id}/push",
    response_model=JobAccepted,
    status_code=status.HTTP_202_ACCEPTED,
)
def push_complete(
    model_id: str, body: PushRequest, principal: CurrentPrincipal, session: DbSession
):
    """Upload the model folder to the hub (HF_ENDPOINT); 503 at once if it cannot be reached.
    A repository the push creates is private unless `public` is true."""
    row, job = service.start_push(session, principal, model_id, body.repo_id, body.public)
    return JobAccepted(id=row.id, job_id=job.id)
