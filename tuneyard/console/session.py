"""Who is signed in to the console, and running service calls as them.

The console keeps the session token the API's login issues in NiceGUI's per-browser storage;
every call re-checks it, so a revoked or expired token signs the browser out. The storage is
only reachable on the event loop, so the token is read there and handed to worker threads.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

from nicegui import app, run, ui
from sqlalchemy.orm import Session

from tuneyard.auth import service as auth_service
from tuneyard.auth.service import Principal
from tuneyard.db import session_scope
from tuneyard.errors import AppError, Unauthorized

T = TypeVar("T")

TOKEN_KEY = "token"


class SignedOut(Exception):
    """No valid console session; the page sends the browser to the login page."""


def _login(project_code: str, username: str, password: str, address: str) -> str:
    with session_scope() as session:
        token, _principal = auth_service.login(session, project_code, username, password, address)
        return token


async def sign_in(project_code: str, username: str, password: str, address: str) -> None:
    """Check the password (off the loop: hashing is slow on purpose) and keep the token."""
    app.storage.user[TOKEN_KEY] = await run.io_bound(
        _login, project_code, username, password, address
    )


def sign_out() -> None:
    token = app.storage.user.pop(TOKEN_KEY, None)
    if token:
        with session_scope() as session:
            auth_service.logout(session, token)


def browser_token() -> str:
    """The signed-in browser's session token (on the event loop, or in a console route)."""
    token = app.storage.user.get(TOKEN_KEY)
    if not token:
        raise SignedOut
    return token


def run_signed_in(fn: Callable[[Session, Principal], T], token: str) -> T:
    """`fn(session, principal)` in one unit of work as the holder of `token`.

    The token is checked (and its use recorded) in a short unit of work of its own, so `fn`
    may do slow work without holding that write.
    """
    try:
        with session_scope() as session:
            principal = auth_service.authenticate(session, token)
    except Unauthorized:
        raise SignedOut from None
    with session_scope() as session:
        return fn(session, principal)


def current_principal() -> Principal:
    return read(lambda _session, principal: principal)


def read(fn: Callable[[Session, Principal], T]) -> T:
    """Run `fn(session, principal)` in one unit of work, on the loop; errors propagate."""
    try:
        return run_signed_in(fn, browser_token())
    except SignedOut:
        app.storage.user.pop(TOKEN_KEY, None)
        raise


async def fetch(fn: Callable[[Session, Principal], T]) -> T:
    """`read`, off the event loop (for polling and slow reads); errors propagate."""
    token = browser_token()
    try:
        # In a tuple, so that an answer of None is told apart from NiceGUI's None for a call
        # cancelled or refused while the app stops (NiceGUI 4 raises CancelledError instead).
        answer = await run.io_bound(lambda: (run_signed_in(fn, token),))
    except SignedOut:
        app.storage.user.pop(TOKEN_KEY, None)
        raise
    if answer is None:
        raise asyncio.CancelledError
    return answer[0]


async def act(
    fn: Callable[[Session, Principal], T],
    done: str | None = None,
    *,
    error_label: ui.label | None = None,
) -> T | None:
    """Run `fn(session, principal)` off the event loop, in one unit of work.

    An error is shown as a notification with the service's own message (the same words the
    API answers with), and in `error_label` too when given, and None is returned; `done`, if
    given, is shown on success.
    """
    try:
        result = await fetch(fn)
    except SignedOut:
        ui.navigate.to("/login")
        return None
    except AppError as exc:
        if error_label is not None:
            error_label.text = exc.message
        ui.notify(exc.message, type="negative", multi_line=True, close_button=True)
        return None
    if done:
        ui.notify(done, type="positive")
    return result


def call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Callable[[Session, Principal], Any]:
    """`fn(session, principal, *args, **kwargs)` as the one-argument form read/fetch/act take."""
    return lambda session, principal: fn(session, principal, *args, **kwargs)
