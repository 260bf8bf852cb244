"""Console page for third-party models: external chat and embedding endpoints."""

from __future__ import annotations

from typing import Any

from nicegui import ui

from tuneyard.console.session import act, call, read
from tuneyard.console.shell import console_page
from tuneyard.console.widgets import (
    PagedTable,
    actions_slot,
    column,
    confirm_delete,
    fact,
    heading,
    when,
)
from tuneyard.errors import NotFound
from tuneyard.thirdparty import service
from tuneyard.thirdparty.schemas import MODEL_TYPES, PROVIDER_BASE_URLS, PROVIDERS

COLUMNS = [
    column("name", "Name"),
    column("provider", "Provider"),
    column("model_type", "Type", wide_only=True),
    column("model_name", "Model", wide_only=True),
    column("base_url", "Base URL", wide_only="gt-sm"),
    column("access", "Access", wide_only="gt-sm"),
    column("actions", "", field="id"),
]
NAME_RULES = {
    "Use only letters, digits and . _ : / - (at most 200 characters)": lambda value: bool(
        service.THIRD_PARTY_NAME.match((value or "").strip())
    )
}
MODEL_NAME_RULES = {
    "Required: the model id the endpoint expects, e.g. gpt-4o-mini": lambda value: bool(
        (value or "").strip()
    )
}
ACTIONS = [
    ("Test", "probe", "primary", ""),
    ("Edit", "edit", "primary", ""),
    ("Delete", "drop", "negative", ""),
    ("Chat", "chat", "primary", "props.row.model_type === 'chat'"),
]


def _row(row) -> dict[str, Any]:
    data = service.third_party_out(row)
    access = "private" if data["private"] else "shared"
    access += ", key stored" if data["has_api_key"] else ", no key"
    return {
        **{key: data[key] for key in ("id", "name", "provider", "model_type", "model_name")},
        "base_url": data["base_url"],
        "description": data["description"],
        "private": data["private"],
        "has_api_key": data["has_api_key"],
        "live_model_id": data["live_model_id"],
        "access": access,
        "updated": when(data["updated_at"]),
    }


def _url_hint(provider: str) -> str:
    default = PROVIDER_BASE_URLS.get(provider)
    if default:
        return f"Optional: empty means {default}"
    return "Required: the OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1"


def _url_rules(provider: ui.select) -> dict:
    return {
        "Required for openai-compatible (e.g. http://127.0.0.1:8000/v1)": lambda value: (
            bool((value or "").strip()) or PROVIDER_BASE_URLS.get(provider.value) is not None
        ),
        "Start with http:// or https://": lambda value: (
            not (value or "").strip() or (value or "").strip().startswith(("http://", "https://"))
        ),
    }


@console_page("/third-party-models", "Third-party Models", "/third-party-models")
def third_party_page(show: str = "", model_type: str = ""):
    heading(
        "Third-party models",
        "External chat and embedding endpoints (OpenAI, DeepSeek, DashScope, SiliconFlow, "
        "Ollama or any OpenAI-compatible server). Keys are stored encrypted and never shown.",
    )
    result_box = ui.column().classes("w-full")
    if show:
        _shown_entry(show, result_box)
    state = {"type": model_type if model_type in MODEL_TYPES else ""}
    type_filter = (
        ui.select(
            {"": "All types", **{value: value for value in MODEL_TYPES}},
            label="Type",
            value=state["type"],
        )
        .classes("w-full sm:w-56")
        .props('dense outlined data-testid="third-party-type-filter"')
    )

    def fetch(session, principal, limit, offset):
        rows, total = service.list_third_party(
            session, principal, state["type"] or None, limit, offset
        )
        return [_row(row) for row in rows], total

    table = PagedTable(
        COLUMNS,
        fetch,
        empty="No third-party models yet. Add one below, or register a live model from its page.",
    )
    table.table.props('data-testid="third-party-table"')
    table.table.add_slot("body-cell-actions", actions_slot(ACTIONS))

    def on_filter(event) -> None:
        state["type"] = event.value or ""
        table.load(1)

    type_filter.on_value_change(on_filter)

    async def test(event) -> None:
        await _test(event.args, result_box)

    table.table.on("probe", test)
    table.table.on("edit", lambda event: _edit_dialog(event.args, table))
    table.table.on("drop", lambda event: _confirm_delete(event.args, table))
    table.table.on(
        "chat", lambda event: ui.navigate.to(f"/deeptext?model=third-party:{event.args['id']}")
    )
    _create_form(table)


