"""Base models: register (folder, GGUF file or hub id), list, show, edit, delete."""

from __future__ import annotations

from fastapi import APIRouter, Response, status

from tuneyard.basemodels import service
from tuneyard.basemodels.schemas import (
    BaseModelCreate,
    BaseModelOut,
    BaseModelUpdate,
    DemoModelOut,
)
from tuneyard.deps import CurrentPrincipal, DbSession, Paging
from tuneyard.jobs.schemas import JobAccepted
from tuneyard.pagination import Page

router = APIRouter(prefix="/base-models", tags=["base models"])


@router.post(
    "",
    # Two shapes, one per status: documented here rather than as one union response model.
    response_model=None,
    status_code=status.HTTP_201_CREATED,
    responses={
        201: {"model": BaseModelOut, "description": "The folder is registered"},
        202: {"model": JobAccepted, "description": "A GGUF import or hub download job"},
    },
)
def create_base_model(
    body: BaseModelCreate, principal: CurrentPrincipal, session: DbSession, response: Response
) -> BaseModelOut | JobAccepted:
    """A folder registers at once (201); a GGUF file or hub id starts a job (202)."""
    model, job = service.create_base_model(
        session,
        principal,
        body.technical_name,
        path=body.path,
        gguf_path=body.gguf_path,
        hub_id=body.hub_id,
        model_name=body.model_name,
        model_type=body.model_type,
    )
    if job is None:
        return BaseModelOut.model_validate(model)
    response.status_code = status.HTTP_202_ACCEPTED
    return JobAccepted(id=model.id, job_id=job.id)


@router.post("/demo", response_model=list[DemoModelOut], status_code=status.HTTP_202_ACCEPTED)
def add_demo_models(principal: CurrentPrincipal, session: DbSession):
    """The demo models: SmolLM2-135M-Instruct (imported by a job: follow its job_id) and the
    embedding model all-MiniLM-L6-v2 (ready at once), where their packages are installed."""
    models = [service.add_demo(session, principal)]
    embedding = service.find_demo_embedding(session, principal)
    if embedding is not None:
        models.append(embedding)
    out = []
    for model in models:
        job = service.active_job(session, model)
        out.append(
            DemoModelOut(
                id=model.id,
                technical_name=model.technical_name,
                model_type=model.model_type,
                status=model.status,
                job_id=job.id if job is not None else None,
            )
        )
    return out


@router.get("", response_model=Page[BaseModelOut])
def list_base_models(principal: CurrentPrincipal, session: DbSession, page: Paging):
    items, total = service.list_base_models(session, principal, page.limit, page.offset)
    return {"items": items, "total": total}


@router.get("/{model_id}", response_model=BaseModelOut)
def get_base_model(model_id: str, principal: CurrentPrincipal, session: DbSession):
    return service.get_base_model(session, principal, model_id)


@router.patch("/{model_id}", response_model=BaseModelOut)
def update_base_model(
    model_id: str, body: BaseModelUpdate, principal: CurrentPrincipal, session: DbSession
):
    """Rename for display, or update the deployment template."""
    return service.update_base_model(
        session,
        principal,
        model_id,
        model_name=body.model_name,
        deployment_template=body.deployment_template,
    )


@router.delete("/{model_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_base_model(model_id: str, principal: CurrentPrincipal, session: DbSession):
    """Unregister; a folder registered in place stays on disk."""
    service.delete_base_model(session, principal, model_id)
