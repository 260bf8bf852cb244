"""Deployment environments, deploys and live models."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, status

from tuneyard.assessment import fidelity
from tuneyard.deploy import service
from tuneyard.deploy.schemas import (
    DeployRequest,
    EnvironmentCreate,
    EnvironmentOut,
    EnvironmentTest,
    EnvironmentUpdate,
    LiveModelCheck,
    LiveModelOut,
    LiveModelSummary,
    RegisterRequest,
)
from tuneyard.deps import CurrentPrincipal, DbSession, Paging
from tuneyard.jobs.schemas import JobAccepted
from tuneyard.pagination import Page
from tuneyard.thirdparty.schemas import ThirdPartyOut
from tuneyard.thirdparty.service import third_party_out

router = APIRouter()


@router.get(
    "/deploy-environments", response_model=Page[EnvironmentOut], tags=["deploy environments"]
)
def list_environments(principal: CurrentPrincipal, session: DbSession, page: Paging):
    rows, total = service.list_environments(session, principal, page.limit, page.offset)
    return {"items": [service.environment_out(row) for row in rows], "total": total}


@router.post(
    "/deploy-environments",
    response_model=EnvironmentOut,
    status_code=status.HTTP_201_CREATED,
    tags=["deploy environments"],
)
def create_environment(body: EnvironmentCreate, principal: CurrentPrincipal, session: DbSession):
    """Add a serving tool (admin). The API key is stored encrypted and never returned."""
    row = service.create_environment(session, principal, **body.model_dump())
    return service.environment_out(row)


@router.get(
    "/deploy-environments/{environment_id}",
    response_model=EnvironmentOut,
    tags=["deploy environments"],
)
def get_environment(environment_id: str, principal: CurrentPrincipal, session: DbSession):
    return service.environment_out(service.get_environment(session, principal, environment_id))


@router.patch(
    "/deploy-environments/{environment_id}",
    response_model=EnvironmentOut,
    tags=["deploy environments"],
)
def update_environment(
    environment_id: str, body: EnvironmentUpdate, principal: CurrentPrincipal, session: DbSession
):
    row = service.update_environment(
        session, principal, environment_id, **body.model_dump(exclude_unset=True)
    )
    return service.environment_out(row)


@router.delete(
    "/deploy-environments/{environment_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    tags=["deploy environments"],
)
def delete_environment(environment_id: str, principal: CurrentPrincipal, session: DbSession):
    """Refused (409) while live models are deployed to it."""
    service.delete_environment(session, principal, environment_id)


@router.post(
    "/deploy-environments/{environment_id}/test",
    response_model=EnvironmentTest,
    tags=["deploy environments"],
)
def test_environment(environment_id: str, principal: CurrentPrincipal, session: DbSession):
    """Ask the serving tool whether it answers, and which models it serves."""
    return service.test_environment(session, principal, environment_id)


def _deploy(kind: str, model_id: str, body: DeployRequest, principal, session) -> JobAccepted:
    row = service.start_deploy(
        session,
        principal,
        kind,
        model_id,
        body.environment_id,
        body.quantization,
        body.system,
        body.parameters,
        body.allow_template_mismatch,
        body.fidelity_check,
    )
    return JobAccepted(id=row.id, job_id=row.job_id)


DEPLOY: dict[str, Any] = {
    "response_model": JobAccepted,
    "status_code": status.HTTP_202_ACCEPTED,
    "tags": ["live models"],
}


@router.post("/complete-models/{model_id}/deploy", **DEPLOY)
def deploy_complete(
    model_id: str, body: DeployRequest, principal: CurrentPrincipal, session: DbSession
):
    """Deploy a complete model; the live model is "deploying" until its job finishes."""
    return _deploy("complete", model_id, body, principal, session)


@router.post("/customized-models/{model_id}/deploy", **DEPLOY)
def deploy_customized(
    model_id: str, body: DeployRequest, principal: CurrentPrincipal, session: DbSession
):
    """Deploy a customized model as an adapter on its base (on Ollama the base goes first)."""
    return _deploy("customized", model_id, body, principal, session)


@router.post("/base-models/{model_id}/deploy", **DEPLOY)
def deploy_base(
    model_id: str, body: DeployRequest, principal: CurrentPrincipal, session: DbSession
):
    """Deploy a base model as it is."""
    return _deploy("base", model_id, body, principal, session)


@router.get("/live-models", response_model=Page[LiveModelSummary], tags=["live models"])
def list_live(
    principal: CurrentPrincipal,
    session: DbSession,
    page: Paging,
    environment_id: str | None = None,
    status: Annotated[
        str | None, Query(json_schema_extra={"enum": list(service.LIVE_STATUSES)})
    ] = None,
):
    rows, total = service.list_live(
        session, principal, environment_id, status, page.limit, page.offset
    )
    return {"items": [service.live_summary(session, row) for row in rows], "total": total}


@router.get("/live-models/{live_id}", response_model=LiveModelOut, tags=["live models"])
def get_live(live_id: str, principal: CurrentPrincipal, session: DbSession):
    """The live model, its card, and its fidelity figure (from its latest fidelity check)."""
    shown = LiveModelOut.model_validate(service.get_live(session, principal, live_id))
    shown.fidelity = fidelity.live_fidelity(session, principal, shown.id)
    return shown


@router.post("/live-models/{live_id}/check", response_model=LiveModelCheck, tags=["live models"])
def check_live(live_id: str, principal: CurrentPrincipal, session: DbSession):
    """Health check: does the serving tool still serve it? (live <-> stopped)"""
    return service.check_live(session, principal, live_id)


@router.post(
    "/live-models/{live_id}/register",
    response_model=ThirdPartyOut,
    status_code=status.HTTP_201_CREATED,
    tags=["live models"],
)
def register_live(
    live_id: str,
    principal: CurrentPrincipal,
    session: DbSession,
    body: RegisterRequest | None = None,
):
    """Make a third-party model entry from the live model's OpenAI-compatible endpoint."""
    body = body or RegisterRequest()
    entry = service.register_live(
        session, principal, live_id, body.name, body.description, body.private
    )
    return third_party_out(entry)


@router.delete(
    "/live-models/{live_id}", status_code=status.HTTP_204_NO_CONTENT, tags=["live models"]
)
def delete_live(live_id: str, principal: CurrentPrincipal, session: DbSession):
    """Remove the model from its serving tool; third-party entries registered from it stay."""
    service.delete_live(session, principal, live_id)
