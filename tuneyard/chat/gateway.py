"""The OpenAI-compatible gateway: /v1/models and /v1/chat/completions over every model of the
caller's project, by lifecycle name, so any OpenAI client can use the yard unchanged."""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from typing import Annotated, Any, Literal

from fastapi import APIRouter
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session

from tuneyard import modelref
from tuneyard.auth.service import Principal
from tuneyard.bounds import INT64_MAX, INT64_MIN
from tuneyard.chat.backends import stream_chat
from tuneyard.chat.schemas import (
    KNOWLEDGE_BASES_FIELD,
    MAX_CONTENT_CHARS,
    MAX_MESSAGES,
    MAX_STOP,
    MAX_TOKENS,
    MAX_TOP_K,
    Grounding,
)
from tuneyard.chat.service import chat_model
from tuneyard.db import session_scope
from tuneyard.deps import CurrentPrincipal, DbSession
from tuneyard.errors import AppError, Invalid, error_responses
from tuneyard.knowledge.grounding import ground, mark_cited

GATEWAY_PREFIX = "/v1"


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str = Field(description="invalid_request_error, invalid_api_key, model_not_found ...")
    code: str = Field(description="Tuneyard's kind of error, e.g. NotFound, Invalid.")


class OpenAIErrorOut(BaseModel):
    """The error shape OpenAI's clients read."""

    error: OpenAIErrorDetail


def openai_error(status: int, code: str, message: str, headers=None) -> JSONResponse:
    """Every error under the gateway, shaped as OpenAI's API answers it."""
    kinds = {404: "model_not_found", 401: "invalid_api_key", 422: "invalid_request_error"}
    body = {"error": {"message": message, "type": kinds.get(status, "api_error"), "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


router = APIRouter(
    prefix=GATEWAY_PREFIX,
    tags=["OpenAI-compatible gateway"],
    responses=error_responses(OpenAIErrorOut),
)


class GatewayMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant"]
    content: str | list[dict[str, Any]] = Field(
        description="The text, or content parts of which the text ones are kept."
    )


class GatewayRequest(BaseModel):
    """The parts of OpenAI's chat completions request the gateway passes on, with the chat
    API's caps."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field(max_length=500)
    messages: list[GatewayMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    stream: bool = False
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=1, le=MAX_TOP_K)
    max_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS)
    max_completion_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS)
    stop: str | Annotated[list[str], Field(max_length=MAX_STOP)] | None = None
    seed: int | None = Field(None, ge=INT64_MIN, le=INT64_MAX)
    # Tuneyard's own (OpenAI clients send them with extra_body).
    knowledge_bases: list[str] | None = KNOWLEDGE_BASES_FIELD
    grounding: Grounding | None = None


def usable_models(session: Session, principal: Principal) -> list[dict[str, Any]]:
    """Every model the caller can chat with, under its lifecycle name; a name that two of them
    carry would be refused as ambiguous, so those two are listed under their `kind:id`."""
    models = modelref.list_models(session, principal, modelref.Capability.CHAT)
    names = Counter(model.name for model in models)
    return [
        {
            "id": model.name if names[model.name] == 1 else str(model.ref),
            "object": "model",
            "created": int(model.created_at.timestamp()),
            "owned_by": "tuneyard",
            "tuneyard_kind": model.kind.value,
            "tuneyard_ref": str(model.ref),
        }
        for model in models
    ]


@router.get("/models")
def list_models(principal: CurrentPrincipal, session: DbSession):
    return {"object": "list", "data": usable_models(session, principal)}


def _params(body: GatewayRequest) -> dict[str, Any]:
    stop = [body.stop] if isinstance(body.stop, str) else body.stop
    return {
        "temperature": body.temperature,
        "top_p": body.top_p,
        "top_k": body.top_k,
        "max_tokens": body.max_completion_tokens or body.max_tokens,
        "stop": stop,
        "seed": body.seed,
    }


def _messages(body: GatewayRequest) -> list[dict[str, str]]:
    out = []
    for index, message in enumerate(body.messages):
        content = message.content
        if isinstance(content, list):  # content parts: keep the text ones
            content = "".join(p["text"] for p in content if isinstance(p.get("text"), str))
        if len(content) > MAX_CONTENT_CHARS:
            raise Invalid(
                f"messages[{index}] has {len(content):,} characters; a message holds at most "
                f"{MAX_CONTENT_CHARS:,}."
            )
        out.append({"role": message.role, "content": content})
    return out


@router.post(
    "/chat/completions",
    responses={200: {"content": {"application/json": {}, "text/event-stream": {}}}},
)
def chat_completions(body: GatewayRequest, principal: CurrentPrincipal):
    """OpenAI's chat completions: one JSON answer, or server-sent chunks with stream."""
    messages, params = _messages(body), _params(body)
    model = chat_model(principal, body.model)
    citations = _ground(principal, body, messages, params) if body.knowledge_bases else None
    completion_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
    created = int(time.time())
    if body.stream:
        return StreamingResponse(
            _stream(completion_id, created, body.model, model, messages, params, citations),
            media_type="text/event-stream",
        )
    text, finish, usage = _collect(model, messages, params)
    grounded = {} if citations is None else {"citations": mark_cited(text, citations)}
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": body.model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": finish,
            }
        ],
        "usage": usage,
        **grounded,
    }


