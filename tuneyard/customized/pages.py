"""Console pages for customized models: the list, and each model's card, lineage and actions."""

from __future__ import annotations

from typing import Any

from nicegui import ui

from tuneyard.complete import service as complete_service
from tuneyard.console.deploy_dialog import deploy_button
from tuneyard.console.jobs import JobWatch
from tuneyard.console.session import act, call, read
from tuneyard.console.shell import console_page
from tuneyard.console.widgets import (
    PagedTable,
    cannot,
    column,
    confirm_delete,
    delete_button,
    fact,
    heading,
    link_button,
    model_card,
    size_text,
    status_badge,
    when,
)
from tuneyard.customized import service

COLUMNS = [
    column("name", "Name"),
    column("base_model", "Base model"),
    column("training", "Training", wide_only=True),
    column("method", "Method", wide_only=True),
    column("created", "Created", wide_only="gt-sm"),
]
DTYPE_LABELS = {
    "bf16": "bf16 (half the size of fp32; the usual choice)",
    "fp16": "fp16 (half size; for tools without bf16)",
    "fp32": "fp32 (full precision, twice the size)",
}


def _list_page(session, principal, limit: int, offset: int):
    rows, total = service.list_customized(session, principal, None, limit, offset)
    summaries = [service.summary(row) for row in rows]
    return [
        {
            "id": item["id"],
            "name": item["name"],
            "base_model": item["base_model_name"] or "",
            "training": item["train_name"]
            + (f" (step {item['checkpoint_step']})" if item["checkpoint_step"] else ""),
            "method": item["method"] or "",
            "created": when(item["created_at"]),
        }
        for item in summaries
    ], total


@console_page("/customized-models", "Customized Models", "/customized-models")
def customized_models_page():
    heading(
        "Customized models",
        "Adapters a training made, tied to their base model. Save one as a complete model, "
        "deploy it, or chat with it.",
    )
    table = PagedTable(
        COLUMNS,
        _list_page,
        link=lambda row: f"/customized-models/{row['id']}",
        empty="No customized models yet. A finished training makes one: start a training.",
    )
    table.table.props('data-testid="customized-table"')
    with ui.row().classes("gap-2"):
        ui.link("Start a training", "/trainings/new")
        ui.link("See trainings", "/trainings")


def _detail(session, principal, model_id: str) -> dict[str, Any]:
    row = service.get_customized(session, principal, model_id)
    card = row.model_card or {}
    lineage = card.get("lineage", {})
    saved, saved_total = complete_service.list_complete(session, principal, row.id, 20, 0)
    return {
        "id": row.id,
        "name": row.name,
        "base_model_id": row.base_model_id,
        "base_model_name": lineage.get("base_model"),
        "training_id": row.training_id,
        "train_name": row.train_name,
        "checkpoint_step": row.checkpoint_step,
        "dataset": lineage.get("dataset"),
        "method": card.get("training", {}).get("method"),
        "path": row.path,
        "size_bytes": row.size_bytes,
        "created_at": row.created_at,
        "model_card": card,
        "saved": [
            {"id": item.id, "name": item.name, "status": item.status, "dtype": item.dtype}
            for item in saved
        ],
        "saved_total": saved_total,
    }


