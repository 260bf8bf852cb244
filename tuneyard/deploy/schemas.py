"""API shapes for deployment environments, deploys and live models."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from tuneyard.deploy.quantization import NO_QUANTIZATION, QUANTIZATIONS
from tuneyard.outbound import API_KEY_PATTERN

ENVIRONMENT_KINDS = ("ollama", "llama.cpp", "openai")
ENVIRONMENT_NAME_PATTERN = r"^[A-Za-z0-9._-]{1,100}$"
URL_PATTERN = r"^\s*https?://[^\s/]+"


class EnvironmentCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        description="Unique in the project; letters, digits, '.', '_', '-'.",
        json_schema_extra={"pattern": ENVIRONMENT_NAME_PATTERN},
    )
    kind: str = Field(
        description="ollama, llama.cpp or openai (any OpenAI-compatible server).",
        json_schema_extra={"enum": list(ENVIRONMENT_KINDS)},
    )
    url: str | None = Field(
        None,
        description="The tool's address, e.g. http://127.0.0.1:11434 for Ollama. Leave it out "
        "for llama.cpp to have Tuneyard start and supervise a server on this machine.",
        json_schema_extra={"pattern": URL_PATTERN},
    )
    port: int | None = Field(
        None,
        ge=1,
        le=65535,
        description="For a llama.cpp server Tuneyard starts: its port (default: a free one).",
    )
    api_key: str | None = Field(
        None,
        description="Sent as a bearer token; stored encrypted.",
        json_schema_extra={"pattern": API_KEY_PATTERN},
    )
    description: str = ""


class EnvironmentUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, json_schema_extra={"pattern": ENVIRONMENT_NAME_PATTERN})
    url: str | None = Field(None, json_schema_extra={"pattern": URL_PATTERN})
    api_key: str | None = Field(
        None,
        description="A new key; an empty string removes it.",
        json_schema_extra={"pattern": API_KEY_PATTERN},
    )
    description: str | None = None


class EnvironmentOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    kind: str
    url: str | None
    managed: bool = Field(description="True when Tuneyard starts and supervises the server.")
    port: int | None
    has_api_key: bool
    description: str
    last_checked_at: datetime | None
    last_check_error: str | None
    created_at: datetime


class EnvironmentTest(BaseModel):
    ok: bool
    detail: str
    models: list[str] = Field(default_factory=list, description="Models the tool serves now.")


class DeployRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    environment_id: str = Field(description="The deployment environment: id or name.")
    quantization: str = Field(
        NO_QUANTIZATION,
        description="One of: " + ", ".join(QUANTIZATIONS) + ".",
        json_schema_extra={"enum": list(QUANTIZATIONS)},
    )
    system: str | None = Field(None, description="A default system prompt baked into the model.")
    parameters: dict[str, Any] | None = Field(
        None,
        description="Serving parameters (Ollama Modelfile parameters such as temperature, "
        "num_ctx); the tokenizer's stop tokens are added.",
    )
    allow_template_mismatch: bool = Field(
        False,
        description="Deploy even when the deployment template renders a different prompt than "
        "the chat template (the card keeps the warning).",
    )
    fidelity_check: bool = Field(
        True,
        description="Once live, check on a few prompts (temperature 0) that the live model "
        "answers as the model it was deployed from; its figure shows on the live model.",
    )


class LiveModelOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    tag: str = Field(description="The model's name inside the serving tool.")
    environment_id: str
    source_kind: str
    source_id: str
    source_name: str
    quantization: str
    status: str
    error: str | None
    job_id: str | None
    endpoint_url: str | None = Field(description="OpenAI-compatible base URL.")
    model_id: str | None = Field(description="The model id to send to endpoint_url.")
    system: str | None
    parameters: dict[str, Any]
    size_bytes: int
    model_card: dict[str, Any]
    fidelity: dict[str, Any] | None = Field(
        None,
        description="From the latest fidelity check that included it: how often it answers as "
        'its source (`text`: "q4_K_M agrees with its source on 41 of 50 prompts"), the share '
        "of identical answers (`identical_rate`) and of greedy tokens (`token_agreement`), the "
        "check's assessment_id and when it ran; None before any.",
    )
    last_checked_at: datetime | None
    created_at: datetime


class LiveModelSummary(BaseModel):
    id: str
    name: str
    environment_name: str | None
    environment_kind: str | None
    source_kind: str
    source_name: str
    quantization: str
    status: str
    endpoint_url: str | None
    model_id: str | None
    size_bytes: int
    template_parity: str | None
    created_at: datetime


class LiveModelCheck(BaseModel):
    ok: bool
    status: str
    detail: str


class RegisterRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(
        None, description="The third-party model's name; default: the live model's."
    )
    description: str | None = None
    private: bool = False
