"""FastAPI dependencies: the request's unit of work and who is asking."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Query, Request
from sqlalchemy.orm import Session

from tuneyard.auth.service import Principal, authenticate
from tuneyard.db import session_scope
from tuneyard.errors import Unauthorized
from tuneyard.pagination import MAX_LIMIT


def _session() -> Iterator[Session]:
    # Ends before the response is sent, so a 2xx means the change is committed.
    with session_scope() as session:
        yield session


DbSession = Annotated[Session, Depends(_session, scope="function")]


def _principal(request: Request, session: DbSession) -> Principal:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized(
            "Send 'Authorization: Bearer <token>'; get a token from POST /api/v1/auth/login."
        )
    return authenticate(session, token.strip())


CurrentPrincipal = Annotated[Principal, Depends(_principal)]


class PageParams:
    def __init__(
        self,
        limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 50,
        offset: Annotated[int, Query(ge=0)] = 0,
    ):
        self.limit = limit
        self.offset = offset


Paging = Annotated[PageParams, Depends()]
