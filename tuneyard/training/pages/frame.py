"""What the training pages share: their tab row, whether training can run on this server, the
inputs a training starts from and the guidance when one is missing, the methods offered."""

from __future__ import annotations

from typing import Any

from nicegui import ui

from tuneyard.console.shell import TRAINING_TABS
from tuneyard.console.widgets import needs
from tuneyard.errors import AppError
from tuneyard.training import custom, service
from tuneyard.training.schemas import MethodOut

SECTION = "/trainings"
ACTIVE = service.ACTIVE
# Enough for any project's pickers; the API pages these too, at most 500 a page.
PICK_LIMIT = 500


def training_tabs(active: str) -> None:
    """The small tab row every training page starts with."""
    with ui.row().classes("w-full gap-1 flex-wrap border-b").props('data-testid="training-tabs"'):
        for label, target in TRAINING_TABS:
            selected = target == active
            ui.link(label, target).classes(
                "px-3 py-1 no-underline rounded-t "
                + ("bg-primary text-white" if selected else "text-primary hover:bg-grey-3")
            )


def training_unavailable() -> str | None:
    """Why no training can run on this server, or None when it can."""
    try:
        service.ensure_training_available()
    except AppError as exc:
        return exc.message
    return None


def ready_inputs(session, principal) -> dict[str, list[dict[str, Any]]]:
    """The base models and datasets a training can start from (ready ones only)."""
    from tuneyard.basemodels.service import list_base_models
    from tuneyard.datasets.service import list_datasets

    bases, _ = list_base_models(session, principal, PICK_LIMIT, 0)
    datasets, _ = list_datasets(session, principal, PICK_LIMIT, 0)
    return {
        "bases": [
            {"id": b.id, "name": b.technical_name}
            for b in bases
            if b.status == "ready" and b.model_type == "chat"
        ],
        "datasets": [
            {"id": d.id, "name": d.name, "format": d.format, "records": d.record_count}
            for d in datasets
            if d.status == "ready"
        ],
    }


def lifecycle_needs(inputs: dict[str, list]) -> bool:
    """Show what a training needs first; True when it has everything."""
    missing = []
    if not inputs["bases"]:
        missing.append(("a base model", "/base-models"))
    if not inputs["datasets"]:
        missing.append(("a dataset", "/datasets"))
    needs("A training", missing)
    return not missing


def method_views(session, principal) -> list[dict[str, Any]]:
    """The methods this project can train with, built-in and uploaded, as plain values."""
    return [MethodOut.of(m).model_dump() for m in custom.list_methods(session, principal)]