def _shown_entry(id_or_name: str, box: ui.column) -> None:
    """The entry a link pointed at (a live model's registration, say), above the list."""
    try:
        entry = read(
            lambda session, principal: _row(service.get_third_party(session, principal, id_or_name))
        )
    except NotFound as exc:
        with box:
            ui.label(exc.message).classes("text-negative")
        return
    with (
        box,
        ui.card().classes("w-full bg-blue-1").props('flat bordered data-testid="shown-entry"'),
    ):
        ui.label(entry["name"]).classes("text-lg font-semibold wrap-anywhere")
        with ui.element("div").classes("grid grid-cols-1 md:grid-cols-2 gap-3 w-full"):
            fact("Provider", entry["provider"])
            fact("Type", entry["model_type"])
            fact("Model", entry["model_name"])
            fact("Base URL", entry["base_url"])
            fact("Access", entry["access"])
            if entry["live_model_id"]:
                fact("Registered from", "its live model", f"/live-models/{entry['live_model_id']}")
        if entry["description"]:
            ui.label(entry["description"]).classes("text-grey-8")
        with ui.row().classes("gap-2"):

            async def test() -> None:
                await _test(entry, box)

            ui.button("Test connection", on_click=test).props("outline no-caps")
            if entry["model_type"] == "chat":
                ui.button(
                    "Chat",
                    on_click=lambda: ui.navigate.to(f"/deeptext?model=third-party:{entry['id']}"),
                ).props("outline no-caps")


async def _test(entry: dict[str, Any], box: ui.column) -> None:
    """A real request to the model; the answer (or why it failed) above the list."""
    notice = ui.notification(f"Testing {entry['name']}…", spinner=True, timeout=None)
    result = await act(call(service.test_third_party, entry["id"]))
    notice.dismiss()
    if result is None:
        return
    for child in list(box):
        if child.props.get("data-testid") == "third-party-test-result":
            child.delete()
    color = "bg-green-1" if result["ok"] else "bg-red-1"
    with (
        box,
        ui.card()
        .classes(f"w-full {color}")
        .props('flat bordered data-testid="third-party-test-result"'),
        ui.row().classes("items-center gap-2 flex-nowrap"),
    ):
        ui.icon("check_circle" if result["ok"] else "error").classes(
            "text-positive" if result["ok"] else "text-negative"
        )
        ui.label(f"{entry['name']}: {result['detail']}").classes("wrap-anywhere")


def _create_form(table: PagedTable) -> None:
    with ui.card().classes("w-full").props('flat bordered data-testid="third-party-form"'):
        ui.label("Add a third-party model").classes("text-lg font-semibold")
        with ui.element("div").classes("grid grid-cols-1 md:grid-cols-2 gap-3 w-full"):
            name = ui.input("Name", validation=NAME_RULES).props('data-testid="third-party-name"')
            provider = ui.select(list(PROVIDERS), label="Provider", value="openai").props(
                'data-testid="third-party-provider"'
            )
            model_type = ui.select(list(MODEL_TYPES), label="Model type", value="chat")
            model_name = ui.input("Model name", validation=MODEL_NAME_RULES).props(
                'data-testid="third-party-model-name"'
            )
            url = ui.input("Base URL", validation=_url_rules(provider)).props(
                f'hint="{_url_hint(provider.value)}" data-testid="third-party-url"'
            )
            api_key = ui.input("API key (optional)", password=True, password_toggle_button=True)
            api_key.props('autocomplete=new-password data-testid="third-party-api-key"')
            description = ui.input("Description (optional)")
            private = ui.checkbox("Private: only you see and use it")
        ui.label("The API key is stored encrypted and never shown again.").classes(
            "text-sm text-grey-8"
        )

        def follow_provider() -> None:
            url.props(f'hint="{_url_hint(provider.value)}"')
            if (url.value or "").strip() or url.error:
                url.validate()

        provider.on_value_change(follow_provider)

        async def create() -> None:
            valid = [name.validate(), model_name.validate(), url.validate()]
            if not all(valid):
                return
            chosen = {
                "name": name.value.strip(),
                "provider": provider.value,
                "model_type": model_type.value,
                "model_name": model_name.value.strip(),
                "base_url": (url.value or "").strip() or None,
                "api_key": api_key.value or None,
                "description": (description.value or "").strip(),
                "private": bool(private.value),
            }
            created = await act(
                lambda session, principal: (
                    service.create_third_party(session, principal, **chosen).name
                ),
                done=f"Added {chosen['name']}",
            )
            if created is None:
                return
            for field in (name, model_name, url, api_key, description):
                field.value = ""
                field.error = None
            table.load(1)

        ui.button("Add third-party model", icon="add", on_click=create).props(
            'no-caps data-testid="third-party-create"'
        )


