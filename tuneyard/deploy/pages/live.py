"""The live model pages (/live-models and /live-models/{id}): what is served where, health,
registering as a third-party model, deleting."""

from __future__ import annotations

import json
from typing import Any

from nicegui import ui

from tuneyard.assessment import fidelity
from tuneyard.console.jobs import job_card
from tuneyard.console.session import act, call, read
from tuneyard.console.shell import console_page
from tuneyard.console.widgets import (
    PagedTable,
    cannot,
    column,
    confirm_delete,
    delete_button,
    fact,
    failure_card,
    heading,
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

SOURCE_PAGES = {
    "base": "/base-models/{}",
    "customized": "/customized-models/{}",
    "complete": "/complete-models/{}",
}

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
        "fidelity": fidelity.live_fidelity(session, principal, row.id),
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
        figure = live["fidelity"]
        fact(
            "Fidelity to its source",
            figure["text"] if figure else "not checked",
            f"/assessments/{figure['assessment_id']}" if figure else None,
            testid="live-fidelity",
        )
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
