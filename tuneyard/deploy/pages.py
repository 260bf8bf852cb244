"""Console pages for deployment environments and live models, and the shared deploy dialog."""

from __future__ import annotations

import json
from typing import Any

from nicegui import ui

from tuneyard.console.session import act, call, current_principal, read
from tuneyard.console.shell import console_page
from tuneyard.console.widgets import (
    PagedTable,
    actions_slot,
    cannot,
    column,
    confirm_delete,
    delete_button,
    fact,
    failure_card,
    heading,
    job_card,
    link_button,
    model_card,
    needs,
    set_status,
    size_text,
    status_badge,
    when,
)
from tuneyard.deploy import service
from tuneyard.thirdparty.service import THIRD_PARTY_NAME

QUANTIZATION_LABELS = {
    "no_quantization": "no_quantization: the weights as saved (largest, most faithful)",
    "q8_0": "q8_0: 8-bit, about half the size, nearly lossless",
    "q4_K_M": "q4_K_M: 4-bit medium, about a quarter the size, a good default",
    "q4_K_S": "q4_K_S: 4-bit small, the smallest, a little less accurate",
}

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


def _is_json_object_or_empty(text: str | None) -> bool:
    if not (text or "").strip():
        return True
    try:
        return isinstance(json.loads(text), dict)
    except ValueError:
        return False


# -- the deploy dialog, opened from base, customized and complete model pages -----------------


def _environment_choices(session, principal) -> dict[str, str]:
    rows, _ = service.list_environments(session, principal, 500, 0)
    return {
        row.id: f"{row.name} ({row.kind}{', managed here' if service.is_managed(row) else ''})"
        for row in rows
    }


def open_deploy_dialog(kind: str, model_id: str, model_name: str) -> None:
    """Deploy a base, customized or complete model; on success, open its live model's page."""
    environments = read(_environment_choices)
    with (
        ui.dialog() as dialog,
        ui.card().classes("w-full max-w-lg gap-2").props('data-testid="deploy-dialog"'),
    ):
        ui.label(f"Deploy {model_name}").classes("text-lg font-semibold wrap-anywhere")
        if not environments:
            cannot("No deployment environment yet")
            ui.label(
                "A deploy hands the model to a serving tool (Ollama, llama.cpp or an "
                "OpenAI-compatible server); an admin adds one first."
            ).classes("text-grey-8")
            with ui.row().classes("w-full justify-between items-center"):
                ui.link("Add a deployment environment", "/deploy-environments")
                ui.button("Close", on_click=dialog.close).props("flat no-caps")
            dialog.open()
            return
        environment = (
            ui.select(environments, label="Deployment environment", value=next(iter(environments)))
            .classes("w-full")
            .props('data-testid="deploy-environment"')
        )
        quantization = (
            ui.select(QUANTIZATION_LABELS, label="Quantization", value="no_quantization")
            .classes("w-full")
            .props('data-testid="deploy-quantization"')
        )
        ui.label(
            "Quantization stores the weights with fewer bits: smaller and faster, slightly "
            "less accurate. OpenAI-compatible servers serve the model as started, so they "
            "take no_quantization only."
        ).classes("text-sm text-grey-8")
        system = ui.textarea("System prompt (optional)").classes("w-full").props("autogrow")
        parameters = (
            ui.textarea(
                "Serving parameters, JSON (optional)",
                placeholder='{"temperature": 0.7, "num_ctx": 4096}',
                validation={
                    'Write a JSON object, e.g. {"temperature": 0.7}': _is_json_object_or_empty
                },
            )
            .classes("w-full")
            .props("autogrow")
        )
        allow_mismatch = ui.checkbox("Allow template mismatch").props(
            'data-testid="deploy-allow-mismatch"'
        )
        ui.label(
            "Before anything is uploaded, Tuneyard checks that the serving tool's prompt "
            "template renders the same prompt as the chat template the model was trained with. "
            "A mismatch is refused unless you allow it; the model card then keeps both "
            "renderings, and answers may be worse."
        ).classes("text-sm text-grey-8")

        async def deploy() -> None:
            if not parameters.validate():
                return
            text = (parameters.value or "").strip()
            chosen = {
                "environment_id": environment.value,
                "quantization": quantization.value,
                "system": (system.value or "").strip() or None,
                "parameters": json.loads(text) if text else None,
                "allow_template_mismatch": bool(allow_mismatch.value),
            }
            live_id = await act(
                lambda session, principal: (
                    service.start_deploy(session, principal, kind, model_id, **chosen).id
                )
            )
            if live_id:
                dialog.close()
                ui.navigate.to(f"/live-models/{live_id}")

        with ui.row().classes("w-full justify-end"):
            ui.button("Cancel", on_click=dialog.close).props("flat no-caps")
            ui.button("Deploy", icon="rocket_launch", on_click=deploy).props(
                'no-caps data-testid="deploy-submit"'
            )
    dialog.open()


