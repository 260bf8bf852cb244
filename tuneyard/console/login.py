"""The console's login page: project code, username, password."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi.responses import RedirectResponse
from nicegui import ui

from tuneyard.auth.service import DEFAULT_PROJECT_CODE
from tuneyard.console.session import SignedOut, current_principal, sign_in
from tuneyard.errors import AppError


@ui.page("/login", title="Log in · Tuneyard")
def login_page():
    try:
        current_principal()
    except SignedOut:
        pass
    else:
        from tuneyard.console.app import MOUNT_PATH

        return RedirectResponse(f"{MOUNT_PATH}/")
    address = ui.context.client.ip or "unknown"
    ui.colors(primary="#2f5d50")
    ui.query("body").classes("bg-grey-2")
    with ui.card().classes("absolute-center w-full max-w-sm p-6 gap-3").props("flat bordered"):
        ui.label("Tuneyard").classes("text-2xl font-bold text-primary")
        ui.label("Fine-tune, save, deploy and chat with language models.").classes(
            "text-grey-8 -mt-2"
        )
        required: dict[str, Callable[[Any], bool]] = {"Required": bool}
        project = ui.input("Project code", value=DEFAULT_PROJECT_CODE, validation=required)
        username = ui.input("Username", validation=required)
        password = ui.input("Password", password=True, password_toggle_button=True)
        error = ui.label("").classes("text-negative").props('data-testid="login-error"')
        for field in (project, username, password):
            field.classes("w-full").props("outlined dense")

        async def submit() -> None:
            error.text = ""
            if not (project.validate() and username.validate()) or not password.value:
                error.text = "Fill in the project code, username and password."
                return
            try:
                await sign_in(
                    project.value.strip(), username.value.strip(), password.value, address
                )
            except AppError as exc:
                error.text = exc.message
                return
            ui.navigate.to("/")

        password.on("keydown.enter", submit)
        ui.button("Log in", on_click=submit).classes("w-full")
        ui.label(
            "First start: the server printed user admin's password; it is also in "
            "admin-password.txt in the server's data directory until it is changed."
        ).classes("text-xs text-grey-7")
