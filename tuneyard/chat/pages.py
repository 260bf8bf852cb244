"""DeepText in the console: chat with any model of the project, alone or side by side."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from nicegui import ui
from pydantic import ValidationError

from tuneyard.chat import service
from tuneyard.chat.schemas import (
    DEFAULT_SYSTEM_PROMPT,
    ChatParams,
    ChatRequest,
    CompareRequest,
    Message,
)
from tuneyard.console.session import act, call, read
from tuneyard.console.shell import console_page
from tuneyard.console.widgets import confirm, heading, needs, when

log = logging.getLogger(__name__)

SECTION = "/deeptext"
MODEL_LIMIT = 500
SESSIONS_PER_PAGE = 12
MAX_COMPARED = 4
MIN_COMPARED = 2
# The order a picker lists models in: as the lifecycle makes them.
KIND_LABELS = {
    "base": "Base",
    "customized": "Customized",
    "complete": "Complete",
    "live": "Live",
    "third-party": "Third-party",
}
_END = object()


# -- what can be chatted with ------------------------------------------------------------------


def chat_models(session, principal) -> list[dict[str, str]]:
    """Every model of the project that can answer a chat, in lifecycle order, as plain values."""
    from tuneyard.basemodels.service import list_base_models
    from tuneyard.complete.service import list_complete
    from tuneyard.customized.service import list_customized
    from tuneyard.deploy.service import list_live
    from tuneyard.thirdparty.service import list_third_party

    found: list[tuple[str, str, str]] = []
    bases, _ = list_base_models(session, principal, limit=MODEL_LIMIT)
    found += [
        ("base", row.id, row.technical_name)
        for row in bases
        if row.status == "ready" and row.model_type == "chat"
    ]
    customized, _ = list_customized(session, principal, limit=MODEL_LIMIT)
    found += [("customized", row.id, row.name) for row in customized]
    complete, _ = list_complete(session, principal, limit=MODEL_LIMIT)
    found += [("complete", row.id, row.name) for row in complete if row.status == "ready"]
    live, _ = list_live(session, principal, status="live", limit=MODEL_LIMIT)
    found += [("live", row.id, row.name) for row in live]
    third_party, _ = list_third_party(session, principal, model_type="chat", limit=MODEL_LIMIT)
    found += [("third-party", row.id, row.name) for row in third_party]
    return [
        {"ref": f"{kind}:{model_id}", "kind": kind, "name": name} for kind, model_id, name in found
    ]


def model_options(models: list[dict[str, str]]) -> dict[str, str]:
    """Picker options, labelled with their kind so the list reads grouped."""
    return {model["ref"]: f"{KIND_LABELS[model['kind']]}: {model['name']}" for model in models}


def canonical_ref(ref: str) -> str | None:
    """`ref` as the picker names it (kind:id), or None (with a notice) when it names nothing."""
    from tuneyard.chat.backends import resolve_model
    from tuneyard.errors import AppError

    try:
        return read(lambda session, principal: resolve_model(session, principal, ref).ref)
    except AppError as exc:
        ui.notify(exc.message, type="warning", multi_line=True, close_button=True)
        return None


def no_models_guidance() -> None:
    needs("Chat", [("a base model", "/base-models")])
    with ui.row().classes("items-center gap-x-3 gap-y-1 text-grey-8 flex-wrap"):
        ui.label("Or chat with a deployed or a hosted model:")
        ui.link("Live Models", "/live-models")
        ui.link("Third-party Models", "/third-party-models")
    ui.label("Models you train appear here as soon as their training ends.").classes("text-grey-8")


def mode_tabs(active: str) -> None:
    with ui.row().classes("gap-2"):
        for label, target in (("Chat", "/deeptext"), ("Side by side", "/deeptext/compare")):
            button = ui.button(label, on_click=lambda target=target: ui.navigate.to(target))
            button.props(
                f"no-caps {'unelevated' if label == active else 'outline'} "
                f'data-testid="mode-{label.lower().replace(" ", "-")}"'
            )


# -- parameters ---------------------------------------------------------------------------------


def _limits(name: str) -> dict[str, Any]:
    """ChatParams' own bounds for a field (ge, gt, le, max_length), so the form never drifts."""
    limits: dict[str, Any] = {}
    for item in ChatParams.model_fields[name].metadata:
        for key in ("ge", "gt", "le", "max_length"):
            if getattr(item, key, None) is not None:
                limits[key] = getattr(item, key)
    return limits


