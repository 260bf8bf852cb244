"""What the DeepText pages share: the models one can chat with, their picker labels, the
mode tabs, and the guidance when there is no model yet."""

from __future__ import annotations

from nicegui import ui

from tuneyard.console.session import read
from tuneyard.console.widgets import needs

SECTION = "/deeptext"
# The order a picker lists models in: as the lifecycle makes them.
KIND_LABELS = {
    "base": "Base",
    "customized": "Customized",
    "complete": "Complete",
    "live": "Live",
    "third-party": "Third-party",
}


def chat_models(session, principal) -> list[dict[str, str]]:
    """Every model of the project that can answer a chat, in lifecycle order, as plain values."""
    from tuneyard.modelref import Capability, list_models

    return [
        {"ref": str(model.ref), "kind": model.kind.value, "name": model.name}
        for model in list_models(session, principal, Capability.CHAT)
    ]


def model_options(models: list[dict[str, str]]) -> dict[str, str]:
    """Picker options, labelled with their kind so the list reads grouped."""
    return {model["ref"]: f"{KIND_LABELS[model['kind']]}: {model['name']}" for model in models}


def canonical_ref(ref: str) -> str | None:
    """`ref` as the picker names it (kind:id), or None (with a notice) when it names nothing."""
    from tuneyard.chat.backends import resolve_model
    from tuneyard.errors import AppError

    try:
        return read(lambda session, principal: resolve_model(session, principal, ref).ref)
    except AppError as exc:
        ui.notify(exc.message, type="warning", multi_line=True, close_button=True)
        return None


def no_models_guidance() -> None:
    needs("Chat", [("a base model", "/base-models")])
    with ui.row().classes("items-center gap-x-3 gap-y-1 text-grey-8 flex-wrap"):
        ui.label("Or chat with a deployed or a hosted model:")
        ui.link("Live Models", "/live-models")
        ui.link("Third-party Models", "/third-party-models")
    ui.label("Models you train appear here as soon as their training ends.").classes("text-grey-8")


def mode_tabs(active: str) -> None:
    with ui.row().classes("gap-2"):
        for label, target in (("Chat", "/deeptext"), ("Side by side", "/deeptext/compare")):
            button = ui.button(label, on_click=lambda target=target: ui.navigate.to(target))
            button.props(
                f"no-caps {'unelevated' if label == active else 'outline'} "
                f'data-testid="mode-{label.lower().replace(" ", "-")}"'
            )
