"""What the DeepText pages share: the models one can chat with, their picker labels, the
mode tabs, and the guidance when there is no model yet."""

from __future__ import annotations

from nicegui import ui

from tuneyard.console.session import read
from tuneyard.console.widgets import needs

SECTION = "/deeptext"
MODEL_LIMIT = 500
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
    from tuneyard.basemodels.service import list_base_models
    from tuneyard.complete.service import list_complete
    from tuneyard.customized.service import list_customized
    from tuneyard.deploy.service import list_live
    from tuneyard.thirdparty.service import list_third_party

    found: list[tuple[str, str, str]] = []
    bases, _ = list_base_models(session, principal, limit=MODEL_LIMIT)
    found += [
        ("base", row.id, row.technical_name)
        for row in bases
        if row.status == "ready" and row.model_type == "chat"
    ]
    customized, _ = list_customized(session, principal, limit=MODEL_LIMIT)
    found += [("customized", row.id, row.name) for row in customized]
    complete, _ = list_complete(session, principal, limit=MODEL_LIMIT)
    found += [("complete", row.id, row.name) for row in complete if row.status == "ready"]
    live, _ = list_live(session, principal, status="live", limit=MODEL_LIMIT)
    found += [("live", row.id, row.name) for row in live]
    third_party, _ = list_third_party(session, principal, model_type="chat", limit=MODEL_LIMIT)
    found += [("third-party", row.id, row.name) for row in third_party]
    return [
        {"ref": f"{kind}:{model_id}", "kind": kind, "name": name} for kind, model_id, name in found
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