def _number_rule(label: str, name: str, *, whole: bool, optional: bool) -> dict[str, Callable]:
    limits = _limits(name)
    if "gt" in limits:
        span = f"above {limits['gt']:g} and at most {limits['le']:g}"
    elif "ge" in limits and "le" in limits:
        span = f"between {limits['ge']:g} and {limits['le']:g}"
    else:
        span = "a number"
    kind = "a whole number " if whole and "ge" in limits else ""
    message = f"{label} must be {kind}{span}" + (", or empty" if optional else "")

    def valid(value: Any) -> bool:
        if value is None or value == "":
            return optional
        if whole and float(value) != int(float(value)):
            return False
        value = float(value)
        if "ge" in limits and value < limits["ge"]:
            return False
        if "gt" in limits and value <= limits["gt"]:
            return False
        return not ("le" in limits and value > limits["le"])

    return {message: valid}


class ParamsForm:
    """System prompt and sampling parameters, checked against ChatParams' limits as typed."""

    def __init__(self, values: dict[str, Any] | None = None, *, with_system: bool = True):
        defaults = {**ChatParams().model_dump(), "system": DEFAULT_SYSTEM_PROMPT}
        # A stored chat's own values, its empty system prompt included.
        values = {**defaults, **{k: v for k, v in (values or {}).items() if k in defaults}}
        self.system = None
        if with_system:
            self.system = (
                ui.textarea("System prompt", value=values["system"] or "")
                .props('outlined dense autogrow data-testid="system-prompt"')
                .classes("w-full")
            )

        def number(label: str, name: str, step: float, *, whole: bool, optional: bool = False):
            rule = _number_rule(label, name, whole=whole, optional=optional)
            return ui.number(label, value=values[name], step=step, validation=rule)

        with ui.element("div").classes("grid grid-cols-2 sm:grid-cols-3 gap-2 w-full"):
            self.temperature = number("Temperature", "temperature", 0.1, whole=False)
            self.top_p = number("Top p", "top_p", 0.05, whole=False)
            self.top_k = number("Top k", "top_k", 1, whole=True, optional=True)
            self.max_tokens = number("Max tokens", "max_tokens", 1, whole=True)
            self.seed = ui.number(
                "Seed",
                value=values["seed"],
                step=1,
                validation={
                    "Seed must be a whole number, or empty": lambda v: (
                        v in (None, "") or float(v) == int(float(v))
                    )
                },
            )
        most = _limits("stop").get("max_length", 8)
        self.stop = (
            ui.input_chips(
                "Stop strings",
                value=list(values["stop"] or []),
                new_value_mode="add-unique",
                validation={f"At most {most} stop strings": lambda v: len(v or []) <= most},
            )
            .props("outlined dense hint='Press Enter after each'")
            .classes("w-full")
        )
        for field in self.numbers:
            field.props("outlined dense").classes("w-full")

    @property
    def numbers(self) -> tuple[ui.number, ...]:
        return (self.temperature, self.top_p, self.top_k, self.max_tokens, self.seed)

    def values(self) -> ChatParams | None:
        """The parameters, or None (the fields show why) when one is out of range."""
        fields = [*self.numbers, self.stop]
        if not all([field.validate() for field in fields]):
            ui.notify("Fix the parameters marked in red first.", type="warning")
            return None

        def whole(value: Any) -> int | None:
            return None if value in (None, "") else int(value)

        system = (self.system.value or "").strip() if self.system is not None else ""
        try:
            return ChatParams(
                system=system or None,
                temperature=float(self.temperature.value),
                top_p=float(self.top_p.value),
                top_k=whole(self.top_k.value),
                max_tokens=whole(self.max_tokens.value),
                seed=whole(self.seed.value),
                stop=list(self.stop.value or []) or None,
            )
        except (ValidationError, TypeError, ValueError) as exc:
            ui.notify(f"Check the parameters: {exc}", type="warning", multi_line=True)
            return None


# -- streaming ----------------------------------------------------------------------------------


