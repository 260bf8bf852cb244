"""API shapes for trainings, methods, profiles and reward files."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from tuneyard.training.custom import CustomMethod
from tuneyard.training.methods import TrainingMethod

TRAIN_NAME_PATTERN = r"^[A-Za-z0-9._-]{1,100}$"


class TrainingCreate(BaseModel):
    name: str = Field(
        min_length=1,
        max_length=100,
        description="The train name: letters, digits, '.', '_' or '-'.",
        json_schema_extra={"pattern": TRAIN_NAME_PATTERN},
    )
    method: str = Field(
        description="sft, dpo, orpo, kto, grpo or an uploaded method (GET /training-methods)."
    )
    base_model_id: str
    dataset_id: str
    params: dict[str, Any] = Field(default_factory=dict)
    profile_id: str | None = None


class TrainingOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    method: str
    base_model_id: str | None
    base_model_name: str
    dataset_id: str | None
    dataset_name: str
    dataset_digest: str | None
    profile_id: str | None
    params: dict[str, Any]
    status: str
    progress: float
    eta_seconds: float | None
    error: str | None
    job_id: str | None
    customized_model_id: str | None
    summary: dict[str, Any]
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class MethodOut(BaseModel):
    name: str
    title: str
    description: str
    dataset_formats: list[str]
    needs_chat_template: bool
    params_schema: dict[str, Any]
    custom: bool = Field(False, description="True for a method an admin uploaded as a script.")
    result: str | None = Field(
        None, description="An uploaded method's model: adapter (customized) or full (complete)."
    )
    digest: str | None = Field(None, description="sha256 of an uploaded method's script.")

    @classmethod
    def of(cls, method: TrainingMethod | CustomMethod) -> MethodOut:
        uploaded = isinstance(method, CustomMethod)
        return cls(
            name=method.name,
            title=method.title,
            description=method.description,
            dataset_formats=list(method.formats),
            needs_chat_template=method.needs_chat_template,
            params_schema=method.schema(),
            custom=uploaded,
            result=method.result if isinstance(method, CustomMethod) else None,
            digest=method.digest if isinstance(method, CustomMethod) else None,
        )


class ProfileCreate(BaseModel):
    name: str = Field(min_length=1, max_length=100)
    description: str = Field("", max_length=2000)
    method: str | None = Field(None, description="Limit the profile to one method.")
    params: dict[str, Any] = Field(default_factory=dict)


class ProfileUpdate(BaseModel):
    name: str | None = Field(None, min_length=1, max_length=100)
    description: str | None = Field(None, max_length=2000)
    params: dict[str, Any] | None = None


class ProfileOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    description: str
    method: str | None
    params: dict[str, Any]
    created_at: datetime


class CompareIn(BaseModel):
    training_ids: list[str] = Field(min_length=2, max_length=20)
    metric: str = "loss"
