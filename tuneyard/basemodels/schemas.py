"""API shapes for base models."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

import pydantic
from pydantic import ConfigDict, Field


class BaseModelCreate(pydantic.BaseModel):
    technical_name: str = Field(
        description="Unique in the project: 1-200 letters, digits, '.', '_' or '-'."
    )
    model_name: str | None = Field(
        None, description="Display name; the technical name if left out."
    )
    model_type: Literal["chat", "embedding"] = "chat"
    path: str | None = Field(None, description="An HF folder on the server, registered in place.")
    gguf_path: str | None = Field(
        None, description="A .gguf file on the server, imported by a job."
    )
    hub_id: str | None = Field(
        None,
        description="A hub id like HuggingFaceTB/SmolLM2-135M-Instruct, downloaded by a job.",
    )


class BaseModelUpdate(pydantic.BaseModel):
    model_name: str | None = None
    deployment_template: str | None = Field(
        None, description="The Ollama TEMPLATE (Go template text) used when deploying."
    )


class BaseModelOut(pydantic.BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    technical_name: str
    model_name: str
    model_type: str
    source: str
    source_ref: str
    path: str | None
    managed: bool
    status: str
    error: str | None
    model_card: dict[str, Any]
    deployment_template: str | None
    created_at: datetime
    updated_at: datetime