class EventStream:
    """A blocking iterator of events (a model's answer) run in a thread and read on the loop
    as the events come, so the page shows each piece the moment it arrives.

    `stop()` ends the reading at once; the thread closes the iterator on its next event and
    calls `on_stopped(events seen)` if the answer had not ended yet.
    """

    def __init__(
        self,
        events: Iterator[dict[str, Any]],
        on_stopped: Callable[[list[dict[str, Any]]], None] | None = None,
    ):
        self._events = events
        self._on_stopped = on_stopped
        self._queue: asyncio.Queue = asyncio.Queue()
        self._stopped = threading.Event()
        self._loop = asyncio.get_running_loop()
        threading.Thread(target=self._pump, daemon=True, name="deeptext-stream").start()

    def _put(self, item: Any) -> None:
        # A RuntimeError: the loop is gone, the server is shutting down.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)

    def _pump(self) -> None:
        seen: list[dict[str, Any]] = []
        try:
            for event in self._events:
                seen.append(event)
                if self._stopped.is_set():
                    if self._on_stopped is not None and not ("done" in event or "error" in event):
                        self._on_stopped(seen)
                    break
                self._put(event)
        except Exception as exc:  # a failure the service did not turn into an event
            log.exception("chat stream failed")
            self._put({"error": type(exc).__name__, "detail": str(exc) or type(exc).__name__})
        finally:
            close = getattr(self._events, "close", None)
            if close is not None:
                close()
            self._put(_END)

    def stop(self) -> None:
        self._stopped.set()
        self._queue.put_nowait(_END)

    async def __aiter__(self):
        while True:
            item = await self._queue.get()
            if item is _END:
                return
            yield item


def speed_text(usage: dict[str, Any], seconds: float | None, pieces: int) -> str:
    """First-token time and generation speed, as the stats line under an answer."""
    first = usage.get("first_token_seconds")
    tokens = usage.get("completion_tokens") or pieces
    parts = []
    if first is not None:
        parts.append(f"first token {float(first):.2f} s")
    if seconds:
        generating = max(float(seconds) - float(first or 0), 1e-3)
        parts.append(f"{tokens / generating:.1f} tokens/s")
    if tokens:
        parts.append(f"{tokens} tokens")
    if usage.get("finish_reason"):
        parts.append(f"finish: {usage['finish_reason']}")
    return " · ".join(parts)


@contextlib.contextmanager
def message_box(name: str, *, sent: bool, testid: str, bubble: bool = True):
    """A chat bubble (or, in a column, a plain block) holding one message.

    Its content is one column: Quasar draws every direct child of a bubble as a bubble.
    """
    if bubble:
        colors = "bg-color=primary text-color=white" if sent else "bg-color=grey-3"
        outer = ui.chat_message(name=name, sent=sent).props(f'{colors} data-testid="{testid}"')
        with outer, ui.column().classes("gap-1 min-w-0"):
            yield
    else:
        with ui.column().classes("w-full gap-1 min-w-0").props(f'data-testid="{testid}"'):
            yield


def user_message(text: str) -> None:
    with message_box("You", sent=True, testid="user-message"):
        ui.label(text).classes("whitespace-pre-wrap break-words")


class AnswerView:
    """One answer being streamed: the text grows, then stats or the error show."""

    def __init__(self, title: str | None = None, *, bubble: bool = True, testid: str = "answer"):
        self.pieces = 0
        self.text = ""
        self.started = time.monotonic()
        self.first: float | None = None
        with message_box(title or "Assistant", sent=False, testid=testid, bubble=bubble):
            with ui.row().classes("items-center gap-2") as self.waiting:
                ui.spinner(size="sm")
                ui.label("Waiting for the model (a first answer can take a while)…").classes(
                    "text-grey-7 text-sm"
                )
            self.label = (
                ui.label("")
                .classes("whitespace-pre-wrap break-words")
                .props(f'data-testid="{testid}-text"')
            )
            self.error = ui.label("").classes("text-negative whitespace-pre-wrap break-words")
            self.error.props(f'data-testid="{testid}-error"')
            self.error.set_visibility(False)
            self.stats = (
                ui.label("").classes("text-xs text-grey-7").props(f'data-testid="{testid}-stats"')
            )
            self.stats.set_visibility(False)

    def apply(self, event: dict[str, Any]) -> None:
        if "delta" in event:
            if self.first is None:
                self.first = time.monotonic() - self.started
                self.waiting.set_visibility(False)
            self.pieces += 1
            self.text += event["delta"]
            self.label.text = self.text
        elif event.get("done"):
            self.waiting.set_visibility(False)
            self.text = event.get("content", self.text)
            self.label.text = self.text or "(the model answered nothing)"
            usage = {
                **(event.get("usage") or {}),
                "first_token_seconds": event.get("first_token_seconds", self.first),
                "finish_reason": event.get("finish_reason"),
            }
            self.show_stats(speed_text(usage, time.monotonic() - self.started, self.pieces))
        elif "error" in event:
            self.fail(event.get("detail") or event["error"])

    def fail(self, message: str) -> None:
        self.waiting.set_visibility(False)
        self.error.text = message
        self.error.set_visibility(True)

    def stopped(self) -> None:
        self.waiting.set_visibility(False)
        self.show_stats("stopped")

    def show_stats(self, text: str) -> None:
        self.stats.text = text
        self.stats.set_visibility(True)


