"""API shapes for customized models."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from tuneyard.bounds import INT32_MAX


class CustomizedModelOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    train_name: str
    base_model_id: str | None
    base_model_name: str | None = None
    training_id: str | None
    checkpoint_step: int | None
    path: str
    size_bytes: int
    model_card: dict[str, Any]
    created_at: datetime


class CustomizedModelSummary(BaseModel):
    """A list row: names, the card's headline figures, and when."""

    id: str
    name: str
    base_model_name: str | None
    train_name: str
    method: str | None
    final_loss: float | None
    checkpoint_step: int | None
    created_at: datetime


class PromoteCheckpoint(BaseModel):
    step: int = Field(
        ge=1, le=INT32_MAX, description="The checkpoint's step (see the training's card)."
    )
