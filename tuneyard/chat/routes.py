"""Chat with any model (server-sent events or one JSON answer), side by side, and sessions."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from fastapi import APIRouter, status
from fastapi.responses import StreamingResponse

from tuneyard.chat import service
from tuneyard.chat.schemas import (
    ChatAnswer,
    ChatRequest,
    ChatSessionDetail,
    ChatSessionOut,
    CompareRequest,
    SessionUpdate,
)
from tuneyard.deps import CurrentPrincipal, DbSession, Paging
from tuneyard.errors import AppError
from tuneyard.pagination import Page

router = APIRouter(prefix="/chat", tags=["chat"])

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def sse(events: Iterator[dict[str, Any]]) -> StreamingResponse:
    def lines():
        for event in events:
            yield f"data: {json.dumps(event)}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(lines(), media_type="text/event-stream", headers=SSE_HEADERS)


@router.post(
    "",
    response_model=ChatAnswer,
    responses={200: {"content": {"text/event-stream": {}}}},
)
def chat(body: ChatRequest, principal: CurrentPrincipal):
    """One turn with a model. With stream (default) the answer comes as server-sent events:
    `{"delta": text}` pieces, then `{"done": true, "session_id", "message_id", ...}` or
    `{"error", "detail"}`, then `[DONE]`."""
    turn = service.start_turn(principal, body)
    if body.stream:
        return sse(service.run_turn(turn))
    events = list(service.run_turn(turn))
    last = events[-1]
    if "error" in last:
        raise _rebuilt(last)
    return ChatAnswer(**{k: v for k, v in last.items() if k != "done"})


def _rebuilt(event: dict[str, Any]) -> AppError:
    from tuneyard import errors

    cls = getattr(errors, event["error"], None)
    if isinstance(cls, type) and issubclass(cls, AppError):
        return cls(event["detail"])
    return errors.Unavailable(event["detail"])


@router.post("/compare", responses={200: {"content": {"text/event-stream": {}}}})
def compare(body: CompareRequest, principal: CurrentPrincipal):
    """The same messages to two to four models at once, streamed side by side: every event
    carries the model's `index` and `model` reference."""
    turns = service.start_compare(principal, body)
    return sse(service.run_compare(turns))


@router.get("/sessions", response_model=Page[ChatSessionOut])
def list_sessions(principal: CurrentPrincipal, session: DbSession, page: Paging):
    rows, total = service.list_sessions(session, principal, page.limit, page.offset)
    return {"items": rows, "total": total}


@router.get("/sessions/{session_id}", response_model=ChatSessionDetail)
def get_session(session_id: str, principal: CurrentPrincipal, session: DbSession):
    row = service.get_session(session, principal, session_id)
    return {
        **ChatSessionOut.model_validate(row).model_dump(),
        "messages": service.session_messages(session, row),
    }


@router.patch("/sessions/{session_id}", response_model=ChatSessionOut)
def rename_session(
    session_id: str, body: SessionUpdate, principal: CurrentPrincipal, session: DbSession
):
    return service.rename_session(session, principal, session_id, body.title)


@router.delete("/sessions/{session_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_session(session_id: str, principal: CurrentPrincipal, session: DbSession):
    service.delete_session(session, principal, session_id)