def _ground(principal, body: GatewayRequest, messages, params) -> list[dict[str, Any]]:
    """Put the sources retrieved for the last user message into the system message (first,
    made if there is none); the sources, for the answer's citations."""
    conversation = [m for m in messages if m["role"] != "system"]
    question = next((m["content"] for m in reversed(conversation) if m["role"] == "user"), "")
    if not question.strip():
        raise Invalid("A grounded request needs a user message to retrieve for.")
    options = body.grounding or Grounding()
    with session_scope() as session:
        grounding = ground(
            session,
            principal,
            body.knowledge_bases or [],
            question[-2000:],
            messages,
            max_tokens=params["max_tokens"] or 256,
            top_k=options.top_k,
            mode=options.mode,
        )
    if messages and messages[0]["role"] == "system":
        messages[0] = {
            "role": "system",
            "content": f"{messages[0]['content']}\n\n{grounding.system}",
        }
    else:
        messages.insert(0, {"role": "system", "content": grounding.system})
    return grounding.citations


def _collect(model, messages, params) -> tuple[str, str, dict[str, Any]]:
    parts, finish, usage = [], "stop", {}
    for delta in stream_chat(model, messages, params):
        parts.append(delta.text)
        if delta.finish_reason:
            finish, usage = delta.finish_reason, delta.usage or {}
    return "".join(parts), finish, _usage(usage)


def _usage(usage: dict[str, Any]) -> dict[str, int]:
    prompt = int(usage.get("prompt_tokens") or 0)
    completion = int(usage.get("completion_tokens") or 0)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _stream(completion_id, created, name, model, messages, params, citations=None):
    def chunk(delta: dict[str, Any], finish: str | None = None, usage=None, cited=None) -> str:
        payload: dict[str, Any] = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": name,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
        if usage is not None:
            payload["usage"] = usage
        if cited is not None:
            payload["citations"] = cited
        return f"data: {json.dumps(payload)}\n\n"

    yield chunk({"role": "assistant", "content": ""})
    parts: list[str] = []
    try:
        for delta in stream_chat(model, messages, params):
            if delta.text:
                parts.append(delta.text)
                yield chunk({"content": delta.text})
            if delta.finish_reason:
                cited = mark_cited("".join(parts), citations) if citations is not None else None
                yield chunk({}, delta.finish_reason, _usage(delta.usage or {}), cited)
    except AppError as exc:
        error = {"message": exc.message, "type": "api_error", "code": type(exc).__name__}
        yield f"data: {json.dumps({'error': error})}\n\n"
    yield "data: [DONE]\n\n"
