"""A retrieved passage shown in its document's text, highlighted among what surrounds it: what
the Knowledge page's playground and a grounded chat's sources open."""

from __future__ import annotations

from typing import Any

from nicegui import ui

from tuneyard.console.session import SignedOut, call, fetch
from tuneyard.errors import AppError
from tuneyard.knowledge import service

# Characters of the document shown on each side of an opened passage.
CONTEXT_CHARS = 1500


async def open_passage(kb_id: str, passage: dict[str, Any]) -> None:
    """A dialog with the passage in its document's text, the passage highlighted and scrolled
    into view. A document that is gone (or not readable now) still shows the passage's own
    text, with why the rest cannot be shown."""
    start, end = int(passage["start"]), int(passage["end"])
    try:
        window: dict[str, Any] | None = await fetch(
            call(
                service.document_text,
                kb_id,
                passage["document_id"],
                max(0, start - CONTEXT_CHARS),
                end + CONTEXT_CHARS,
            )
        )
        missing = ""
    except SignedOut:
        ui.navigate.to("/login")
        return
    except AppError as exc:
        window, missing = None, exc.message
    with ui.dialog() as dialog, ui.card().classes("w-full max-w-3xl"):
        dialog.props('data-testid="document-dialog"')
        with ui.row().classes("items-center gap-2 w-full"):
            title = window["filename"] if window else passage.get("filename", "")
            ui.label(title).classes("text-lg font-semibold wrap-anywhere")
            ui.badge(passage["page_label"], color="secondary")
            ui.space()
            ui.button(icon="close", on_click=dialog.close).props(
                'flat round dense aria-label="Close"'
            )
        if passage.get("heading"):
            ui.label(passage["heading"]).classes("text-grey-8 wrap-anywhere -mt-2")
        if window is None:
            ui.label(
                f"The passage as it was retrieved; its document's text cannot be shown: {missing}"
            ).classes("text-grey-7 text-sm").props('data-testid="document-missing"')
            highlight = ui.label(passage.get("text", "")).classes(
                "whitespace-pre-wrap wrap-anywhere bg-amber-3 rounded p-2 w-full font-mono text-sm"
            )
            highlight.props('data-testid="passage-highlight"')
        else:
            highlight = _document_window(window, start, end)
            # Once the dialog has drawn its text, bring the passage into view.
            ui.timer(
                0.3,
                lambda: highlight.run_method("scrollIntoView", {"block": "center"}),
                once=True,
            )
    dialog.open()


def _document_window(window: dict[str, Any], start: int, end: int) -> ui.label:
    """The window's text with [start, end) highlighted; the highlight, to scroll to."""
    text, offset = window["text"], window["start"]
    before = text[: max(0, start - offset)]
    marked = text[max(0, start - offset) : max(0, end - offset)]
    after = text[max(0, end - offset) :]
    ui.label(
        f"Characters {window['start']:,}–{window['end']:,} of {window['char_count']:,}; "
        "the passage is highlighted."
    ).classes("text-grey-7 text-sm")
    with ui.element("div").classes(
        "whitespace-pre-wrap wrap-anywhere max-h-[60vh] overflow-auto w-full font-mono text-sm"
    ):
        if window["start"] > 0:
            ui.label("…").classes("inline text-grey-6")
        ui.label(before).classes("inline")
        highlight = ui.label(marked).classes("inline bg-amber-3 rounded")
        highlight.props('data-testid="passage-highlight"')
        ui.label(after).classes("inline")
        if window["end"] < window["char_count"]:
            ui.label("…").classes("inline text-grey-6")
    return highlight
