"""The deployment environments page (/deploy-environments): the serving tools models are
handed to; testing them, and (for admins) adding, editing and deleting them."""

from __future__ import annotations

from typing import Any

from nicegui import ui

from tuneyard.console.session import act, call, current_principal
from tuneyard.console.shell import console_page
from tuneyard.console.widgets import (
    PagedTable,
    actions_slot,
    cannot,
    column,
    confirm_delete,
    heading,
    when,
)
from tuneyard.deploy import service

KIND_LABELS = {
    "ollama": "Ollama",
    "llama.cpp": "llama.cpp",
    "openai": "OpenAI-compatible server (vLLM, ...)",
}

KIND_HELP = {
    "ollama": "Ollama at an address, e.g. http://127.0.0.1:11434. Tuneyard uploads the model "
    "files and creates the model in Ollama; Ollama quantizes on request.",
    "llama.cpp": "Leave the URL empty and Tuneyard runs a llama.cpp server on this machine "
    "(managed here): it starts on the first deploy, serves every live model of this "
    "environment and is restarted if it dies. Give a URL to test a llama.cpp server you run "
    "yourself (it cannot take uploads).",
    "openai": "Any OpenAI-compatible server at an address, e.g. http://127.0.0.1:8000/v1. The "
    "server must already serve the model (started with its folder); adapters are loaded at "
    "runtime. It takes no quantization.",
}

URL_HINTS = {
    "ollama": "Required, e.g. http://127.0.0.1:11434",
    "llama.cpp": "Empty: managed here (Tuneyard runs the server)",
    "openai": "Required, e.g. http://127.0.0.1:8000/v1",
}

SOURCE_PAGES = {
    "base": "/base-models/{}",
    "customized": "/customized-models/{}",
    "complete": "/complete-models/{}",
}

NAME_RULES = {
    "Use only letters, digits, '.', '_' and '-' (at most 100 characters)": lambda value: bool(
        service.ENVIRONMENT_NAME.match((value or "").strip())
    )
}


ENVIRONMENT_COLUMNS = [
    column("name", "Name"),
    column("kind", "Kind"),
    column("where", "URL", wide_only=True),
    column("check", "Last test"),
    column("actions", "", field="id"),
]


def _environment_row(row) -> dict[str, Any]:
    data = service.environment_out(row)
    if data["managed"]:
        where = "managed here" + (f" (port {data['port']})" if data["port"] else "")
    else:
        where = data["url"]
    if data["last_checked_at"] is None:
        check = "not tested yet"
    elif data["last_check_error"]:
        check = f"failed {when(data['last_checked_at'])}: {data['last_check_error']}"
    else:
        check = f"answered {when(data['last_checked_at'])}"
    return {
        "id": data["id"],
        "name": data["name"],
        "kind": data["kind"],
        "where": where,
        "url": data["url"] or "",
        "managed": data["managed"],
        "has_api_key": data["has_api_key"],
        "description": data["description"],
        "check": check,
    }


@console_page("/deploy-environments", "Deployment Environments", "/deploy-environments")
def environments_page():
    heading(
        "Deployment environments",
        "The serving tools Tuneyard hands models to: Ollama, llama.cpp or an OpenAI-compatible "
        "server.",
    )
    principal = current_principal()
    admin = principal.allows("admin")
    result_box = ui.column().classes("w-full")
    table = PagedTable(
        ENVIRONMENT_COLUMNS,
        lambda session, principal, limit, offset: _environment_page(
            session, principal, limit, offset
        ),
        empty="No deployment environments yet. Add one below: a llama.cpp environment "
        "managed here needs nothing else.",
    )
    table.table.props('data-testid="environment-table"')
    buttons = [("Test", "probe", "primary", "")]
    if admin:
        buttons += [("Edit", "edit", "primary", ""), ("Delete", "drop", "negative", "")]
    table.table.add_slot("body-cell-actions", actions_slot(buttons))

    async def test(event) -> None:
        row = event.args
        result = await act(call(service.test_environment, row["id"]))
        if result is None:
            return
        table.load()
        result_box.clear()
        with result_box:
            color = "bg-green-1" if result["ok"] else "bg-red-1"
            with (
                ui.card()
                .classes(f"w-full {color}")
                .props('flat bordered data-testid="environment-test-result"')
            ):
                with ui.row().classes("items-center gap-2 flex-nowrap"):
                    ui.icon("check_circle" if result["ok"] else "error").classes(
                        "text-positive" if result["ok"] else "text-negative"
                    )
                    ui.label(f"{row['name']}: {result['detail']}").classes("wrap-anywhere")
                if result["models"]:
                    ui.label("Serves: " + ", ".join(result["models"])).classes("wrap-anywhere")
                elif result["ok"]:
                    ui.label("It serves no models yet.").classes("text-grey-8")

    table.table.on("probe", test)
    table.table.on("edit", lambda event: _edit_environment_dialog(event.args, table))
    table.table.on("drop", lambda event: _confirm_delete_environment(event.args, table))

    if admin:
        _environment_form(table)
    else:
        with ui.card().classes("w-full").props("flat bordered"):
            ui.label("Add a deployment environment").classes("text-lg font-semibold")
            cannot(f"Only admins add, edit or delete environments. {principal.refusal('admin')}")


def _environment_page(session, principal, limit: int, offset: int):
    rows, total = service.list_environments(session, principal, limit, offset)
    return [_environment_row(row) for row in rows], total


