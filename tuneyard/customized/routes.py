"""Customized models: list, show, delete, promote a training checkpoint, and check that the
models made from one answer as it does."""

from __future__ import annotations

from fastapi import APIRouter, status

from tuneyard.assessment import fidelity
from tuneyard.assessment.schemas import FidelityIn
from tuneyard.customized import service
from tuneyard.customized.schemas import (
    CustomizedModelOut,
    CustomizedModelSummary,
    PromoteCheckpoint,
)
from tuneyard.deps import CurrentPrincipal, DbSession, Paging
from tuneyard.jobs.schemas import JobAccepted
from tuneyard.pagination import Page

router = APIRouter(tags=["customized models"])


@router.get("/customized-models", response_model=Page[CustomizedModelSummary])
def list_customized(
    principal: CurrentPrincipal, session: DbSession, page: Paging, base_model_id: str | None = None
):
    items, total = service.list_customized(
        session, principal, base_model_id, page.limit, page.offset
    )
    return {"items": [service.summary(row) for row in items], "total": total}


@router.get("/customized-models/{model_id}", response_model=CustomizedModelOut)
def get_customized(model_id: str, principal: CurrentPrincipal, session: DbSession):
    row = service.get_customized(session, principal, model_id)
    out = CustomizedModelOut.model_validate(row)
    out.base_model_name = row.model_card.get("lineage", {}).get("base_model")
    return out


@router.delete("/customized-models/{model_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_customized(model_id: str, principal: CurrentPrincipal, session: DbSession):
    service.delete_customized(session, principal, model_id)


@router.post(
    "/trainings/{training_id}/checkpoints/promote",
    response_model=CustomizedModelOut,
    status_code=status.HTTP_201_CREATED,
)
def promote_checkpoint(
    training_id: str, body: PromoteCheckpoint, principal: CurrentPrincipal, session: DbSession
):
    return service.promote_checkpoint(session, principal, training_id, body.step)


@router.post(
    "/customized-models/{model_id}/fidelity",
    response_model=JobAccepted,
    status_code=status.HTTP_202_ACCEPTED,
)
def check_fidelity(
    model_id: str,
    principal: CurrentPrincipal,
    session: DbSession,
    body: FidelityIn | None = None,
):
    """Compare the customized model with its complete models and live models (each
    quantization) on the same prompts, greedily; an assessment (GET /api/v1/assessments/{id})
    whose summary gives each stage's agreement, also shown on each live model's card."""
    assessment = fidelity.start_fidelity(session, principal, model_id, body or FidelityIn())
    return JobAccepted(id=assessment.id, job_id=assessment.job_id)
