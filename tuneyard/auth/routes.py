"""Login, the current user, users (admin) and API tokens."""

from __future__ import annotations

from fastapi import APIRouter, status

from tuneyard.auth import service
from tuneyard.auth.schemas import (
    LoginIn,
    LoginOut,
    MeOut,
    PasswordChange,
    PasswordReset,
    TokenCreate,
    TokenCreated,
    TokenOut,
    UserCreate,
    UserOut,
)
from tuneyard.deps import ClientAddress, CurrentPrincipal, DbSession, Paging
from tuneyard.gate import body_limit
from tuneyard.pagination import Page

router = APIRouter(tags=["auth"])


@router.post(
    "/auth/login",
    response_model=LoginOut,
    responses={429: {"description": "Too many failed logins; see the Retry-After header"}},
)
@body_limit(lambda _settings: 8 * 1024, "A login is at most {limit}.")
def login(body: LoginIn, session: DbSession, address: ClientAddress):
    """A session token for the project code, username and password. Repeated failures for a
    user or from an address are refused for a while (429, with Retry-After)."""
    token, principal = service.login(
        session, body.project_code, body.username, body.password, address
    )
    return LoginOut(
        token=token, project_code=body.project_code, username=body.username, role=principal.role
    )


@router.post("/auth/password", status_code=status.HTTP_204_NO_CONTENT)
def change_password(
    body: PasswordChange, principal: CurrentPrincipal, session: DbSession, address: ClientAddress
):
    """Change your own password. Your other sessions end; this one and your API tokens stay."""
    service.change_password(session, principal, body.current_password, body.new_password, address)


@router.get("/auth/me", response_model=MeOut)
def me(principal: CurrentPrincipal):
    return MeOut(
        user_id=principal.user_id,
        username=principal.username,
        role=principal.role,
        operator=principal.operator,
        project_code=principal.project_code,
    )


@router.get("/users", response_model=Page[UserOut])
def list_users(principal: CurrentPrincipal, session: DbSession, page: Paging):
    items, total = service.list_users(session, principal, page.limit, page.offset)
    return {"items": items, "total": total}


@router.post("/users", response_model=UserOut, status_code=status.HTTP_201_CREATED)
def create_user(body: UserCreate, principal: CurrentPrincipal, session: DbSession):
    return service.create_user(session, principal, body.username, body.password, body.role)


@router.post("/users/{username}/password", status_code=status.HTTP_204_NO_CONTENT)
def reset_password(
    username: str, body: PasswordReset, principal: CurrentPrincipal, session: DbSession
):
    """Set a user's password (admin); that user's sessions end."""
    service.reset_password(session, principal, username, body.new_password)


@router.delete("/users/{username}", status_code=status.HTTP_204_NO_CONTENT)
def delete_user(username: str, principal: CurrentPrincipal, session: DbSession):
    service.delete_user(session, principal, username)


@router.get("/tokens", response_model=Page[TokenOut])
def list_tokens(principal: CurrentPrincipal, session: DbSession, page: Paging):
    items, total = service.list_tokens(session, principal, page.limit, page.offset)
    return {"items": items, "total": total}


@router.post("/tokens", response_model=TokenCreated, status_code=status.HTTP_201_CREATED)
def create_token(body: TokenCreate, principal: CurrentPrincipal, session: DbSession):
    token, row = service.create_token(session, principal, body.name, body.days)
    return TokenCreated.model_validate(
        {**TokenOut.model_validate(row).model_dump(), "token": token}
    )


@router.delete("/tokens/{token_id}", response_model=TokenOut)
def revoke_token(token_id: str, principal: CurrentPrincipal, session: DbSession):
    return service.revoke_token(session, principal, token_id)
