"""API shapes for complete models and saving."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from tuneyard.basemodels.hub import HUB_ID_RE

DTYPES = ("bf16", "fp16", "fp32")


class SaveRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dtype: str = Field(
        "bf16",
        description="The saved weights' dtype: bf16, fp16 or fp32. Saving never quantizes.",
        json_schema_extra={"enum": list(DTYPES)},
    )


class PushRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    repo_id: str = Field(
        description="The hub repository, owner/name; created if missing.",
        json_schema_extra={"pattern": f"^{HUB_ID_RE.pattern}$", "maxLength": 200},
    )
    public: bool = Field(
        False, description="Create the repository public; by default a new one is private."
    )


class CompleteModelOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    source: str
    status: str
    error: str | None
    customized_model_id: str | None
    training_id: str | None
    base_model_id: str | None
    job_id: str | None
    path: str
    dtype: str
    size_bytes: int
    model_card: dict[str, Any]
    created_at: datetime


class CompleteModelSummary(BaseModel):
    """A list row: names, status and size, without the card."""

    id: str
    name: str
    source: str
    status: str
    dtype: str
    size_bytes: int
    base_model_name: str | None
    customized_model_name: str | None
    job_id: str | None
    created_at: datetime