def _edit_dialog(row: dict[str, Any], table: PagedTable) -> None:
    with ui.dialog() as dialog, ui.card().classes("w-full max-w-md gap-2"):
        ui.label(f"Edit {row['name']}").classes("text-lg font-semibold wrap-anywhere")
        name = ui.input("Name", value=row["name"], validation=NAME_RULES).classes("w-full")
        provider = ui.select(list(PROVIDERS), label="Provider", value=row["provider"]).classes(
            "w-full"
        )
        model_type = ui.select(list(MODEL_TYPES), label="Model type", value=row["model_type"])
        model_type.classes("w-full")
        model_name = ui.input(
            "Model name", value=row["model_name"], validation=MODEL_NAME_RULES
        ).classes("w-full")
        url = ui.input("Base URL", value=row["base_url"], validation=_url_rules(provider))
        url.classes("w-full")
        ui.label("Empty: the provider's default URL.").classes("text-sm text-grey-8")
        api_key = (
            ui.input("New API key", password=True, password_toggle_button=True)
            .classes("w-full")
            .props("autocomplete=new-password")
        )
        ui.label(
            "A key is stored; leave this empty to keep it."
            if row["has_api_key"]
            else "No key is stored."
        ).classes("text-sm text-grey-8")
        remove_key = ui.checkbox("Remove the stored key") if row["has_api_key"] else None
        description = ui.input("Description", value=row["description"]).classes("w-full")
        private = ui.checkbox("Private: only you see and use it", value=row["private"])

        async def save() -> None:
            if not all([name.validate(), model_name.validate(), url.validate()]):
                return
            changes: dict[str, Any] = {}
            for key, field in (
                ("name", name),
                ("provider", provider),
                ("model_type", model_type),
                ("model_name", model_name),
                ("description", description),
            ):
                value = field.value.strip() if isinstance(field.value, str) else field.value
                if value != row[key]:
                    changes[key] = value
            new_url = (url.value or "").strip()
            if new_url != row["base_url"]:
                changes["base_url"] = new_url
            if api_key.value:
                changes["api_key"] = api_key.value
            elif remove_key is not None and remove_key.value:
                changes["api_key"] = ""
            if bool(private.value) != row["private"]:
                changes["private"] = bool(private.value)
            saved = await act(
                lambda session, principal: (
                    service.update_third_party(session, principal, row["id"], **changes).id
                ),
                done="Saved",
            )
            if saved is not None:
                dialog.close()
                table.load()

        with ui.row().classes("w-full justify-end"):
            ui.button("Cancel", on_click=dialog.close).props("flat no-caps")
            ui.button("Save", on_click=save).props('no-caps data-testid="third-party-save"')
    dialog.open()


def _confirm_delete(row: dict[str, Any], table: PagedTable) -> None:
    kept = (
        " The live model it was registered from stays deployed."
        if row["live_model_id"]
        else " The model itself, at its provider, is not touched."
    )
    confirm_delete(
        f"Delete third-party model {row['name']}?",
        f"Tuneyard forgets this entry and its stored API key.{kept} Chat sessions that used it "
        "stay in the history.",
        call(service.delete_third_party, row["id"]),
        done=f"Deleted {row['name']}",
        then=lambda: table.load(1),
    )
