"""Chat sessions and chat turns: history in, the answer streamed out and stored.

A turn resolves its model, stores the new user message(s) in the session (a new session
unless one is named), and sends system prompt + history + new messages to the model's
endpoint. The answer is stored once it is complete; a stream that fails midway stores what
arrived with finish_reason "error", so the conversation shows what the user saw.

Every role chats, viewers included: a chat session belongs to the user who started it, who
alone sees, continues, renames and deletes it; to anyone else it reads as absent.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from tuneyard.auth.service import Principal
from tuneyard.chat.backends import ChatModel, Delta, resolve_model, stream_chat
from tuneyard.chat.schemas import ChatParams, ChatRequest, CompareRequest, Grounding
from tuneyard.db import session_scope
from tuneyard.errors import AppError, Invalid, NotFound
from tuneyard.models import ChatMessage, ChatSession
from tuneyard.pagination import paginate

TITLE_CHARS = 60


@dataclass
class PreparedTurn:
    model: ChatModel
    session_id: str
    messages: list[dict[str, str]]  # what is sent: system, history, the new messages
    params: dict[str, Any]
    citations: list[dict[str, Any]] | None = None  # the sources of a grounded turn


def get_session(session: Session, principal: Principal, session_id: str) -> ChatSession:
    """A chat session of the caller's own (others' are private: 404)."""
    row = session.get(ChatSession, session_id)
    if row is None or row.project_id != principal.project_id or row.user_id != principal.user_id:
        raise NotFound(
            f"No chat session '{session_id}'. List yours with GET /api/v1/chat/sessions."
        )
    return row


def list_sessions(session: Session, principal: Principal, limit: int = 50, offset: int = 0):
    stmt = select(ChatSession).where(
        ChatSession.project_id == principal.project_id, ChatSession.user_id == principal.user_id
    )
    return paginate(
        session, stmt.order_by(ChatSession.updated_at.desc(), ChatSession.id), limit, offset
    )


def session_messages(session: Session, chat: ChatSession) -> list[ChatMessage]:
    return list(
        session.scalars(
            select(ChatMessage)
            .where(ChatMessage.session_id == chat.id)
            .order_by(ChatMessage.position)
        )
    )


def rename_session(session: Session, principal: Principal, session_id: str, title: str):
    row = get_session(session, principal, session_id)
    row.title = title.strip()[:200] or row.title
    return row


def delete_session(session: Session, principal: Principal, session_id: str) -> None:
    row = get_session(session, principal, session_id)
    session.delete(row)
    session.flush()


def _title(messages: list[dict[str, str]]) -> str:
    first = next((m["content"] for m in messages if m["role"] == "user"), "") or "Chat"
    first = " ".join(first.split())
    return first if len(first) <= TITLE_CHARS else first[: TITLE_CHARS - 1] + "…"


def _next_position(session: Session, session_id: str) -> int:
    last = session.scalar(
        select(func.max(ChatMessage.position)).where(ChatMessage.session_id == session_id)
    )
    return 0 if last is None else last + 1


def prepare_turn(session: Session, principal: Principal, request: ChatRequest) -> PreparedTurn:
    """Resolve the model, store the new messages, and build what is sent."""
    principal.require("viewer")
    model = resolve_model(session, principal, request.model)
    params = (request.params or ChatParams()).model_dump()
    new = [message.model_dump() for message in request.messages]
    chat = get_session(session, principal, request.session_id) if request.session_id else None
    history = [
        {"role": m.role, "content": m.content}
        for m in (session_messages(session, chat) if chat is not None else [])
        if m.role != "system"
    ]
    conversation = [*history, *new]
    # Retrieval (reads, maybe an embedding endpoint) comes before this turn writes anything.
    grounding = _ground(session, principal, request, conversation, params)
    if chat is not None:
        chat.model, chat.params = model.ref, params
    else:
        chat = ChatSession(
            project_id=principal.project_id,
            user_id=principal.user_id,
            title=_title(new),
            model=model.ref,
            params=params,
        )
        session.add(chat)
        session.flush()
    position = _next_position(session, chat.id)
    for offset, message in enumerate(new):
        session.add(ChatMessage(session_id=chat.id, position=position + offset, **message))
    session.flush()
    system = params.get("system") or ""
    if grounding is not None:
        system = f"{system}\n\n{grounding.system}" if system else grounding.system
    sent = [{"role": "system", "content": system}] if system else []
    citations = grounding.citations if grounding is not None else None
    return PreparedTurn(model, chat.id, [*sent, *conversation], params, citations)


def _ground(session, principal, request: ChatRequest, conversation, params):
    """Retrieve for the last user message (what the turn asks) from the knowledge bases; None
    for a turn that names none."""
    if not request.knowledge_bases:
        return None
    from tuneyard.knowledge.grounding import ground

    question = next((m["content"] for m in reversed(conversation) if m["role"] == "user"), "")
    if not question.strip():
        raise Invalid("A grounded turn needs a user message to retrieve for.")
    options = request.grounding or Grounding()
    return ground(
        session,
        principal,
        request.knowledge_bases or [],
        question[-2000:],
        conversation,
        max_tokens=params["max_tokens"],
        top_k=options.top_k,
        mode=options.mode,
    )


def start_turn(principal: Principal, request: ChatRequest) -> PreparedTurn:
    """prepare_turn in a unit of work of its own, committed before the model is asked: the
    user's message is kept even if the model fails, and no connection waits on the answer."""
    with session_scope() as session:
        return prepare_turn(session, principal, request)


