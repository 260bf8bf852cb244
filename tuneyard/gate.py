"""The API's gate: a request body is read only for a caller the route lets in, and only up to
the route's limit.

FastAPI reads a request's whole body (spooling uploads to disk) before any dependency runs,
so a token check in a dependency comes after an anonymous 300 MB upload was stored. The gate
steps in at the first read of the body, when the route is known: a route that needs a
principal settles it from the Authorization header there (401 before any of the body is
read), and the body is counted as it streams in and refused past the route's limit (413).

The console's uploads (NiceGUI posts each to `/_nicegui/client/<client>/upload/<element>`)
are counted the same way, against the largest file the console takes (a dataset); the
uploader's own size check runs in the browser, where a caller can skip it.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import anyio
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tuneyard.config import Settings, get_settings
from tuneyard.deps import PRINCIPAL_KEY, _principal, principal_from_header
from tuneyard.errors import AppError, TooLarge

API_PREFIXES = ("/api/v1/", "/v1/")
CONSOLE_UPLOAD = re.compile(r"/_nicegui/client/[^/]+/upload/[^/]+")
CONSOLE_TOO_LARGE = (
    "The file is larger than the limit of {limit}; split it into smaller files, or raise "
    "TUNEYARD_DATASET_MAX_FILE_BYTES."
)
# Room around what a route takes: an upload's other form fields and multipart framing.
FORM_OVERHEAD = 64 * 1024
DEFAULT_TOO_LARGE = (
    "The request body is larger than the limit of {limit}; send less, or raise "
    "TUNEYARD_MAX_REQUEST_BYTES."
)


def body_limit(limit: Callable[[Settings], int], too_large: str):
    """Give a route its own limit on what it takes (an upload's file, a login's fields) in
    place of TUNEYARD_MAX_REQUEST_BYTES; the body may be FORM_OVERHEAD more, for the form or
    the JSON around it. `too_large` says what to do, with {limit} for the limit."""

    def mark(endpoint):
        endpoint.body_limit = (limit, too_large)
        return endpoint

    return mark


class Refused(HTTPException):
    """An AppError met while the body is read (FastAPI re-raises only HTTPExceptions there)."""

    def __init__(self, error: AppError):
        super().__init__(error.status, error.message, headers=error.headers or None)
        self.error = error


def size_text(size: int) -> str:
    return f"{size / 1024**2:.1f} MiB" if size >= 1024**2 else f"{size:,} bytes"


def _needs_principal(route) -> bool:
    pending = [getattr(route, "dependant", None)]
    while pending:
        dependant = pending.pop()
        if dependant is None:
            continue
        if dependant.call is _principal:
            return True
        pending.extend(dependant.dependencies)
    return False


class RequestGate:
    """ASGI middleware over the API's paths (the console's are left to it)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if CONSOLE_UPLOAD.fullmatch(scope["path"]):
            await self._console_upload(scope, receive, send)
            return
        if not scope["path"].startswith(API_PREFIXES):
            await self.app(scope, receive, send)
            return
        limit: int | None = None
        too_large = ""
        received = 0

        async def gated_receive() -> Message:
            nonlocal limit, too_large, received
            if limit is None:
                limit, too_large = await self._admit(scope)
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise Refused(TooLarge(too_large))
            return message

        await self.app(scope, gated_receive, send)

    async def _console_upload(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A console upload, counted as it streams in (the console's pages check who asks)."""
        file_limit = get_settings().dataset_max_file_bytes
        limit = file_limit + FORM_OVERHEAD
        refusal = TooLarge(CONSOLE_TOO_LARGE.format(limit=size_text(file_limit)))
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            await _answer(refusal, scope, receive, send)
            return
        received = 0

        async def counted_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise Refused(refusal)
            return message

        await self.app(scope, counted_receive, send)

    async def _admit(self, scope: Scope) -> tuple[int, str]:
        """Before the first byte of the body: who asks (when the route needs it), and the
        limit with the words that refuse a body over it (at once for a declared length)."""
        settings = get_settings()
        marked = getattr(scope.get("endpoint"), "body_limit", None)
        if marked is not None:
            file_limit = marked[0](settings)
            limit, too_large = file_limit + FORM_OVERHEAD, marked[1]
        else:
            limit = file_limit = settings.max_request_bytes
            too_large = DEFAULT_TOO_LARGE
        too_large = too_large.format(limit=size_text(file_limit))
        if PRINCIPAL_KEY not in scope and _needs_principal(scope.get("route")):
            header = Headers(scope=scope).get("authorization", "")
            try:
                scope[PRINCIPAL_KEY] = await anyio.to_thread.run_sync(principal_from_header, header)
            except AppError as exc:
                raise Refused(exc) from None
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise Refused(TooLarge(too_large))
        return limit, too_large


async def _answer(error: AppError, scope: Scope, receive: Receive, send: Send) -> None:
    from starlette.responses import JSONResponse

    response = JSONResponse({"error": type(error).__name__, "detail": error.message}, error.status)
    await response(scope, receive, send)
