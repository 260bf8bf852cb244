"""The parameter profiles page (/training/profiles): named parameter sets to start from."""

from __future__ import annotations

import json
from typing import Any

from nicegui import ui

from tuneyard.console.schema_form import is_json_object_or_empty, value_text
from tuneyard.console.session import act, call, read
from tuneyard.console.shell import console_page
from tuneyard.console.widgets import PagedTable, clear, column, confirm, heading, when
from tuneyard.training import service
from tuneyard.training.pages.frame import SECTION, method_views, training_tabs
from tuneyard.training.schemas import ProfileOut


def _profile_row(profile) -> dict[str, Any]:
    return {
        "id": profile.id,
        "name": profile.name,
        "method": profile.method or "any",
        "params": value_text(profile.params),
        "description": profile.description,
        "created": when(profile.created_at),
    }


def _params_text(params: dict[str, Any]) -> str:
    return json.dumps(params, indent=2) if params else ""


def _parse_params(text: str) -> dict[str, Any]:
    return json.loads(text) if (text or "").strip() else {}


@console_page("/training/profiles", "Training profiles", SECTION)
def profiles_page():
    training_tabs("/training/profiles")
    heading(
        "Parameter profiles",
        "Named sets of parameters to start trainings from (a profile fills the form's fields).",
    )
    method_names = read(lambda s, p: [m["name"] for m in method_views(s, p)])

    def fetch_page(session, principal, limit, offset):
        items, total = service.list_profiles(session, principal, limit, offset)
        return [_profile_row(p) for p in items], total

    with (
        ui.expansion("New profile", icon="add", value=False)
        .classes("w-full")
        .props('data-testid="new-profile"')
    ):
        with ui.element("div").classes("grid grid-cols-1 md:grid-cols-2 gap-3 w-full"):
            name = (
                ui.input(
                    "Profile name",
                    validation={"1-100 characters": lambda v: 0 < len((v or "").strip()) <= 100},
                )
                .props('outlined dense data-testid="profile-name"')
                .classes("w-full")
            )
            method = (
                ui.select(
                    {"": "Any method", **{n: n for n in method_names}}, value="", label="Method"
                )
                .props('outlined dense data-testid="profile-method"')
                .classes("w-full")
            )
        params = (
            ui.textarea(
                "Parameters (JSON object)",
                placeholder='{"learning_rate": 0.0001, "epochs": 3}',
                validation={"A JSON object": is_json_object_or_empty},
            )
            .props('outlined autogrow data-testid="profile-params"')
            .classes("w-full font-mono")
        )
        description = (
            ui.input("Description").props('outlined dense data-testid="profile-description"')
        ).classes("w-full")

        async def create() -> None:
            if not (name.validate() and params.validate()):
                return
            created = await act(
                lambda s, p: (
                    service.create_profile(
                        s,
                        p,
                        name.value.strip(),
                        _parse_params(params.value),
                        method.value or None,
                        description.value or "",
                    ).id
                ),
                done="Profile created",
            )
            if created is not None:
                for field in (name, params, description):
                    clear(field)
                table.load(1)

        ui.button("Create profile", icon="add", on_click=create).props(
            'no-caps data-testid="create-profile"'
        )

    table = PagedTable(
        [
            column("name", "Name"),
            column("method", "Method"),
            column("params", "Parameters"),
            column("description", "Description"),
            column("created", "Created"),
        ],
        fetch_page,
        empty="No profiles yet. Create one with New profile; click a profile to edit it.",
    )
    table.table.props('data-testid="profiles-table"').classes("cursor-pointer")

    def edit(event) -> None:
        row = event.args[1] if isinstance(event.args, list) and len(event.args) > 1 else None
        if row is None:
            return
        profile = read(call(service.get_profile, row["id"]))
        current = ProfileOut.model_validate(profile).model_dump()
        with (
            ui.dialog() as dialog,
            ui.card().classes("w-full max-w-lg").props('data-testid="edit-profile"'),
        ):
            ui.label(f"Edit profile {current['name']}").classes("text-lg font-semibold")
            ui.label(f"Method: {current['method'] or 'any'}").classes("text-sm text-grey-8")
            new_name = (
                ui.input(
                    "Profile name",
                    value=current["name"],
                    validation={"1-100 characters": lambda v: 0 < len((v or "").strip()) <= 100},
                )
                .props("outlined dense")
                .classes("w-full")
            )
            new_params = (
                ui.textarea(
                    "Parameters (JSON object)",
                    value=_params_text(current["params"]),
                    validation={"A JSON object": is_json_object_or_empty},
                )
                .props("outlined autogrow")
                .classes("w-full font-mono")
            )
            new_description = (
                ui.input("Description", value=current["description"])
                .props("outlined dense")
                .classes("w-full")
            )

            async def save() -> None:
                if not (new_name.validate() and new_params.validate()):
                    return
                saved = await act(
                    lambda s, p: (
                        service.update_profile(
                            s,
                            p,
                            current["id"],
                            name=new_name.value.strip(),
                            params=_parse_params(new_params.value),
                            description=new_description.value or "",
                        ).id
                    ),
                    done="Profile saved",
                )
                if saved is not None:
                    dialog.close()
                    table.load()

            async def remove() -> None:
                await act(call(service.delete_profile, current["id"]), done="Profile deleted")
                dialog.close()
                table.load(1)

            with ui.row().classes("w-full justify-between gap-2 flex-wrap"):
                ui.button(
                    "Delete",
                    icon="delete",
                    on_click=lambda: confirm(
                        f"Delete profile {current['name']}?",
                        "Only the profile goes: trainings started with it keep their parameters "
                        "and models.",
                        "Delete profile",
                        remove,
                    ),
                ).props('flat color=negative no-caps data-testid="delete-profile"')
                with ui.row().classes("gap-2"):
                    ui.button("Close", on_click=dialog.close).props("flat no-caps")
                    ui.button("Save", on_click=save).props('no-caps data-testid="save-profile"')
        dialog.open()

    table.table.on("row-click", edit)
