"""The DeepText side-by-side page (/deeptext/compare): one prompt to two to four models,
each answer streaming into its own column."""

from __future__ import annotations

from typing import Any

from nicegui import ui
from pydantic import ValidationError

from tuneyard.chat import service
from tuneyard.chat.pages.answer import AnswerView, PromptBar, user_message
from tuneyard.chat.pages.frame import (
    SECTION,
    chat_models,
    mode_tabs,
    model_options,
    no_models_guidance,
)
from tuneyard.chat.pages.grounding import GroundingForm
from tuneyard.chat.pages.params_form import ParamsForm
from tuneyard.chat.schemas import ChatParams, CompareRequest, Message
from tuneyard.console.session import act, call, read
from tuneyard.console.shell import console_page
from tuneyard.console.stream import EventStream
from tuneyard.console.widgets import heading

MAX_COMPARED = 4
MIN_COMPARED = 2


class CompareSlot:
    """One model column's settings: which model, and optionally its own parameters."""

    def __init__(self, index: int, options: dict[str, str], value: str | None):
        self.index = index
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
                self.own_params: ParamsForm = ParamsForm(with_system=False)
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
        grounding = GroundingForm()
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
        grounded = grounding.values()
        if params is None or grounded is None:
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
                **grounded,
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
