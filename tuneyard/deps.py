"""FastAPI dependencies: the request's unit of work and who is asking."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Query, Request
from sqlalchemy.orm import Session

from tuneyard.auth.service import Principal, authenticate
from tuneyard.db import session_scope
from tuneyard.errors import Unauthorized
from tuneyard.pagination import MAX_LIMIT, MAX_OFFSET

# Where the request gate (tuneyard/gate.py) keeps the principal it settled before the body.
PRINCIPAL_KEY = "tuneyard.principal"


def _session() -> Iterator[Session]:
    # Ends before the response is sent, so a 2xx means the change is committed.
    with session_scope() as session:
        yield session


DbSession = Annotated[Session, Depends(_session, scope="function")]


def principal_from_header(authorization: str) -> Principal:
    """Who sends this Authorization header, settled in a short unit of work of its own: the
    request's own may go on to slow work, and must not hold the token's write meanwhile."""
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized(
            "Send 'Authorization: Bearer <token>'; get a token from POST /api/v1/auth/login."
        )
    with session_scope() as session:
        return authenticate(session, token.strip())


def _principal(request: Request) -> Principal:
    principal = request.scope.get(PRINCIPAL_KEY)
    if principal is None:
        principal = principal_from_header(request.headers.get("authorization", ""))
        request.scope[PRINCIPAL_KEY] = principal
    return principal


CurrentPrincipal = Annotated[Principal, Depends(_principal)]


def client_address(request: Request) -> str:
    """The caller's address, as the server sees it (a proxy's, unless it forwards it)."""
    return request.client.host if request.client else "unknown"


ClientAddress = Annotated[str, Depends(client_address)]


class PageParams:
    def __init__(
        self,
        limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 50,
        offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
    ):
        self.limit = limit
        self.offset = offset


Paging = Annotated[PageParams, Depends()]
