"""API shapes for chat, side-by-side chat and stored chat sessions."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from tuneyard.bounds import INT64_MAX, INT64_MIN

DEFAULT_SYSTEM_PROMPT = "I am an AI assistant."
# Caps every way in to a model shares (the chat API and the OpenAI-compatible gateway).
MAX_TOKENS = 32768
MAX_MESSAGES = 1000
MAX_CONTENT_CHARS = 200_000
MAX_STOP = 8
MAX_TOP_K = 1000


class ChatParams(BaseModel):
    """Sampling parameters; the same names for every model."""

    model_config = ConfigDict(extra="forbid")

    system: str | None = Field(None, description="System prompt, sent first.")
    temperature: float = Field(0.7, ge=0, le=2, description="0 answers greedily.")
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int | None = Field(None, ge=1, le=MAX_TOP_K, description="Ignored by OpenAI's own API.")
    max_tokens: int = Field(256, ge=1, le=MAX_TOKENS)
    stop: list[str] | None = Field(
        None, max_length=MAX_STOP, description="Strings that end the answer."
    )
    seed: int | None = Field(
        None, ge=INT64_MIN, le=INT64_MAX, description="Makes sampling repeatable where supported."
    )

    @field_validator("stop")
    @classmethod
    def _no_empty_stop(cls, value: list[str] | None) -> list[str] | None:
        if value and any(not item for item in value):
            raise ValueError("stop strings must not be empty")
        return value


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "user", "assistant"]
    content: str = Field(max_length=MAX_CONTENT_CHARS)


class Grounding(BaseModel):
    """Retrieval for a grounded turn: how many passages, found how."""

    model_config = ConfigDict(extra="forbid")

    top_k: int = Field(5, ge=1, le=20, description="Passages for all knowledge bases together.")
    mode: Literal["hybrid", "vector", "fulltext"] = "hybrid"


KNOWLEDGE_BASES_FIELD = Field(
    None,
    max_length=5,
    description="Ground the answer in these knowledge bases (ids or names): the passages "
    "retrieved for the last user message are sent as numbered sources, and the answer's "
    "citations come with it.",
)


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(
        description="base:<id>, customized:<id>, complete:<id>, live:<id>, third-party:<id>, "
        "or a model's name."
    )
    messages: list[Message] = Field(
        min_length=1, max_length=MAX_MESSAGES, description="The new turn(s) to send."
    )
    params: ChatParams | None = None
    session_id: str | None = Field(
        None, description="Continue a stored session: its history goes first. Default: a new one."
    )
    stream: bool = Field(True, description="Server-sent events as the answer is generated.")
    knowledge_bases: list[str] | None = KNOWLEDGE_BASES_FIELD
    grounding: Grounding | None = None


class CompareRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    models: list[str] = Field(min_length=2, max_length=4, description="Two to four models.")
    messages: list[Message] = Field(min_length=1, max_length=MAX_MESSAGES)
    params: ChatParams | None = Field(None, description="For every model (copy parameters).")
    params_per_model: list[ChatParams | None] | None = Field(
        None, description="One entry per model; an entry overrides `params` for its model."
    )
    knowledge_bases: list[str] | None = KNOWLEDGE_BASES_FIELD
    grounding: Grounding | None = None


class ChatAnswer(BaseModel):
    session_id: str
    message_id: str
    model: str
    content: str
    finish_reason: str
    usage: dict[str, Any]
    first_token_seconds: float
    citations: list[dict[str, Any]] | None = Field(
        None,
        description="A grounded answer's sources: n, knowledge base, document, page, the exact "
        "passage (start, end, text), scores, and whether the answer cites it.",
    )


class ChatSessionOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    title: str
    model: str
    params: dict[str, Any]
    created_at: datetime
    updated_at: datetime


class ChatMessageOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    position: int
    role: str
    content: str
    model: str | None
    usage: dict[str, Any]
    citations: list[dict[str, Any]] | None = None
    created_at: datetime


class ChatSessionDetail(ChatSessionOut):
    messages: list[ChatMessageOut]


class SessionUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    title: str = Field(min_length=1, max_length=200)
