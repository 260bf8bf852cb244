"""Trainings, training methods, parameter profiles and GRPO reward files."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, Path, UploadFile, status

from tuneyard.deps import CurrentPrincipal, DbSession, Paging
from tuneyard.gate import body_limit
from tuneyard.jobs.schemas import JobAccepted
from tuneyard.pagination import Page
from tuneyard.training import custom, service
from tuneyard.training.schemas import (
    CompareIn,
    MethodOut,
    ProfileCreate,
    ProfileOut,
    ProfileUpdate,
    TrainingCreate,
    TrainingOut,
)

router = APIRouter(tags=["training"])


@router.get("/training-methods", response_model=list[MethodOut])
def list_methods(principal: CurrentPrincipal, session: DbSession):
    return [MethodOut.of(m) for m in custom.list_methods(session, principal)]


@router.post("/training-methods", response_model=MethodOut, status_code=status.HTTP_201_CREATED)
@body_limit(
    lambda _settings: custom.MAX_SCRIPT_BYTES,
    "A training method script is at most {limit} of Python.",
)
def add_method(
    principal: CurrentPrincipal,
    session: DbSession,
    name: str = Form(
        ...,
        description="The method's name, used as `method` in a training.",
        json_schema_extra={"pattern": custom.NAME_RE.pattern},
    ),
    file: UploadFile = File(..., description="The Python script (see the README)."),
):
    """Upload a custom training method (admin only: the script runs in training jobs)."""
    source = file.file.read(custom.MAX_SCRIPT_BYTES + 1)
    return MethodOut.of(custom.add_method(session, principal, name, source))


@router.delete("/training-methods/{name}", status_code=status.HTTP_204_NO_CONTENT)
def delete_method(
    name: Annotated[str, Path(json_schema_extra={"pattern": custom.NAME_RE.pattern})],
    principal: CurrentPrincipal,
    session: DbSession,
):
    custom.delete_method(session, principal, name)


@router.post("/trainings", response_model=JobAccepted, status_code=status.HTTP_202_ACCEPTED)
def start_training(body: TrainingCreate, principal: CurrentPrincipal, session: DbSession):
    training = service.start_training(session, principal, **body.model_dump())
    return JobAccepted(id=training.id, job_id=training.job_id)


@router.get("/trainings", response_model=Page[TrainingOut])
def list_trainings(
    principal: CurrentPrincipal, session: DbSession, page: Paging, status: str | None = None
):
    items, total = service.list_trainings(session, principal, status, page.limit, page.offset)
    return {"items": items, "total": total}


@router.post("/trainings/compare")
def compare_trainings(body: CompareIn, principal: CurrentPrincipal, session: DbSession):
    return service.compare(session, principal, body.training_ids, body.metric)


@router.get("/trainings/{training_id}", response_model=TrainingOut)
def get_training(training_id: str, principal: CurrentPrincipal, session: DbSession):
    return service.get_training(session, principal, training_id)


@router.get("/trainings/{training_id}/metrics")
def training_metrics(training_id: str, principal: CurrentPrincipal, session: DbSession):
    return service.metrics(session, principal, training_id)


@router.get("/trainings/{training_id}/checkpoints", response_model=list[int])
def training_checkpoints(training_id: str, principal: CurrentPrincipal, session: DbSession):
    """The steps with a kept checkpoint; promote one with POST .../checkpoints/promote."""
    return service.checkpoint_steps(session, principal, training_id)


@router.get("/trainings/{training_id}/copy", response_model=TrainingCreate)
def copy_training(training_id: str, principal: CurrentPrincipal, session: DbSession):
    return service.copy_settings(session, principal, training_id)


@router.post("/trainings/{training_id}/cancel", response_model=TrainingOut)
def cancel_training(training_id: str, principal: CurrentPrincipal, session: DbSession):
    return service.cancel_training(session, principal, training_id)


@router.post(
    "/trainings/{training_id}/resume",
    response_model=JobAccepted,
    status_code=status.HTTP_202_ACCEPTED,
)
def resume_training(training_id: str, principal: CurrentPrincipal, session: DbSession):
    training = service.resume_training(session, principal, training_id)
    return JobAccepted(id=training.id, job_id=training.job_id)


@router.get("/profiles", response_model=Page[ProfileOut])
def list_profiles(principal: CurrentPrincipal, session: DbSession, page: Paging):
    items, total = service.list_profiles(session, principal, page.limit, page.offset)
    return {"items": items, "total": total}


@router.post("/profiles", response_model=ProfileOut, status_code=status.HTTP_201_CREATED)
def create_profile(body: ProfileCreate, principal: CurrentPrincipal, session: DbSession):
    return service.create_profile(
        session, principal, body.name, body.params, body.method, body.description
    )


@router.get("/profiles/{profile_id}", response_model=ProfileOut)
def get_profile(profile_id: str, principal: CurrentPrincipal, session: DbSession):
    return service.get_profile(session, principal, profile_id)


@router.patch("/profiles/{profile_id}", response_model=ProfileOut)
def update_profile(
    profile_id: str, body: ProfileUpdate, principal: CurrentPrincipal, session: DbSession
):
    return service.update_profile(session, principal, profile_id, **body.model_dump())


@router.delete("/profiles/{profile_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_profile(profile_id: str, principal: CurrentPrincipal, session: DbSession):
    service.delete_profile(session, principal, profile_id)


@router.get("/reward-files", response_model=list[str])
def list_reward_files(principal: CurrentPrincipal):
    return service.list_reward_files(principal)


@router.post("/reward-files", status_code=status.HTTP_201_CREATED)
@body_limit(lambda _settings: 1_000_000, "A reward file is at most {limit} of Python.")
def upload_reward_file(
    principal: CurrentPrincipal,
    name: str = Form(..., json_schema_extra={"pattern": service.REWARD_NAME_RE.pattern}),
    file: UploadFile = File(...),
):
    source = file.file.read(1_000_001)
    if len(source) > 1_000_000:
        from tuneyard.errors import TooLarge

        raise TooLarge("A reward file is at most 1 MB of Python.")
    return {"name": service.save_reward_file(principal, name, source)}