def deploy_button(kind: str, model_id: str, model_name: str) -> None:
    """The Deploy action of a base, customized or complete model's page: opens the dialog."""
    ui.button(
        "Deploy",
        icon="rocket_launch",
        on_click=lambda: open_deploy_dialog(kind, model_id, model_name),
    ).props('outline no-caps data-testid="deploy"')


# -- live models ----------------------------------------------------------------------------

LIVE_COLUMNS = [
    column("name", "Name"),
    column("environment", "Environment"),
    column("source", "Source", wide_only=True),
    column("quantization", "Quantization", wide_only=True),
    column("status", "Status"),
    column("created", "Created", wide_only="gt-sm"),
]


def _live_row(summary: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": summary["id"],
        "name": summary["name"],
        "environment": summary["environment_name"] or "(deleted)",
        "source": f"{summary['source_kind']}: {summary['source_name']}",
        "quantization": summary["quantization"],
        "status": summary["status"],
        "created": when(summary["created_at"]),
    }


def _has_environment(session, principal) -> bool:
    return service.list_environments(session, principal, 1, 0)[1] > 0


@console_page("/live-models", "Live Models", "/live-models")
def live_models_page(status: str = ""):
    heading(
        "Live models",
        "Models handed to a serving tool; each answers at an OpenAI-compatible endpoint.",
    )
    if not read(_has_environment):
        needs("Deploying a model", [("a deployment environment", "/deploy-environments")])
    state = {"status": status if status in service.LIVE_STATUSES else ""}
    choices = {"": "All statuses", **{value: value for value in service.LIVE_STATUSES}}
    status_filter = (
        ui.select(choices, label="Status", value=state["status"])
        .classes("w-full sm:w-56")
        .props('dense outlined data-testid="live-status-filter"')
    )

    def fetch(session, principal, limit, offset):
        rows, total = service.list_live(
            session, principal, None, state["status"] or None, limit, offset
        )
        return [_live_row(service.live_summary(session, row)) for row in rows], total

    table = PagedTable(
        LIVE_COLUMNS,
        fetch,
        link=lambda row: f"/live-models/{row['id']}",
        empty="No live models here. Deploy a base, customized or complete model from its page.",
    )
    table.table.props('data-testid="live-table"')

    def on_filter(event) -> None:
        state["status"] = event.value or ""
        table.load(1)

    status_filter.on_value_change(on_filter)


def _live_detail(session, principal, live_id: str) -> dict[str, Any]:
    row = service.get_live(session, principal, live_id)
    return {
        **service.live_summary(session, row),
        "tag": row.tag,
        "environment_id": row.environment_id,
        "source_id": row.source_id,
        "error": row.error,
        "job_id": row.job_id,
        "system": row.system,
        "parameters": row.parameters,
        "model_card": row.model_card,
        "last_checked_at": row.last_checked_at,
    }


