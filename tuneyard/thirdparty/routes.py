"""Third-party models: external chat and embedding endpoints."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, status

from tuneyard.deps import CurrentPrincipal, DbSession, Paging
from tuneyard.pagination import Page
from tuneyard.thirdparty import service
from tuneyard.thirdparty.schemas import (
    MODEL_TYPES,
    ThirdPartyCreate,
    ThirdPartyOut,
    ThirdPartyTest,
    ThirdPartyUpdate,
)

router = APIRouter(prefix="/third-party-models", tags=["third-party models"])


@router.get("", response_model=Page[ThirdPartyOut])
def list_third_party(
    principal: CurrentPrincipal,
    session: DbSession,
    page: Paging,
    model_type: Annotated[
        str | None,
        Query(
            alias="type",
            description="chat or embedding.",
            json_schema_extra={"enum": list(MODEL_TYPES)},
        ),
    ] = None,
):
    """The project's entries and your private ones, by name."""
    rows, total = service.list_third_party(session, principal, model_type, page.limit, page.offset)
    return {"items": [service.third_party_out(row) for row in rows], "total": total}


@router.post("", response_model=ThirdPartyOut, status_code=status.HTTP_201_CREATED)
def create_third_party(body: ThirdPartyCreate, principal: CurrentPrincipal, session: DbSession):
    """Add an endpoint (member). The API key is stored encrypted and never returned."""
    row = service.create_third_party(session, principal, **body.model_dump())
    return service.third_party_out(row)


# `:path` because names may hold "/", as model ids do (Qwen/Qwen2.5-7B-Instruct).
@router.get("/{third_party_id:path}", response_model=ThirdPartyOut)
def get_third_party(third_party_id: str, principal: CurrentPrincipal, session: DbSession):
    """By id or name."""
    return service.third_party_out(service.get_third_party(session, principal, third_party_id))


@router.patch("/{third_party_id:path}", response_model=ThirdPartyOut)
def update_third_party(
    third_party_id: str, body: ThirdPartyUpdate, principal: CurrentPrincipal, session: DbSession
):
    """Change the given fields; api_key "" removes the key, base_url "" restores the
    provider's default."""
    row = service.update_third_party(
        session, principal, third_party_id, **body.model_dump(exclude_unset=True)
    )
    return service.third_party_out(row)


@router.delete("/{third_party_id:path}", status_code=status.HTTP_204_NO_CONTENT)
def delete_third_party(third_party_id: str, principal: CurrentPrincipal, session: DbSession):
    """Refused (409) while a job uses it."""
    service.delete_third_party(session, principal, third_party_id)


@router.post("/{third_party_id:path}/test", response_model=ThirdPartyTest)
def test_third_party(third_party_id: str, principal: CurrentPrincipal, session: DbSession):
    """Make a real request: a 1-token chat completion (after listing the server's models), or
    an embedding of "ping"; says why it failed."""
    return service.test_third_party(session, principal, third_party_id)
