"""API shapes for jobs."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class JobOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    kind: str
    status: str
    progress: float
    message: str
    error: str | None
    params: dict[str, Any]
    result: dict[str, Any] | None
    attempt: int
    cancel_requested: bool
    priority: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    heartbeat_at: datetime | None
    node: str | None = Field(
        None, description="The Ray node the job ran on (the ray executor only)."
    )
    resources: dict[str, float] | None = Field(
        None, description="What the job was given there: num_cpus, num_gpus, memory (bytes)."
    )


class JobAccepted(BaseModel):
    """What a request that starts long work answers (202)."""

    id: str
    job_id: str


class JobEventOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    kind: str
    created_at: datetime
    data: dict[str, Any]
