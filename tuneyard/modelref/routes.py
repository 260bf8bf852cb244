"""Which model a reference names, for clients that resolve a name before they act on it (the
CLI's deploy), by the same rule the server applies everywhere."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from tuneyard import modelref
from tuneyard.deps import CurrentPrincipal, DbSession
from tuneyard.modelref import Capability

router = APIRouter(prefix="/models", tags=["models"])


class ModelRefOut(BaseModel):
    ref: str = Field(description="The canonical reference, kind:id.")
    kind: str = Field(description="base, customized, complete, live or third-party.")
    id: str
    name: str = Field(description="The model's lifecycle name.")
    capabilities: list[str] = Field(description="What the model can do: chat, embed, deploy.")


@router.get("/{reference:path}", response_model=ModelRefOut)
def resolve_reference(
    reference: str,
    principal: CurrentPrincipal,
    session: DbSession,
    kind: Annotated[
        str | None,
        Query(description="Look only among models of this kind (reference is then an id or name)."),
    ] = None,
    can: Annotated[
        Capability | None, Query(description="Refuse a model that cannot do this.")
    ] = None,
):
    """The model `reference` names (kind:id, or a name or id looked up in every kind); an
    ambiguous name is refused with the candidates (422)."""
    if kind is not None:
        found = modelref.find(session, principal, kind, reference, can)
    else:
        found = modelref.resolve(session, principal, reference, can)
    return ModelRefOut(
        ref=str(found.ref),
        kind=found.kind.value,
        id=found.id,
        name=found.name,
        capabilities=sorted(capability.value for capability in found.capabilities),
    )
