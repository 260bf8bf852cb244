"""API shapes for base models."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import pydantic
from pydantic import AfterValidator, ConfigDict, Field

from tuneyard.basemodels.hub import HUB_ID_RE
from tuneyard.basemodels.template import MAX_TEMPLATE_BYTES, template_size_problem

TECHNICAL_NAME_PATTERN = r"^[A-Za-z0-9._-]{1,200}$"
MAX_MODEL_NAME = 200


def _fits(text: str) -> str:
    if problem := template_size_problem(text):
        raise ValueError(problem)
    return text


# maxLength in characters documents the cap (a character is at least one byte); the byte
# count is what is checked.
DeploymentTemplateText = Annotated[
    str, Field(json_schema_extra={"maxLength": MAX_TEMPLATE_BYTES}), AfterValidator(_fits)
]


class BaseModelCreate(pydantic.BaseModel):
    technical_name: str = Field(
        description="Unique in the project: 1-200 letters, digits, '.', '_' or '-'.",
        json_schema_extra={"pattern": TECHNICAL_NAME_PATTERN},
    )
    model_name: str | None = Field(
        None,
        description="Display name; the technical name if left out.",
        json_schema_extra={"pattern": r"\S", "maxLength": MAX_MODEL_NAME},
    )
    model_type: Literal["chat", "embedding"] = "chat"
    path: str | None = Field(None, description="An HF folder on the server, registered in place.")
    gguf_path: str | None = Field(
        None, description="A .gguf file on the server, imported by a job."
    )
    hub_id: str | None = Field(
        None,
        description="A hub id like HuggingFaceTB/SmolLM2-135M-Instruct, downloaded by a job.",
        json_schema_extra={"pattern": f"^{HUB_ID_RE.pattern}$", "maxLength": 200},
    )


class BaseModelUpdate(pydantic.BaseModel):
    model_name: str | None = Field(
        None, json_schema_extra={"pattern": r"\S", "maxLength": MAX_MODEL_NAME}
    )
    deployment_template: DeploymentTemplateText | None = Field(
        None,
        description="The Ollama TEMPLATE (Go template text) used when deploying; at most 64 KiB.",
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


class DemoModelOut(pydantic.BaseModel):
    """A demo model as added: ready, or being imported by `job_id`."""

    id: str
    technical_name: str
    model_type: str
    status: str
    job_id: str | None
