"""Console pages for base models: the list with registration, and one model's page."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from nicegui import ui

from tuneyard.basemodels import service
from tuneyard.basemodels.card import format_bytes, format_count
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
    facts,
    heading,
    link_button,
    model_card,
    status_badge,
    when,
)
from tuneyard.errors import AppError

SECTION = "/base-models"
# What the user registers from, in the order most people have them: label, input label, hint.
SOURCES = {
    "path": ("Local HF folder", "Folder path", "/models/SmolLM2-135M-Instruct"),
    "gguf_path": ("GGUF file", "GGUF file path", "/models/SmolLM2-135M-Instruct.Q4_1.gguf"),
    "hub_id": ("Hub id", "Hub model id", "HuggingFaceTB/SmolLM2-135M-Instruct"),
}
TECHNICAL_NAME_RULE = "Use 1-200 letters, digits, '.', '_' or '-' (no spaces or slashes)"


def _size_and_params(card: dict[str, Any] | None) -> str:
    card = card or {}
    parts = []
    if card.get("parameter_count"):
        parts.append(f"{format_count(card['parameter_count'])} params")
    if card.get("disk_size_bytes"):
        parts.append(format_bytes(card["disk_size_bytes"]))
    return " · ".join(parts)


def _model_rows(session, principal, limit: int, offset: int):
    models, total = service.list_base_models(session, principal, limit, offset)
    rows = [
        {
            "id": model.id,
            "technical_name": model.technical_name,
            "model_name": model.model_name,
            "model_type": model.model_type,
            "source": model.source,
            "status": model.status,
            "size": _size_and_params(model.model_card),
            "created": when(model.created_at),
        }
        for model in models
    ]
    return rows, total


@console_page("/base-models", "Base Models", SECTION)
def base_models_page():
    heading(
        "Base Models",
        "The models you fine-tune and deploy: register a folder, import a GGUF file or "
        "download from the hub.",
    )
    _demo_button()
    models = PagedTable(
        [
            column("technical_name", "Technical name"),
            column("model_name", "Display name"),
            column("model_type", "Type"),
            column("source", "Source"),
            column("status", "Status"),
            column("size", "Size"),
            column("created", "Created"),
        ],
        _model_rows,
        link=lambda row: f"/base-models/{row['id']}",
        empty="No base models yet. Register one below, or add the demo model.",
    )
    _register_form(models.load)


def _demo_button() -> None:
    try:
        service.demo_gguf_file()
        missing = None
    except AppError as exc:
        missing = exc.message

    async def add_demo() -> None:
        model_id = await act(
            lambda session, principal: service.add_demo(session, principal).id,
            done="Importing the demo model",
        )
        if model_id is not None:
            ui.navigate.to(f"/base-models/{model_id}")

    with ui.row().classes("items-center gap-3 w-full"):
        button = ui.button("Add the demo model", icon="bolt", on_click=add_demo).props(
            'no-caps outline data-testid="add-demo"'
        )
        if missing:
            button.disable()
            cannot(missing)
        else:
            ui.label(f"{service.DEMO_NAME}: small, quick to train and deploy.").classes(
                "text-grey-7 text-sm"
            )


def _register_form(refresh_list: Callable[[], None]) -> None:
    with ui.card().classes("w-full").props('data-testid="register-form"'):
        ui.label("Register a base model").classes("text-lg font-semibold")
        with ui.element("div").classes("grid grid-cols-1 md:grid-cols-2 gap-x-4 gap-y-2 w-full"):
            technical_name = ui.input(
                "Technical name",
                placeholder="smollm2-135m",
                validation={
                    TECHNICAL_NAME_RULE: lambda value: bool(
                        service.TECHNICAL_NAME_RE.fullmatch(value or "")
                    )
                },
            ).props('data-testid="technical-name"')
            display_name = ui.input(
                "Display name (optional)",
                validation={
                    f"At most {service.MAX_MODEL_NAME} characters": lambda value: (
                        len((value or "").strip()) <= service.MAX_MODEL_NAME
                    )
                },
            )
        source_kind = ui.toggle(
            {key: label for key, (label, _, _) in SOURCES.items()}, value="path"
        ).props('no-caps data-testid="source-kind"')
        source = ui.input(
            SOURCES["path"][1],
            placeholder=SOURCES["path"][2],
            validation={"Required": lambda value: bool((value or "").strip())},
        ).props('data-testid="source"')
        hint = ui.label("").classes("text-xs text-grey-7 -mt-2")
        model_type = ui.toggle({"chat": "Chat", "embedding": "Embedding"}, value="chat").props(
            "no-caps"
        )
        for field in (technical_name, display_name, source):
            field.classes("w-full").props("outlined dense")

        def describe_source() -> None:
            _, label, example = SOURCES[source_kind.value]
            source.props(f'label="{label}" placeholder="{example}"')
            hint.text = {
                "path": "Registered in place: Tuneyard reads the folder and never moves or "
                "deletes it. The path is on the server's machine.",
                "gguf_path": "A job converts the file into a folder Tuneyard owns. The path is "
                "on the server's machine.",
                "hub_id": "A job downloads the model; the server must reach the hub.",
            }[source_kind.value]

        source_kind.on_value_change(describe_source)
        describe_source()
        job_area = ui.column().classes("w-full")

        async def register() -> None:
            if not (technical_name.validate() and display_name.validate() and source.validate()):
                return
            kind = source_kind.value
            created = await act(
                lambda session, principal: _create(
                    session,
                    principal,
                    technical_name.value.strip(),
                    {kind: source.value.strip()},
                    display_name.value.strip() or None,
                    model_type.value,
                )
            )
            if created is None:
                return
            model_id, job_id = created
            if job_id is None:
                ui.notify("Base model registered", type="positive")
                ui.navigate.to(f"/base-models/{model_id}")
                return
            refresh_list()
            button.disable()
            job_area.clear()
            with job_area:
                ui.label(
                    "Importing the GGUF file…" if kind == "gguf_path" else "Downloading…"
                ).classes("font-medium")
                ui.link("Open the model's page", f"/base-models/{model_id}")

                def finished(job) -> None:
                    button.enable()
                    refresh_list()
                    if job.status == "succeeded":
                        ui.navigate.to(f"/base-models/{model_id}")

                JobWatch(job_id, finished)

        button = ui.button("Register", icon="add", on_click=register).props(
            'no-caps data-testid="register"'
        )


def _create(session, principal, technical_name, source, model_name, model_type):
    model, job = service.create_base_model(
        session,
        principal,
        technical_name,
        model_name=model_name,
        model_type=model_type,
        **source,
    )
    return model.id, job.id if job else None


def _model_view(session, principal, model_id: str) -> dict[str, Any]:
    model = service.get_base_model(session, principal, model_id)
    job = service.active_job(session, model)
    return {
        "id": model.id,
        "technical_name": model.technical_name,
        "model_name": model.model_name,
        "model_type": model.model_type,
        "source": model.source,
        "source_ref": model.source_ref,
        "path": model.path,
        "managed": model.managed,
        "status": model.status,
        "error": model.error,
        "model_card": dict(model.model_card or {}),
        "deployment_template": model.deployment_template or "",
        "created": when(model.created_at),
        "updated": when(model.updated_at),
        "job_id": job.id if job else None,
    }


@console_page("/base-models/{model_id}", "Base Model", SECTION)
def base_model_page(model_id: str):
    model = read(call(_model_view, model_id))
    ready = model["status"] == "ready"
    heading(model["model_name"], f"Technical name: {model['technical_name']}")
    with ui.row().classes("items-center gap-2 -mt-2"):
        status_badge(model["status"])
        ui.label(f"{model['model_type']} model").classes("text-grey-8")
    if model["job_id"]:
        job_card(
            "Downloading from the hub" if model["source"] == "hub" else "Importing the GGUF file",
            model["job_id"],
        )
    if model["error"]:
        with ui.card().classes("w-full bg-red-1").props("flat bordered"):
            ui.label(model["error"]).classes("text-negative whitespace-pre-wrap break-words")
            ui.label("Delete this model and register it again once the cause is fixed.").classes(
                "text-grey-8"
            )
    _actions(model, ready)
    with ui.card().classes("w-full"):
        facts(
            [
                ("Source", f"{model['source']}: {model['source_ref']}"),
                ("Folder", model["path"] or "not made yet"),
                (
                    "Folder owner",
                    "Tuneyard (deleted with the model)"
                    if model["managed"]
                    else "you (registered in place, kept on disk)",
                ),
                ("Size", _size_and_params(model["model_card"])),
                ("Created", model["created"]),
                ("Updated", model["updated"]),
            ]
        )
    _edit_name(model)
    _edit_template(model, ready)
    model_card(model["model_card"])


def _actions(model: dict[str, Any], ready: bool) -> None:
    model_id = model["id"]
    with ui.row().classes("items-center gap-2 flex-wrap"):
        if ready:
            link_button("Train on this model", f"/trainings/new?base_model_id={model_id}", "school")
            deploy_button("base", model_id, model["model_name"])
            link_button("Chat", f"/deeptext?model=base:{model_id}")
        delete_button(lambda: _confirm_delete(model))
    if not ready:
        cannot(f"Training, deploying and chatting need the model ready; it is {model['status']}.")


def _confirm_delete(model: dict[str, Any]) -> None:
    if model["managed"]:
        folder = f"Tuneyard deletes the folder it made ({model['path'] or 'not made yet'})."
    else:
        folder = f"The folder {model['path']} was registered in place and stays on disk."
    confirm_delete(
        f"Delete base model {model['technical_name']}?",
        f"{folder} Trainings and customized models made from it keep their records.",
        call(service.delete_base_model, model["id"]),
        done=f"Deleted base model {model['technical_name']}",
        then=lambda: ui.navigate.to("/base-models"),
    )


def _edit_name(model: dict[str, Any]) -> None:
    with ui.card().classes("w-full"):
        ui.label("Display name").classes("font-medium")
        with ui.row().classes("items-start gap-2 w-full flex-nowrap"):
            name = (
                ui.input(
                    value=model["model_name"],
                    validation={
                        f"1-{service.MAX_MODEL_NAME} characters": lambda value: (
                            0 < len((value or "").strip()) <= service.MAX_MODEL_NAME
                        )
                    },
                )
                .props('outlined dense data-testid="display-name"')
                .classes("grow min-w-0")
            )

            async def save() -> None:
                if not name.validate():
                    return
                await act(
                    call(service.update_base_model, model["id"], model_name=name.value),
                    done="Display name saved",
                )

            ui.button("Save", on_click=save).props("no-caps")


def _edit_template(model: dict[str, Any], ready: bool) -> None:
    with ui.card().classes("w-full"):
        ui.label("Deployment template").classes("font-medium")
        ui.label(
            "The Ollama TEMPLATE (Go template text) used when this model is deployed; "
            "derived from the model's chat template."
        ).classes("text-grey-7 text-sm -mt-1")
        template = (
            ui.textarea(value=model["deployment_template"])
            .props('outlined autogrow input-class="font-mono text-sm" data-testid="template"')
            .classes("w-full")
        )

        async def save() -> None:
            await act(
                call(service.update_base_model, model["id"], deployment_template=template.value),
                done="Deployment template saved",
            )

        if ready:
            ui.button("Save template", on_click=save).props("no-caps")
        else:
            template.disable()
            cannot("The template can be edited once the model is ready.")
