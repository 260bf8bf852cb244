"""Grounding a chat in knowledge bases: which ones and how many passages, as a turn's request
carries them, and the sources under a grounded answer."""

from __future__ import annotations

from typing import Any

from nicegui import ui
from pydantic import BaseModel

from tuneyard.chat.schemas import ChatRequest, Grounding
from tuneyard.console.session import read
from tuneyard.knowledge.passage_dialog import open_passage

# The picker lists this many bases, newest first; a project with more filters by typing.
CHOICES_SHOWN = 500


def _bound(model: type[BaseModel], field: str, key: str) -> Any:
    """A pydantic field's own bound (ge, le, max_length), so the form never drifts from it."""
    for item in model.model_fields[field].metadata:
        if getattr(item, key, None) is not None:
            return getattr(item, key)
    raise LookupError(f"{model.__name__}.{field} has no {key} bound")


TOP_K_MIN = _bound(Grounding, "top_k", "ge")
TOP_K_MAX = _bound(Grounding, "top_k", "le")
TOP_K_DEFAULT = Grounding().top_k
MOST_BASES = _bound(ChatRequest, "knowledge_bases", "max_length")


def knowledge_base_choices(session, principal) -> tuple[dict[str, str], int]:
    """The project's knowledge bases as picker options (id: name), and how many there are."""
    from tuneyard.knowledge.service import list_knowledge_bases

    bases, total = list_knowledge_bases(session, principal, CHOICES_SHOWN, 0)
    return {kb.id: kb.name for kb in bases}, total


class GroundingForm:
    """The knowledge bases a turn is grounded in, and its top-k; when the project has none, a
    hint where they are made."""

    def __init__(self) -> None:
        choices, total = read(knowledge_base_choices)
        self.picker: ui.select | None = None
        if not choices:
            with (
                ui.row()
                .classes("items-center gap-x-2 text-grey-8 text-sm flex-wrap")
                .props('data-testid="knowledge-hint"')
            ):
                ui.icon("menu_book")
                ui.label("Answers can be grounded in your own documents:")
                ui.link("create a knowledge base", "/knowledge")
            return
        with ui.row().classes("w-full items-start gap-2 flex-nowrap"):
            self.picker = (
                ui.select(
                    choices,
                    multiple=True,
                    value=[],
                    label="Knowledge bases",
                    with_input=True,
                )
                .props(
                    f"outlined dense use-chips clearable max-values={MOST_BASES} "
                    f'data-testid="knowledge-bases"'
                )
                .classes("flex-1 min-w-0")
            )
            if total > len(choices):
                self.picker.props(f'hint="The newest {len(choices)} of {total}; type to filter"')
            self.top_k = (
                ui.number(
                    "Passages",
                    value=TOP_K_DEFAULT,
                    min=TOP_K_MIN,
                    max=TOP_K_MAX,
                    step=1,
                    precision=0,
                    validation={
                        f"Passages: a whole number from {TOP_K_MIN} to {TOP_K_MAX}": lambda v: (
                            v is not None and TOP_K_MIN <= float(v) <= TOP_K_MAX
                        )
                    },
                )
                .props('outlined dense data-testid="knowledge-top-k"')
                .classes("w-28 shrink-0")
            )
            self.top_k.bind_visibility_from(self.picker, "value", backward=bool)

    def values(self) -> dict[str, Any] | None:
        """`knowledge_bases` and `grounding` for the request (empty when none is picked), or
        None (the fields say why) when a field is out of range."""
        if self.picker is None or not self.picker.value:
            return {}
        if not self.top_k.validate():
            ui.notify("Fix the number of passages first.", type="warning")
            return None
        return {
            "knowledge_bases": list(self.picker.value),
            "grounding": Grounding(top_k=int(self.top_k.value)),
        }


def source_chips(citations: list[dict[str, Any]], testid: str = "sources") -> None:
    """A grounded answer's sources as "[n] filename, page" chips: the ones the answer cites
    marked, the others dimmed; each opens its passage in its document's text."""
    if not citations:
        return
    with ui.row().classes("items-center gap-1 flex-wrap").props(f'data-testid="{testid}"'):
        ui.label("Sources:").classes("text-xs text-grey-7")
        for citation in citations:
            _chip(citation)


def _chip(citation: dict[str, Any]) -> None:
    cited = bool(citation.get("cited"))
    label = f"[{citation['n']}] {citation['filename']}, {citation['page_label']}"

    async def open_source() -> None:
        await open_passage(citation["knowledge_base_id"], citation)

    chip = ui.chip(
        label,
        icon="check" if cited else None,
        color="primary" if cited else "grey-4",
        text_color="white" if cited else "grey-9",
        on_click=open_source,
    )
    chip.props(f'dense data-testid="source-{citation["n"]}" data-cited="{str(cited).lower()}"')
    chip.classes("max-w-full" if cited else "max-w-full opacity-60")
    place = [citation.get("knowledge_base"), citation.get("heading")]
    where = " > ".join(part for part in place if part)
    chip.tooltip(
        (f"{where}: " if where else "")
        + ("cited in the answer" if cited else "retrieved, not cited in the answer")
    )
