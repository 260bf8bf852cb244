"""The new training page (/trainings/new): inputs, method, profile and every parameter, from
scratch or copied from an earlier run."""

from __future__ import annotations

import json
from typing import Any

from nicegui import ui

from tuneyard.console.schema_form import ParameterFields, is_json_object_or_empty
from tuneyard.console.session import act, read
from tuneyard.console.shell import console_page
from tuneyard.console.widgets import cannot, error_label, heading
from tuneyard.training import service
from tuneyard.training.pages.frame import (
    PICK_LIMIT,
    SECTION,
    lifecycle_needs,
    method_views,
    ready_inputs,
    training_tabs,
    training_unavailable,
)
from tuneyard.training.schemas import ProfileOut

NAME_RULE = "1-100 letters, digits, '.', '_' or '-'"


def _new_form_data(session, principal, copy_from: str | None) -> dict[str, Any]:
    profiles, _ = service.list_profiles(session, principal, PICK_LIMIT, 0)
    return {
        **ready_inputs(session, principal),
        "methods": method_views(session, principal),
        "profiles": [ProfileOut.model_validate(p).model_dump() for p in profiles],
        "copy": service.copy_settings(session, principal, copy_from) if copy_from else None,
    }


@console_page("/trainings/new", "New training", SECTION)
def new_training_page(
    base_model_id: str | None = None, dataset_id: str | None = None, copy_from: str | None = None
):
    training_tabs("/trainings")
    data = read(lambda session, principal: _new_form_data(session, principal, copy_from))
    copied = data["copy"] or {}
    heading(
        "New training",
        "Settings copied from a training; change what you like."
        if copied
        else "Pick a base model, a dataset and a method; the defaults train a LoRA adapter.",
    )
    ready = lifecycle_needs(data)
    unavailable = training_unavailable()
    if unavailable:
        cannot(unavailable)

    methods = {m["name"]: m for m in data["methods"]}
    profiles = {p["id"]: p for p in data["profiles"]}
    bases = {b["id"]: b["name"] for b in data["bases"]}
    datasets = {
        d["id"]: f"{d['name']} · {d['format']} · {d['records']} records" for d in data["datasets"]
    }

    def preselect(options: dict[str, str], *wanted: str | None) -> str | None:
        for choice in wanted:
            if choice in options:
                return choice
        return next(iter(options)) if len(options) == 1 else None

    with ui.card().classes("w-full").props('data-testid="training-form"'):
        with ui.element("div").classes("grid grid-cols-1 md:grid-cols-2 gap-3 w-full"):
            name = (
                ui.input(
                    "Name",
                    value=copied.get("name", ""),
                    validation={
                        f"A train name is {NAME_RULE}": lambda v: bool(
                            service.NAME_RE.fullmatch(v or "")
                        )
                    },
                )
                .props('outlined dense data-testid="training-name"')
                .classes("w-full")
            )
            method = (
                ui.select(
                    {
                        n: f"{n} · {m['title']}" + (" (custom)" if m["custom"] else "")
                        for n, m in methods.items()
                    },
                    value=copied.get("method") if copied.get("method") in methods else "sft",
                    label="Method",
                )
                .props('outlined dense data-testid="training-method"')
                .classes("w-full")
            )
            base = (
                ui.select(
                    bases,
                    value=preselect(bases, base_model_id, copied.get("base_model_id")),
                    label="Base model",
                    with_input=True,
                )
                .props('outlined dense data-testid="training-base"')
                .classes("w-full")
            )
            dataset = (
                ui.select(
                    datasets,
                    value=preselect(datasets, dataset_id, copied.get("dataset_id")),
                    label="Dataset",
                    with_input=True,
                )
                .props('outlined dense data-testid="training-dataset"')
                .classes("w-full")
            )
        about = ui.label("").classes("text-grey-8 text-sm").props('data-testid="method-about"')
        profile = (
            ui.select({}, value=None, label="Profile (fills the parameters)", clearable=True)
            .props('outlined dense data-testid="training-profile"')
            .classes("w-full md:w-1/2")
        )

    with (
        ui.expansion("Parameters", icon="tune", value=True)
        .classes("w-full")
        .props('data-testid="training-params"')
    ):
        ui.label(
            "Every parameter the method takes, with its default; only changed ones are sent."
        ).classes("text-grey-8 text-sm")
        grid = ui.element("div").classes(
            "grid grid-cols-1 sm:grid-cols-2 lg:grid-cols-3 gap-3 w-full"
        )
        fields = ParameterFields(grid)
        advanced = (
            ui.textarea(
                "Advanced JSON (wins over the fields above)",
                placeholder='{"max_steps": 100}',
                validation={'A JSON object, like {"epochs": 2}': is_json_object_or_empty},
            )
            .props('outlined autogrow data-testid="training-json"')
            .classes("w-full font-mono")
        )

    def method_changed(carry: dict[str, Any] | None = None) -> None:
        chosen = methods.get(method.value)
        if chosen is None:
            return
        # Keep what the user already changed when switching to a method that has it too.
        kept = carry if carry is not None else (fields.changed() if fields.inputs else {})
        fields.build(chosen["params_schema"], kept)
        formats = " or ".join(chosen["dataset_formats"])
        result = {"adapter": " Makes an adapter.", "full": " Makes a complete model."}.get(
            chosen.get("result") or "", ""
        )
        about.text = f"{chosen['description']} Trains on {formats} datasets.{result}"
        usable = {
            pid: p["name"] + (f" ({p['method']})" if p["method"] else "")
            for pid, p in profiles.items()
            if p["method"] in (None, chosen["name"])
        }
        profile.set_options(usable, value=profile.value if profile.value in usable else None)

    def profile_chosen() -> None:
        chosen = profiles.get(profile.value)
        if chosen is None:
            return
        rest = fields.set_values(chosen["params"])
        advanced.value = json.dumps(rest, indent=2) if rest else ""

    method_changed(copied.get("params", {}))
    method.on_value_change(lambda: method_changed())
    profile.on_value_change(profile_chosen)

    error = error_label("form-error")

    async def submit() -> None:
        error.text = ""
        if not name.validate():
            error.text = f"A train name is {NAME_RULE}."
            return
        if not (base.value and dataset.value and method.value):
            error.text = "Pick a base model, a dataset and a method."
            return
        if not advanced.validate():
            error.text = "The advanced JSON must be a JSON object."
            return
        try:
            chosen_profile = profiles.get(profile.value)
            params = fields.changed(set(chosen_profile["params"]) if chosen_profile else set())
        except (TypeError, ValueError) as exc:
            error.text = f"A parameter has a value of the wrong type: {exc}"
            return
        if (advanced.value or "").strip():
            params.update(json.loads(advanced.value))
        settings = {
            "name": name.value.strip(),
            "method": method.value,
            "base_model_id": base.value,
            "dataset_id": dataset.value,
            "params": params,
            "profile_id": profile.value or None,
        }
        training_id = await act(
            lambda session, principal: service.start_training(session, principal, **settings).id,
            done="Training queued",
            error_label=error,
        )
        if training_id is not None:
            ui.navigate.to(f"/trainings/{training_id}")

    with ui.row().classes("w-full gap-2 items-center"):
        start = ui.button("Start training", icon="play_arrow", on_click=submit).props(
            'no-caps data-testid="start-training"'
        )
        ui.link("Cancel", "/trainings")
    if unavailable or not ready:
        start.disable()