class PromptBar:
    """The prompt box with its Send and Stop buttons. Enter sends (Shift+Enter keeps its usual
    new line); Stop ends the answer that `state["stream"]` is reading."""

    def __init__(self, placeholder: str, send_label: str, state: dict[str, Any]):
        self.state = state
        with ui.row().classes("w-full items-end gap-2 flex-nowrap"):
            self.prompt = (
                ui.textarea(placeholder=placeholder)
                .props('outlined dense autogrow data-testid="prompt"')
                .classes("flex-1 min-w-0")
            )
            self.send_button = ui.button(send_label, icon="send").props(
                'no-caps data-testid="send"'
            )
            self.stop_button = ui.button("Stop", icon="stop", on_click=self.stop).props(
                'no-caps color=negative outline data-testid="stop"'
            )
            self.stop_button.set_visibility(False)

    def on_send(self, send: Callable) -> None:
        self.send_button.on_click(send)
        self.prompt.on("keydown.enter.exact.prevent", send)

    def streaming(self, active: bool) -> None:
        self.send_button.set_enabled(not active)
        self.stop_button.set_visibility(active)

    def stop(self) -> None:
        if isinstance(self.state["stream"], EventStream):
            self.state["stream"].stop()


def record_stopped(turn) -> Callable[[list[dict[str, Any]]], None]:
    """Keep what arrived of a stopped answer, as the service keeps a failed one."""

    def keep(events: list[dict[str, Any]]) -> None:
        text = "".join(event.get("delta", "") for event in events)
        service.record_answer(turn.session_id, turn.model.ref, text, {"finish_reason": "stopped"})

    return keep


# -- one conversation ---------------------------------------------------------------------------


