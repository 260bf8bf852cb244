"""The DeepText chat page (/deeptext): one conversation with one model, streamed, and the
user's kept chats beside it."""

from __future__ import annotations

from typing import Any

from nicegui import ui
from pydantic import ValidationError

from tuneyard.chat import service
from tuneyard.chat.pages.answer import (
    AnswerView,
    PromptBar,
    message_box,
    record_stopped,
    speed_text,
    user_message,
)
from tuneyard.chat.pages.frame import (
    SECTION,
    canonical_ref,
    chat_models,
    mode_tabs,
    model_options,
    no_models_guidance,
)
from tuneyard.chat.pages.grounding import GroundingForm, source_chips
from tuneyard.chat.pages.params_form import ParamsForm
from tuneyard.chat.schemas import ChatRequest, Message
from tuneyard.console.session import act, call, read
from tuneyard.console.shell import console_page
from tuneyard.console.stream import EventStream
from tuneyard.console.widgets import confirm, heading, when

SESSIONS_PER_PAGE = 12


def _session_view(session, principal, session_id: str) -> dict[str, Any]:
    chat = service.get_session(session, principal, session_id)
    return {
        "id": chat.id,
        "title": chat.title,
        "model": chat.model,
        "params": dict(chat.params or {}),
        "messages": [
            {
                "role": m.role,
                "content": m.content,
                "model": m.model,
                "usage": dict(m.usage or {}),
                "citations": list(m.citations or []),
            }
            for m in service.session_messages(session, chat)
        ],
    }


def _session_rows(session, principal, limit: int, offset: int):
    rows, total = service.list_sessions(session, principal, limit, offset)
    return [
        {"id": r.id, "title": r.title, "model": r.model, "updated": when(r.updated_at)}
        for r in rows
    ], total


def _show_message(message: dict[str, Any], names: dict[str, str]) -> None:
    if message["role"] == "system":
        return
    if message["role"] == "user":
        user_message(message["content"])
        return
    usage = message["usage"]
    name = names.get(message["model"] or "", message["model"] or "Assistant")
    with message_box(name, sent=False, testid="answer"):
        ui.label(message["content"]).classes("whitespace-pre-wrap break-words").props(
            'data-testid="answer-text"'
        )
        source_chips(message["citations"])
        if usage.get("error"):
            ui.label(usage["error"]).classes("text-negative whitespace-pre-wrap")
        else:
            stats = speed_text(usage, usage.get("seconds"), 0)
            if stats:
                ui.label(stats).classes("text-xs text-grey-7")


