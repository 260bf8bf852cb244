"""The deploy dialog: hand a base, customized or complete model to a deployment environment.
Every model page with a Deploy action opens it."""

from __future__ import annotations

import json

from nicegui import ui

from tuneyard.console.schema_form import is_json_object_or_empty
from tuneyard.console.session import act, read
from tuneyard.console.widgets import cannot
from tuneyard.deploy import service
from tuneyard.deploy.quantization import BY_NAME, NO_QUANTIZATION

QUANTIZATION_LABELS = {q.name: f"{q.name}: {q.description}" for q in BY_NAME.values()}


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
            ui.select(QUANTIZATION_LABELS, label="Quantization", value=NO_QUANTIZATION)
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
                    'Write a JSON object, e.g. {"temperature": 0.7}': is_json_object_or_empty
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
