"""Model archives for the browser: the API's archive streams, signed in by the console's
session instead of a bearer token (a link cannot send one)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Query
from fastapi.responses import RedirectResponse, Response
from nicegui import app

from tuneyard.complete import service as complete_service
from tuneyard.complete.routes import archive_response
from tuneyard.console.session import SignedOut, browser_token, run_signed_in
from tuneyard.errors import AppError

ArchiveFormat = Annotated[str, Query(alias="format")]


async def _archive(kind: str, model_id: str, fmt: str) -> Response:
    find = (
        complete_service.adapter_archive
        if kind == "customized"
        else (complete_service.complete_archive)
    )
    try:
        complete_service.check_archive_format(fmt)
        folder, name = run_signed_in(
            lambda session, principal: find(session, principal, model_id), browser_token()
        )
    except SignedOut:
        from tuneyard.console.app import MOUNT_PATH

        return RedirectResponse(f"{MOUNT_PATH}/login")
    except AppError as exc:
        return Response(exc.message, status_code=exc.status, media_type="text/plain")
    return archive_response(folder, name, fmt)


@app.get("/download/customized-models/{model_id}", include_in_schema=False)
async def customized_archive(model_id: str, fmt: ArchiveFormat = "tar") -> Response:
    """The adapter folder as a tar stream."""
    return await _archive("customized", model_id, fmt)


@app.get("/download/complete-models/{model_id}", include_in_schema=False)
async def complete_archive(model_id: str, fmt: ArchiveFormat = "tar") -> Response:
    """The complete model's folder as a tar stream."""
    return await _archive("complete", model_id, fmt)