@console_page("/live-models/{live_id}", "Live Model", "/live-models")
def live_model_page(live_id: str):
    live = read(lambda session, principal: _live_detail(session, principal, live_id))
    live_id = live["id"]
    ui.label(live["name"]).classes("text-2xl font-semibold wrap-anywhere")
    with ui.row().classes("items-center gap-2 flex-wrap"):
        badge = status_badge(live["status"]).props('data-testid="live-status"')
        ui.label(
            f"{live['source_kind']} model {live['source_name']} on "
            f"{live['environment_name'] or '(deleted environment)'}"
        ).classes("text-grey-8 wrap-anywhere")

    if live["status"] == "deploying" and live["job_id"]:
        job_card("Deploying", live["job_id"], bordered=True)
    if live["status"] == "failed":
        failure_card("The deploy failed", live["error"], "live-error")

    with (
        ui.card().classes("w-full").props("flat bordered"),
        ui.element("div").classes("grid grid-cols-1 md:grid-cols-2 gap-3 w-full"),
    ):
        fact("Endpoint URL (OpenAI-compatible)", live["endpoint_url"], testid="live-endpoint")
        fact("Model id", live["model_id"], testid="live-model-id")
        fact("Name in the serving tool", live["tag"])
        fact(
            "Environment",
            f"{live['environment_name']} ({live['environment_kind']})",
            "/deploy-environments",
        )
        fact(
            "Deployed from",
            f"{live['source_kind']} model {live['source_name']}",
            SOURCE_PAGES[live["source_kind"]].format(live["source_id"]),
        )
        fact("Quantization", live["quantization"])
        fact("Size", size_text(live["size_bytes"]) or "—")
        fact("Template parity", live["template_parity"] or "—")
        fact("Created", when(live["created_at"]))
        fact("Last health check", when(live["last_checked_at"]) or "never")

    with ui.card().classes("w-full").props('flat bordered data-testid="live-actions"'):
        ui.label("Actions").classes("text-lg font-semibold")
        check_result = (
            ui.label("")
            .classes("whitespace-pre-wrap wrap-anywhere")
            .props('data-testid="live-check-result"')
        )
        check_result.set_visibility(False)
        registered = ui.row().classes("items-center gap-2")

        async def check() -> None:
            result = await act(call(service.check_live, live_id))
            if result is None:
                return
            set_status(badge, result["status"])
            verdict = "Healthy" if result["ok"] else "Not answering"
            check_result.text = f"{verdict} ({result['status']}): {result['detail']}"
            check_result.classes(
                replace="whitespace-pre-wrap wrap-anywhere "
                + ("text-positive" if result["ok"] else "text-negative")
            )
            check_result.set_visibility(True)

        with ui.row().classes("items-center gap-2 flex-wrap"):
            ui.button("Check health", icon="monitor_heart", on_click=check).props(
                'outline no-caps data-testid="live-check"'
            )
            if live["status"] == "live":
                ui.button(
                    "Register as third-party model",
                    icon="hub",
                    on_click=lambda: _register_dialog(live, registered),
                ).props('outline no-caps data-testid="live-register"')
                link_button("Chat", f"/deeptext?model=live:{live_id}", testid="live-chat")
            delete_button(lambda: _confirm_delete_live(live), "live-delete")
        if live["status"] != "live":
            cannot(
                f"Chat and registering as a third-party model need the model live; it is "
                f"{live['status']}."
                + (
                    " Check health to see whether it answers again."
                    if live["status"] == "stopped"
                    else ""
                )
            )

    if live["system"] or live["parameters"]:
        with ui.card().classes("w-full").props("flat bordered"):
            ui.label("Serving settings").classes("font-semibold")
            if live["system"]:
                fact("System prompt", live["system"])
            if live["parameters"]:
                fact("Parameters", json.dumps(live["parameters"]))
    model_card(live["model_card"])


def _register_dialog(live: dict[str, Any], registered: ui.row) -> None:
    with ui.dialog() as dialog, ui.card().classes("w-full max-w-md gap-2"):
        ui.label("Register as a third-party model").classes("text-lg font-semibold")
        ui.label(
            "A third-party model entry points at this endpoint, so DeepText and any OpenAI "
            "client can use it by name."
        ).classes("text-grey-8 text-sm")
        name = (
            ui.input(
                "Name",
                value=live["name"],
                validation={
                    "Use letters, digits and . _ : / - (at most 200 characters)": lambda value: (
                        bool(THIRD_PARTY_NAME.match((value or "").strip()))
                    )
                },
            )
            .classes("w-full")
            .props('data-testid="register-name"')
        )
        description = ui.input("Description (optional)").classes("w-full")
        private = ui.checkbox("Private: only you see and use it")

        async def register() -> None:
            if not name.validate():
                return
            entry = await act(
                lambda session, principal: _registered(
                    service.register_live(
                        session,
                        principal,
                        live["id"],
                        name.value.strip(),
                        (description.value or "").strip() or None,
                        bool(private.value),
                    )
                ),
                done="Registered",
            )
            if entry is None:
                return
            dialog.close()
            registered.clear()
            with registered:
                ui.icon("check_circle").classes("text-positive")
                ui.link(
                    f"Open third-party model {entry['name']}",
                    f"/third-party-models?show={entry['id']}",
                ).props('data-testid="registered-link"')

        with ui.row().classes("w-full justify-end"):
            ui.button("Cancel", on_click=dialog.close).props("flat no-caps")
            ui.button("Register", on_click=register).props('no-caps data-testid="register-submit"')
    dialog.open()


def _registered(entry) -> dict[str, str]:
    return {"id": entry.id, "name": entry.name}


def _confirm_delete_live(live: dict[str, Any]) -> None:
    confirm_delete(
        f"Delete live model {live['name']}?",
        f"It is removed from {live['environment_name']} (the serving tool stops serving it) "
        f"and its files here are deleted. The {live['source_kind']} model "
        f"{live['source_name']} it was deployed from stays, and third-party model entries "
        "registered from it stay (they stop answering until it is deployed again).",
        call(service.delete_live, live["id"]),
        done=f"Deleted {live['name']}",
        then=lambda: ui.navigate.to("/live-models"),
    )


# -- deployment environments ----------------------------------------------------------------

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