@console_page("/deeptext", "DeepText", SECTION)
def deeptext_page(model: str = "", session: str = ""):
    heading("DeepText", "Chat with any model of the project; the answer streams as it is written.")
    mode_tabs("Chat")
    models = read(chat_models)
    if not models:
        no_models_guidance()
        return
    options = model_options(models)
    opened = read(lambda db, principal: _session_view(db, principal, session)) if session else None
    state: dict[str, Any] = {
        "session_id": opened["id"] if opened else None,
        "stream": None,
        "page": 0,
    }
    chosen = model or (opened["model"] if opened else "")
    if chosen and chosen not in options:
        chosen = canonical_ref(chosen) or ""
    if chosen not in options:
        if opened and opened["model"]:
            ui.notify(
                f"This chat's model ({opened['model']}) cannot answer any more; pick another.",
                type="warning",
            )
        chosen = next(iter(options))

    with ui.element("div").classes("grid grid-cols-1 lg:grid-cols-4 gap-4 w-full items-start"):
        # The conversation first in the markup: on a narrow window it comes before the list.
        with ui.column().classes("lg:col-span-3 w-full gap-3 min-w-0"):
            with ui.card().classes("w-full gap-2"):
                picker = (
                    ui.select(options, value=chosen, label="Model", with_input=True)
                    .props('outlined dense data-testid="model-picker"')
                    .classes("w-full")
                )
                with (
                    ui.expansion("System prompt and parameters", icon="tune")
                    .classes("w-full")
                    .props('dense data-testid="params"')
                ):
                    form = ParamsForm(opened["params"] if opened else None)
                grounding = GroundingForm()

            with ui.card().classes("w-full gap-2"):
                with ui.row().classes("w-full items-center gap-2 flex-wrap"):
                    title = ui.label(opened["title"] if opened else "New chat").classes(
                        "text-lg font-semibold truncate min-w-0 flex-1"
                    )
                    title.props('data-testid="chat-title"')
                    chat_actions = ui.row().classes("gap-1")
                with (
                    ui.scroll_area()
                    .classes("w-full h-[55vh] min-h-64 border border-gray-300 rounded bg-white")
                    .props('data-testid="conversation"') as scroller
                ):
                    conversation = ui.column().classes("w-full gap-1 p-1")
                    with conversation:
                        empty = ui.label(
                            "Ask something below; Enter sends, Shift+Enter starts a new line."
                        ).classes("text-grey-7 p-2")
                        if opened:
                            empty.set_visibility(False)
                            for message in opened["messages"]:
                                _show_message(message, options)
                bar = PromptBar("Message", "Send", state)
                prompt = bar.prompt

        with ui.column().classes("w-full gap-2 lg:col-span-1 min-w-0"):
            ui.button(
                "New chat",
                icon="add",
                on_click=lambda: ui.navigate.to(f"/deeptext?model={picker.value or ''}"),
            ).props('no-caps data-testid="new-chat"').classes("w-full")

            @ui.refreshable
            def session_list() -> None:
                offset = state["page"] * SESSIONS_PER_PAGE
                rows, total = read(
                    lambda db, principal: _session_rows(db, principal, SESSIONS_PER_PAGE, offset)
                )
                with ui.card().classes("w-full p-2 gap-1").props('data-testid="sessions"'):
                    ui.label("Your chats").classes("font-semibold")
                    if not rows:
                        ui.label("No chats yet: your conversations are kept here.").classes(
                            "text-grey-7 text-sm"
                        )
                    for row in rows:
                        current = row["id"] == state["session_id"]
                        with (
                            ui.link(target=f"/deeptext?session={row['id']}")
                            .classes(
                                "w-full no-underline rounded px-2 py-1 "
                                + (
                                    "bg-primary text-white"
                                    if current
                                    else "text-grey-9 hover:bg-grey-2"
                                )
                            )
                            .props('data-testid="session-item"')
                        ):
                            ui.label(row["title"]).classes("text-sm font-medium truncate")
                            ui.label(
                                f"{options.get(row['model'], row['model'])} · {row['updated']}"
                            ).classes("text-xs opacity-70 truncate")
                    if total > SESSIONS_PER_PAGE:
                        pages = (total + SESSIONS_PER_PAGE - 1) // SESSIONS_PER_PAGE
                        with ui.row().classes("w-full items-center justify-between"):
                            ui.button(icon="chevron_left", on_click=lambda: turn_page(-1)).props(
                                "flat dense aria-label=Newer"
                            ).set_enabled(state["page"] > 0)
                            ui.label(f"{state['page'] + 1} / {pages}").classes("text-xs")
                            ui.button(icon="chevron_right", on_click=lambda: turn_page(1)).props(
                                "flat dense aria-label=Older"
                            ).set_enabled(state["page"] + 1 < pages)

            def turn_page(step: int) -> None:
                state["page"] = max(0, state["page"] + step)
                session_list.refresh()

            session_list()

    def rename() -> None:
        with ui.dialog() as dialog, ui.card().classes("w-full max-w-sm"):
            ui.label("Rename this chat").classes("text-lg font-semibold")
            field = (
                ui.input(
                    "Title",
                    value=title.text,
                    validation={"1 to 200 characters": lambda v: 0 < len((v or "").strip()) <= 200},
                )
                .props('outlined dense autofocus data-testid="rename-title"')
                .classes("w-full")
            )

            async def save() -> None:
                if not field.validate():
                    return
                row = await act(
                    call(service.rename_session, state["session_id"], field.value),
                    done="Renamed",
                )
                if row is not None:
                    title.text = field.value.strip()
                    dialog.close()
                    session_list.refresh()

            field.on("keydown.enter", save)
            with ui.row().classes("w-full justify-end"):
                ui.button("Cancel", on_click=dialog.close).props("flat")
                ui.button("Save", on_click=save)
        dialog.open()

    def delete() -> None:
        async def go() -> None:
            done = await act(call(service.delete_session, state["session_id"]), done="Chat deleted")
            if done is None and not state["session_id"]:
                return
            ui.navigate.to(f"/deeptext?model={picker.value or ''}")

        confirm(
            "Delete this chat?",
            f"“{title.text}” and all its messages are deleted. The model and your other chats "
            "are kept.",
            "Delete",
            go,
        )

    @ui.refreshable
    def session_actions() -> None:
        if not state["session_id"]:
            return
        ui.button("Rename", icon="edit", on_click=rename).props(
            'flat dense no-caps data-testid="rename-chat"'
        )
        ui.button("Delete", icon="delete", on_click=delete).props(
            'flat dense no-caps color=negative data-testid="delete-chat"'
        )

    with chat_actions:
        session_actions()

    async def send() -> None:
        if state["stream"] is not None:
            return
        text = (prompt.value or "").strip()
        if not text:
            ui.notify("Type a message first.", type="warning")
            return
        if not picker.value:
            ui.notify("Pick a model first.", type="warning")
            return
        params = form.values()
        grounded = grounding.values()
        if params is None or grounded is None:
            return
        try:
            request = ChatRequest(
                model=picker.value,
                messages=[Message(role="user", content=text)],
                params=params,
                session_id=state["session_id"],
                **grounded,
            )
        except ValidationError as exc:
            ui.notify(f"Not sent: {exc.errors()[0]['msg']}", type="warning", multi_line=True)
            return
        prompt.value = ""
        empty.set_visibility(False)
        with conversation:
            user_message(text)
            answer = AnswerView(options.get(picker.value, picker.value))
        scroller.scroll_to(percent=1.0)
        state["stream"] = True  # busy from here: a second Enter must not send twice
        bar.streaming(True)
        try:
            # Stored and committed first: the answer is written in its own unit of work.
            turn = await act(call(service.prepare_turn, request))
            if turn is None:
                answer.fail("Not sent: see the message above.")
                prompt.value = text
                return
            if state["session_id"] is None:
                state["session_id"] = turn.session_id
                title.text = read(
                    lambda db, principal: service.get_session(db, principal, turn.session_id).title
                )
                session_actions.refresh()
                # A reload (or a shared link) now opens this chat; relative, so the mount
                # prefix stays.
                ui.navigate.history.replace(f"?session={turn.session_id}")
            session_list.refresh()
            stream = EventStream(service.run_turn(turn), on_stopped=record_stopped(turn))
            state["stream"] = stream
            ended = False
            async for event in stream:
                answer.apply(event)
                if "error" in event:
                    ui.notify(
                        event.get("detail") or event["error"],
                        type="negative",
                        multi_line=True,
                        close_button=True,
                    )
                ended = ended or "done" in event or "error" in event
                scroller.scroll_to(percent=1.0)
            if not ended:
                answer.stopped()
            session_list.refresh()
        finally:
            state["stream"] = None
            bar.streaming(False)

    bar.on_send(send)