@console_page("/customized-models/{model_id}", "Customized Model", "/customized-models")
def customized_model_page(model_id: str):
    model = read(lambda session, principal: _detail(session, principal, model_id))
    model_id = model["id"]
    ui.label(model["name"]).classes("text-2xl font-semibold wrap-anywhere")
    ui.label("A LoRA adapter on its base model.").classes("text-grey-8 -mt-3")

    with ui.card().classes("w-full").props('flat bordered data-testid="lineage"'):
        ui.label("Lineage").classes("text-lg font-semibold")
        with ui.element("div").classes("grid grid-cols-1 md:grid-cols-2 gap-3 w-full"):
            if model["base_model_id"]:
                fact(
                    "Base model",
                    model["base_model_name"] or model["base_model_id"],
                    f"/base-models/{model['base_model_id']}",
                )
            else:
                fact("Base model", f"{model['base_model_name'] or 'unknown'} (deleted)")
            training = model["train_name"] + (
                f", checkpoint at step {model['checkpoint_step']}"
                if model["checkpoint_step"]
                else ""
            )
            if model["training_id"]:
                fact("Training", training, f"/trainings/{model['training_id']}")
            else:
                fact("Training", f"{training} (deleted)")
            fact("Dataset", model["dataset"])
            fact("Method", model["method"])
            fact("Adapter size", size_text(model["size_bytes"]))
            fact("Created", when(model["created_at"]))
            fact("Adapter folder (on the server)", model["path"])
        link_button(
            "Download the adapter (tar)",
            f"/download/customized-models/{model_id}",
            icon="download",
            testid="download",
        )
        if model["saved"]:
            ui.label(f"Saved as complete models ({model['saved_total']})").classes(
                "font-medium mt-2"
            )
            with ui.column().classes("gap-1"):
                for item in model["saved"]:
                    with ui.row().classes("items-center gap-2 flex-wrap"):
                        ui.link(item["name"], f"/complete-models/{item['id']}").classes(
                            "wrap-anywhere"
                        )
                        status_badge(item["status"])
                        ui.label(item["dtype"]).classes("text-grey-7 text-sm")

    with ui.card().classes("w-full").props('flat bordered data-testid="customized-actions"'):
        ui.label("Actions").classes("text-lg font-semibold")
        ui.label(
            "Save merges the adapter into its base as a standalone complete model (no "
            "quantization: choose one when you deploy)."
        ).classes("text-sm text-grey-8")
        with ui.row().classes("items-center gap-2 flex-wrap w-full"):
            dtype = (
                ui.select(DTYPE_LABELS, label="Save as", value="bf16")
                .classes("w-full sm:w-72")
                .props('dense outlined data-testid="save-dtype"')
            )
            save_button = ui.button("Save as complete model", icon="save").props(
                'no-caps data-testid="save"'
            )
        if not model["base_model_id"]:
            cannot(
                "Saving and deploying need the base model, which was deleted; a complete model "
                "saved from this adapter earlier still works."
            )
        save_box = ui.column().classes("w-full gap-1").props('data-testid="save-progress"')

        async def save() -> None:
            started = await act(
                lambda session, principal: _started_save(session, principal, model_id, dtype.value)
            )
            if started is None:
                return
            save_box.clear()
            with save_box:
                ui.label(f"Saving {started['name']} ({dtype.value})").classes(
                    "font-medium wrap-anywhere"
                )
                result = ui.row().classes("items-center gap-2")

                def finished(job) -> None:
                    with result:
                        text = (
                            f"Open complete model {started['name']}"
                            if job.status == "succeeded"
                            else f"See complete model {started['name']} ({job.status})"
                        )
                        ui.link(text, f"/complete-models/{started['id']}").classes(
                            "wrap-anywhere"
                        ).props('data-testid="saved-link"')

                JobWatch(started["job_id"], on_finish=finished)

        save_button.on_click(save)
        with ui.row().classes("items-center gap-2 flex-wrap"):
            deploy_button("customized", model_id, model["name"])
            link_button("Chat", f"/deeptext?model=customized:{model_id}", testid="chat")
            delete_button(lambda: _confirm_delete(model))

    model_card(model["model_card"])


def _started_save(session, principal, model_id: str, dtype: str) -> dict[str, str]:
    row = complete_service.start_save(session, principal, model_id, dtype)
    assert row.job_id is not None, "a save is queued as a job"
    return {"id": row.id, "name": row.name, "job_id": row.job_id}


def _confirm_delete(model: dict[str, Any]) -> None:
    confirm_delete(
        f"Delete customized model {model['name']}?",
        f"This deletes its adapter ({size_text(model['size_bytes'])}). Complete models saved "
        "from it stay and still load; live models deployed from it stay on their serving tools. "
        "Its training and its base model stay too.",
        call(service.delete_customized, model["id"]),
        done=f"Deleted {model['name']}",
        then=lambda: ui.navigate.to("/customized-models"),
    )