def _url_rules(kind: ui.select) -> dict:
    return {
        "Required for Ollama and OpenAI-compatible servers": lambda value: (
            kind.value == "llama.cpp" or bool((value or "").strip())
        ),
        "Start with http:// or https://": lambda value: (
            not (value or "").strip() or (value or "").strip().startswith(("http://", "https://"))
        ),
    }


def _environment_form(table: PagedTable) -> None:
    with ui.card().classes("w-full").props('flat bordered data-testid="environment-form"'):
        ui.label("Add a deployment environment").classes("text-lg font-semibold")
        with ui.element("div").classes("grid grid-cols-1 md:grid-cols-2 gap-3 w-full"):
            name = ui.input("Name", validation=NAME_RULES).props('data-testid="environment-name"')
            kind = ui.select(KIND_LABELS, label="Kind", value="llama.cpp").props(
                'data-testid="environment-kind"'
            )
            url = ui.input("URL", validation=_url_rules(kind)).props(
                f'hint="{URL_HINTS["llama.cpp"]}" data-testid="environment-url"'
            )
            port = ui.number(
                "Port (optional; default: a free one)", min=1, max=65535, precision=0
            ).props('data-testid="environment-port"')
            api_key = ui.input(
                "API key (optional)", password=True, password_toggle_button=True
            ).props('autocomplete=new-password data-testid="environment-api-key"')
            description = ui.input("Description (optional)")
        help_text = ui.label(KIND_HELP["llama.cpp"]).classes("text-sm text-grey-8")
        ui.label("The API key is sent as a bearer token, stored encrypted, never shown again.")

        def follow_kind() -> None:
            help_text.text = KIND_HELP[kind.value]
            managed = kind.value == "llama.cpp" and not (url.value or "").strip()
            port.set_visibility(managed)
            url.props(f'hint="{URL_HINTS[kind.value]}"')
            if (url.value or "").strip():
                url.validate()

        kind.on_value_change(follow_kind)
        url.on_value_change(follow_kind)

        async def create() -> None:
            valid = [name.validate(), url.validate()]
            if not all(valid):
                return
            address = (url.value or "").strip() or None
            chosen = {
                "name": name.value.strip(),
                "kind": kind.value,
                "url": address,
                "port": int(port.value) if port.value and address is None else None,
                "api_key": api_key.value or None,
                "description": (description.value or "").strip(),
            }
            created = await act(
                lambda session, principal: (
                    service.create_environment(session, principal, **chosen).name
                ),
                done=f"Added environment {chosen['name']}",
            )
            if created is None:
                return
            for field in (name, url, api_key, description):
                field.value = ""
                field.error = None
            port.value = None
            table.load(1)

        ui.button("Add environment", icon="add", on_click=create).props(
            'no-caps data-testid="environment-create"'
        )


def _edit_environment_dialog(row: dict[str, Any], table: PagedTable) -> None:
    with ui.dialog() as dialog, ui.card().classes("w-full max-w-md gap-2"):
        ui.label(f"Edit {row['name']}").classes("text-lg font-semibold wrap-anywhere")
        name = ui.input("Name", value=row["name"], validation=NAME_RULES).classes("w-full")
        if row["managed"]:
            url = None
            ui.label(
                "Managed here: Tuneyard runs this llama.cpp server, so it has no address to change."
            ).classes("text-sm text-grey-8")
        else:
            url = ui.input(
                "URL",
                value=row["url"],
                validation={
                    "Start with http:// or https://": lambda value: (
                        (value or "").strip().startswith(("http://", "https://"))
                    )
                },
            ).classes("w-full")
        api_key = remove_key = None
        if row["managed"]:
            ui.label(
                "Its server answers only Tuneyard: Tuneyard makes and keeps its API key."
            ).classes("text-sm text-grey-8")
        else:
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
            if row["has_api_key"]:
                remove_key = ui.checkbox("Remove the stored key")
        description = ui.input("Description", value=row["description"]).classes("w-full")

        async def save() -> None:
            if not name.validate() or (url is not None and not url.validate()):
                return
            changes: dict[str, Any] = {}
            if name.value.strip() != row["name"]:
                changes["name"] = name.value.strip()
            if url is not None and url.value.strip() != row["url"]:
                changes["url"] = url.value.strip()
            if api_key is not None and api_key.value:
                changes["api_key"] = api_key.value
            elif remove_key is not None and remove_key.value:
                changes["api_key"] = ""
            if (description.value or "") != row["description"]:
                changes["description"] = description.value or ""
            saved = await act(
                lambda session, principal: (
                    service.update_environment(session, principal, row["id"], **changes).id
                ),
                done="Saved",
            )
            if saved is not None:
                dialog.close()
                table.load()

        with ui.row().classes("w-full justify-end"):
            ui.button("Cancel", on_click=dialog.close).props("flat no-caps")
            ui.button("Save", on_click=save).props('no-caps data-testid="environment-save"')
    dialog.open()


def _confirm_delete_environment(row: dict[str, Any], table: PagedTable) -> None:
    managed = " The llama.cpp server Tuneyard runs for it is stopped." if row["managed"] else ""
    confirm_delete(
        f"Delete environment {row['name']}?",
        f"Tuneyard forgets this environment and its stored API key.{managed} The models you "
        "deployed from stay in Tuneyard. An environment that still has live models cannot be "
        "deleted: delete those live models first.",
        call(service.delete_environment, row["id"]),
        done=f"Deleted environment {row['name']}",
        then=lambda: table.load(1),
    )