def chat_model(principal: Principal, ref: str) -> ChatModel:
    """The model `ref` names, resolved in a unit of work of its own that ends before the
    (maybe slow) answer."""
    with session_scope() as session:
        return resolve_model(session, principal, ref)


def record_answer(
    session_id: str,
    model_ref: str,
    text: str,
    usage: dict[str, Any],
    citations: list[dict[str, Any]] | None = None,
) -> str:
    """Store an answer in its own unit of work (it arrives after the request's has ended)."""
    with session_scope() as session:
        message = ChatMessage(
            session_id=session_id,
            position=_next_position(session, session_id),
            role="assistant",
            content=text,
            model=model_ref,
            usage=usage,
            citations=citations,
        )
        session.add(message)
        chat = session.get(ChatSession, session_id)
        if chat is not None:
            chat.updated_at = message.created_at
        session.flush()
        return message.id


def run_turn(turn: PreparedTurn) -> Iterator[dict[str, Any]]:
    """Events of one answer: {"delta"} pieces, then {"done", ...} or {"error", ...}.

    The answer is stored before the last event, so a client that sees "done" can read it.
    """
    started = time.monotonic()
    first: float | None = None
    parts: list[str] = []
    try:
        final = Delta("", "stop", {})
        for delta in stream_chat(turn.model, turn.messages, turn.params):
            if delta.text:
                if first is None:
                    first = time.monotonic() - started
                parts.append(delta.text)
                yield {"delta": delta.text}
            if delta.finish_reason:
                final = delta
    except AppError as exc:
        usage: dict[str, Any] = {"error": exc.message}
        record_answer(turn.session_id, turn.model.ref, "".join(parts), usage, turn.citations)
        yield {"error": type(exc).__name__, "detail": exc.message}
        return
    seconds = time.monotonic() - started
    usage = {
        **(final.usage or {}),
        "finish_reason": final.finish_reason,
        "first_token_seconds": round(first or 0.0, 3),
        "seconds": round(seconds, 3),
    }
    citations = _cited("".join(parts), turn.citations)
    message_id = record_answer(turn.session_id, turn.model.ref, "".join(parts), usage, citations)
    yield {
        "done": True,
        "session_id": turn.session_id,
        "message_id": message_id,
        "model": turn.model.ref,
        "content": "".join(parts),
        "finish_reason": final.finish_reason,
        "usage": final.usage or {},
        "first_token_seconds": round(first or 0.0, 3),
        "citations": citations,
    }


def _cited(answer: str, citations: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    if citations is None:
        return None
    from tuneyard.knowledge.grounding import mark_cited

    return mark_cited(answer, citations)


def prepare_compare(
    session: Session, principal: Principal, request: CompareRequest
) -> list[PreparedTurn]:
    """One turn (and session) per model; per-model parameters override the shared ones."""
    overrides = request.params_per_model or []
    if overrides and len(overrides) != len(request.models):
        from tuneyard.errors import Invalid

        raise Invalid(
            f"params_per_model has {len(overrides)} entries for {len(request.models)} models; "
            "give one per model (null keeps the shared params)."
        )
    turns = []
    for index, ref in enumerate(request.models):
        params = (overrides[index] if overrides else None) or request.params
        turns.append(
            prepare_turn(
                session,
                principal,
                ChatRequest(
                    model=ref,
                    messages=request.messages,
                    params=params,
                    knowledge_bases=request.knowledge_bases,
                    grounding=request.grounding,
                ),
            )
        )
    return turns


def start_compare(principal: Principal, request: CompareRequest) -> list[PreparedTurn]:
    """prepare_compare in a unit of work of its own, committed before the models are asked."""
    with session_scope() as session:
        return prepare_compare(session, principal, request)


def run_compare(turns: list[PreparedTurn]) -> Iterator[dict[str, Any]]:
    """Every model's events as they come, each tagged with its model's index."""
    events: queue.Queue = queue.Queue()

    def pump(index: int, turn: PreparedTurn) -> None:
        try:
            for event in run_turn(turn):
                events.put({"index": index, "model": turn.model.ref, **event})
        finally:
            events.put(None)

    threads = [
        threading.Thread(target=pump, args=(i, turn), daemon=True) for i, turn in enumerate(turns)
    ]
    for thread in threads:
        thread.start()
    running = len(threads)
    while running:
        event = events.get()
        if event is None:
            running -= 1
        else:
            yield event
