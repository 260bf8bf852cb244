"""Console pages for complete models: the list, and each model's status, card and actions."""

from __future__ import annotations

import re
from typing import Any

from nicegui import ui

from tuneyard.complete import service
from tuneyard.console.deploy_dialog import deploy_button
from tuneyard.console.jobs import JobWatch, job_card
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
    size_text,
    status_badge,
    when,
)
from tuneyard.errors import NotFound

COLUMNS = [
    column("name", "Name"),
    column("status", "Status"),
    column("dtype", "Dtype", wide_only=True),
    column("size", "Size"),
    column("created", "Created", wide_only="gt-sm"),
]
# Hub repository ids: owner/name (the service checks the details).
REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


def _list_page(session, principal, limit: int, offset: int):
    rows, total = service.list_complete(session, principal, None, limit, offset)
    return [
        {
            "id": row.id,
            "name": row.name,
            "status": row.status,
            "dtype": row.dtype,
            "size": size_text(row.size_bytes),
            "created": when(row.created_at),
        }
        for row in rows
    ], total


@console_page("/complete-models", "Complete Models", "/complete-models")
def complete_models_page():
    heading(
        "Complete models",
        "Standalone models: an adapter merged into its base. Deploy them, chat with them, push "
        "them to the hub.",
    )
    table = PagedTable(
        COLUMNS,
        _list_page,
        link=lambda row: f"/complete-models/{row['id']}",
        empty="No complete models yet. Open a customized model and Save it as one.",
    )
    table.table.props('data-testid="complete-table"')
    ui.link("Go to customized models", "/customized-models")


def _detail(session, principal, model_id: str) -> dict[str, Any]:
    from tuneyard.customized.service import get_customized

    row = service.get_complete(session, principal, model_id)
    lineage = (row.model_card or {}).get("lineage", {})
    customized_exists = False
    if row.customized_model_id:
        try:
            get_customized(session, principal, row.customized_model_id)
            customized_exists = True
        except NotFound:
            pass
    return {
        "id": row.id,
        "name": row.name,
        "source": row.source,
        "status": row.status,
        "error": row.error,
        "job_id": row.job_id,
        "dtype": row.dtype,
        "size_bytes": row.size_bytes,
        "path": row.path,
        "created_at": row.created_at,
        "model_card": row.model_card,
        "customized_model_id": row.customized_model_id if customized_exists else None,
        "customized_model_name": lineage.get("customized_model"),
        "base_model_id": row.base_model_id,
        "base_model_name": lineage.get("base_model"),
        "training_id": row.training_id,
        "training_name": lineage.get("training_name"),
    }


@console_page("/complete-models/{model_id}", "Complete Model", "/complete-models")
def complete_model_page(model_id: str):
    model = read(lambda session, principal: _detail(session, principal, model_id))
    model_id = model["id"]
    ui.label(model["name"]).classes("text-2xl font-semibold wrap-anywhere")
    with ui.row().classes("items-center gap-2 flex-wrap"):
        status_badge(model["status"]).props('data-testid="complete-status"')
        ui.label(f"{model['dtype']} · {size_text(model['size_bytes']) or 'size not known yet'}")

    if model["status"] == "saving" and model["job_id"]:
        job_card("Saving: merging the adapter into its base", model["job_id"], bordered=True)
    if model["status"] == "failed":
        failure_card("The save failed", model["error"], "complete-error")

    with ui.card().classes("w-full").props('flat bordered data-testid="lineage"'):
        ui.label("Lineage").classes("text-lg font-semibold")
        with ui.element("div").classes("grid grid-cols-1 md:grid-cols-2 gap-3 w-full"):
            if model["customized_model_id"]:
                fact(
                    "Saved from",
                    model["customized_model_name"],
                    f"/customized-models/{model['customized_model_id']}",
                )
            else:
                fact(
                    "Saved from",
                    f"{model['customized_model_name'] or model['source']} (no longer here)",
                )
            if model["base_model_id"]:
                fact(
                    "Base model", model["base_model_name"], f"/base-models/{model['base_model_id']}"
                )
            else:
                fact("Base model", model["base_model_name"])
            if model["training_id"]:
                fact(
                    "Training",
                    model["training_name"] or model["training_id"],
                    f"/trainings/{model['training_id']}",
                )
            fact("Created", when(model["created_at"]))
            fact("Folder (on the server)", model["path"])
        if model["status"] == "ready":
            link_button(
                "Download the model (tar)",
                f"/download/complete-models/{model_id}",
                icon="download",
                testid="download",
            )

    with ui.card().classes("w-full").props('flat bordered data-testid="complete-actions"'):
        ui.label("Actions").classes("text-lg font-semibold")
        ready = model["status"] == "ready"
        with ui.row().classes("items-center gap-2 flex-wrap"):
            if ready:
                deploy_button("complete", model_id, model["name"])
                link_button("Chat", f"/deeptext?model=complete:{model_id}", testid="chat")
            delete_button(lambda: _confirm_delete(model))
        if ready:
            _push_form(model)
        else:
            cannot(f"Deploy, chat and push to hub need the model ready; it is {model['status']}.")

    model_card(model["model_card"])


def _push_form(model: dict[str, Any]) -> None:
    ui.label("Push to hub").classes("font-medium mt-2")
    ui.label(
        "Uploads the folder to a Hugging Face hub repository (created if missing). The server "
        "needs to reach the hub; you are told at once when it cannot."
    ).classes("text-sm text-grey-8")
    with ui.row().classes("items-start gap-2 flex-wrap w-full"):
        repo_id = (
            ui.input(
                "Repository id",
                placeholder="owner/name",
                validation={
                    "Write it as owner/name": lambda value: bool(
                        REPO_ID.match((value or "").strip())
                    )
                },
            )
            .classes("w-full sm:w-80")
            .props('dense outlined data-testid="push-repo"')
        )
        push_button = ui.button("Push", icon="cloud_upload").props(
            'outline no-caps data-testid="push"'
        )
    push_box = ui.column().classes("w-full gap-1")

    async def push() -> None:
        if not repo_id.validate():
            return
        repo = repo_id.value.strip()
        job_id = await act(
            lambda session, principal: (
                service.start_push(session, principal, model["id"], repo)[1].id
            )
        )
        if job_id is None:
            return
        push_box.clear()
        with push_box:
            ui.label(f"Pushing to {repo}").classes("font-medium wrap-anywhere")
            JobWatch(job_id)

    push_button.on_click(push)


def _confirm_delete(model: dict[str, Any]) -> None:
    kept = (
        f"The customized model {model['customized_model_name']} it was saved from stays. "
        if model["customized_model_name"]
        else ""
    )
    confirm_delete(
        f"Delete complete model {model['name']}?",
        f"This deletes its folder ({size_text(model['size_bytes']) or 'no files yet'}). {kept}"
        "Live models deployed from it keep their own copies and stay.",
        call(service.delete_complete, model["id"]),
        done=f"Deleted {model['name']}",
        then=lambda: ui.navigate.to("/complete-models"),
    )
