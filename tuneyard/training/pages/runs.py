"""The training runs page (/trainings): the project's runs, filtered by status, kept current."""

from __future__ import annotations

from typing import Any

from nicegui import ui

from tuneyard.console.session import read
from tuneyard.console.shell import console_page
from tuneyard.console.widgets import PagedTable, cannot, column, heading, when
from tuneyard.training import service
from tuneyard.training.pages.frame import (
    ACTIVE,
    SECTION,
    lifecycle_needs,
    ready_inputs,
    training_tabs,
    training_unavailable,
)

STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
LIST_REFRESH_SECONDS = 3.0
EMPTY_RUNS = "No trainings yet. Start one with New training."


def _training_row(training) -> dict[str, Any]:
    return {
        "id": training.id,
        "name": training.name,
        "method": training.method,
        "base_model": training.base_model_name,
        "dataset": training.dataset_name,
        "status": training.status,
        "progress": f"{training.progress:.0f}%",
        "created": when(training.created_at),
    }


@console_page("/trainings", "Training", SECTION)
def trainings_page():
    training_tabs("/trainings")
    inputs = read(ready_inputs)
    unavailable = training_unavailable()
    with ui.row().classes("w-full items-center justify-between gap-2"):
        with ui.column().classes("gap-3"):
            heading("Trainings", "Fine-tune a base model on a dataset; each run makes a model.")
        new_button = ui.button(
            "New training", icon="add", on_click=lambda: ui.navigate.to("/trainings/new")
        ).props('no-caps data-testid="new-training"')
    ready = lifecycle_needs(inputs)
    if unavailable:
        cannot(unavailable)
    if unavailable or not ready:
        new_button.disable()

    state = {"status": None}
    with ui.row().classes("w-full items-center gap-2"):
        status_filter = (
            ui.select(
                {"": "Every status", **{s: s for s in STATUSES}},
                value="",
                label="Status",
            )
            .props('dense outlined data-testid="status-filter"')
            .classes("w-48")
        )

    def fetch_page(session, principal, limit, offset):
        items, total = service.list_trainings(session, principal, state["status"], limit, offset)
        return [_training_row(t) for t in items], total

    table = PagedTable(
        [
            column("name", "Name"),
            column("method", "Method"),
            column("base_model", "Base model"),
            column("dataset", "Dataset"),
            column("status", "Status"),
            column("progress", "Progress"),
            column("created", "Created"),
        ],
        fetch_page,
        link=lambda row: f"/trainings/{row['id']}",
        empty=EMPTY_RUNS,
    )
    table.table.props('data-testid="trainings-table"')

    def filter_changed() -> None:
        state["status"] = status_filter.value or None
        empty = f"No {state['status']} trainings." if state["status"] else EMPTY_RUNS
        table.table.props(f'no-data-label="{empty}"')
        table.load(1)

    status_filter.on_value_change(filter_changed)

    def refresh_active() -> None:
        # Progress moves while a run is active; a finished list needs no polling.
        if any(row["status"] in ACTIVE for row in table.table.rows):
            table.load()

    ui.timer(LIST_REFRESH_SECONDS, refresh_active)