def _session_view(session, principal, session_id: str) -> dict[str, Any]:
    chat = service.get_session(session, principal, session_id)
    return {
        "id": chat.id,
        "title": chat.title,
        "model": chat.model,
        "params": dict(chat.params or {}),
        "messages": [
            {"role": m.role, "content": m.content, "model": m.model, "usage": dict(m.usage or {})}
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
        if params is None:
            return
        try:
            request = ChatRequest(
                model=picker.value,
                messages=[Message(role="user", content=text)],
                params=params,
                session_id=state["session_id"],
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


# -- side by side -------------------------------------------------------------------------------


class CompareSlot:
    """One model column's settings: which model, and optionally its own parameters."""

    def __init__(self, index: int, options: dict[str, str], value: str | None):
        self.index = index
        self.own_params: ParamsForm | None = None
        with ui.column().classes("w-full gap-1") as self.box:
            self.picker = (
                ui.select(options, value=value, label=f"Model {index + 1}", with_input=True)
                .props(f'outlined dense data-testid="compare-model-{index}"')
                .classes("w-full")
            )
            self.own = ui.checkbox("Its own parameters").props(
                f'dense data-testid="own-params-{index}"'
            )
            with (
                ui.column()
                .classes("w-full pl-2")
                .props(f'data-testid="own-params-box-{index}"') as self.own_box
            ):
                self.own_params = ParamsForm(with_system=False)
            self.own_box.bind_visibility_from(self.own, "value")


@console_page("/deeptext/compare", "DeepText · side by side", SECTION)
def compare_page(models: str = ""):
    heading(
        "Side by side",
        "One prompt to two to four models at once; each answer streams into its own column "
        "and is kept as a chat of its own.",
    )
    mode_tabs("Side by side")
    available = read(chat_models)
    if not available:
        no_models_guidance()
        return
    options = model_options(available)
    refs = list(options)
    wanted = [ref for ref in models.split(",") if ref in options][:MAX_COMPARED] if models else []
    # Two different models when there are two; the same one twice still compares parameters.
    while len(wanted) < MIN_COMPARED:
        wanted.append(refs[len(wanted) % len(refs)])
    state: dict[str, Any] = {"stream": None}
    slots: list[CompareSlot] = []

    with ui.card().classes("w-full gap-2"):
        ui.label("Models").classes("font-semibold")
        ui.label("Pick the same model twice with its own parameters to compare settings.").classes(
            "text-grey-7 text-sm -mt-2"
        )
        slot_grid = ui.element("div").classes("grid grid-cols-1 md:grid-cols-2 gap-3 w-full")
        with ui.row().classes("gap-2"):
            add_button = ui.button("Add a model", icon="add").props(
                'flat no-caps data-testid="add-model"'
            )
            remove_button = ui.button("Remove the last", icon="remove").props(
                'flat no-caps data-testid="remove-model"'
            )

    def add_slot(value: str | None) -> None:
        with slot_grid:
            slots.append(CompareSlot(len(slots), options, value))
        add_button.set_enabled(len(slots) < MAX_COMPARED)
        remove_button.set_enabled(len(slots) > MIN_COMPARED)

    def remove_slot() -> None:
        if len(slots) > MIN_COMPARED:
            slot = slots.pop()
            slot.box.delete()
        add_button.set_enabled(len(slots) < MAX_COMPARED)
        remove_button.set_enabled(len(slots) > MIN_COMPARED)

    for ref in wanted:
        add_slot(ref)
    add_button.on_click(lambda: add_slot(refs[len(slots) % len(refs)]))
    remove_button.on_click(remove_slot)

    with ui.card().classes("w-full gap-2"):
        with (
            ui.expansion("System prompt and shared parameters", icon="tune")
            .classes("w-full")
            .props('dense data-testid="params"')
        ):
            shared = ParamsForm()
        bar = PromptBar("One prompt for every model", "Send to all", state)
        prompt = bar.prompt

    results = ui.column().classes("w-full gap-3")

    async def send() -> None:
        if state["stream"] is not None:
            return
        text = (prompt.value or "").strip()
        if not text:
            ui.notify("Type a prompt first.", type="warning")
            return
        if any(not slot.picker.value for slot in slots):
            ui.notify("Pick a model in every column (or remove the column).", type="warning")
            return
        params = shared.values()
        if params is None:
            return
        per_model: list[ChatParams | None] = []
        for slot in slots:
            if slot.own.value:
                own = slot.own_params.values()
                if own is None:
                    return
                per_model.append(own.model_copy(update={"system": params.system}))
            else:
                per_model.append(None)
        try:
            request = CompareRequest(
                models=[slot.picker.value for slot in slots],
                messages=[Message(role="user", content=text)],
                params=params,
                params_per_model=per_model if any(per_model) else None,
            )
        except ValidationError as exc:
            ui.notify(f"Not sent: {exc.errors()[0]['msg']}", type="warning", multi_line=True)
            return
        state["stream"] = True
        bar.streaming(True)
        try:
            turns = await act(call(service.prepare_compare, request))
            if turns is None:
                return
            results.clear()
            answers: list[AnswerView] = []
            links: list[ui.element] = []
            with results:
                user_message(text)
                columns = min(len(turns), MAX_COMPARED)
                with (
                    ui.element("div")
                    .classes(f"grid grid-cols-1 md:grid-cols-2 xl:grid-cols-{columns} gap-3 w-full")
                    .props('data-testid="compare-columns"')
                ):
                    for index, turn in enumerate(turns):
                        with (
                            ui.card()
                            .classes("w-full min-w-0 gap-1")
                            .props(f'data-testid="column-{index}"')
                        ):
                            ui.label(options.get(turn.model.ref, turn.model.name)).classes(
                                "font-semibold break-words"
                            )
                            answers.append(AnswerView(bubble=False, testid=f"answer-{index}"))
                            link = ui.link(
                                "Continue as a chat", f"/deeptext?session={turn.session_id}"
                            )
                            link.classes("text-sm")
                            link.set_visibility(False)
                            links.append(link)
            stream = EventStream(service.run_compare(turns))
            state["stream"] = stream
            ended: set[int] = set()
            async for event in stream:
                index = event.get("index")
                if index is None or index >= len(answers):
                    continue
                answers[index].apply(event)
                if "done" in event or "error" in event:
                    ended.add(index)
                    links[index].set_visibility(True)
                if "error" in event:
                    ui.notify(
                        f"{options.get(event.get('model'), event.get('model'))}: "
                        f"{event.get('detail') or event['error']}",
                        type="negative",
                        multi_line=True,
                        close_button=True,
                    )
            for index, answer in enumerate(answers):
                if index not in ended:
                    # The model still finishes in the background and its chat keeps the answer.
                    answer.stopped()
                    links[index].set_visibility(True)
        finally:
            state["stream"] = None
            bar.streaming(False)

    bar.on_send(send)
