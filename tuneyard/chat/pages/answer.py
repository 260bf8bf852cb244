"""The pieces of a conversation on the page: messages, an answer as it streams, the prompt
bar with Send and Stop."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

from nicegui import ui

from tuneyard.chat import service
from tuneyard.chat.pages.grounding import source_chips
from tuneyard.console.stream import EventStream


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
            # A grounded answer's sources, once it is done.
            self.sources = ui.element("div")
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
            with self.sources:
                source_chips(event.get("citations") or [])
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
