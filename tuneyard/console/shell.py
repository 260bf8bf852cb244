"""The frame every console page shares: header, the lifecycle navigation, job notices."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

from fastapi.responses import RedirectResponse
from nicegui import ui

from tuneyard.console.jobs import job_notices
from tuneyard.console.session import SignedOut, current_principal, sign_out
from tuneyard.errors import AppError


@dataclass(frozen=True)
class NavItem:
    label: str
    path: str
    icon: str


# In the order of the lifecycle: models and data in, training, results, serving, use.
NAV = (
    NavItem("Dashboard", "/", "dashboard"),
    NavItem("Base Models", "/base-models", "inventory_2"),
    NavItem("Datasets", "/datasets", "table_chart"),
    NavItem("Training", "/trainings", "model_training"),
    NavItem("Customized Models", "/customized-models", "tune"),
    NavItem("Complete Models", "/complete-models", "widgets"),
    NavItem("Live Models", "/live-models", "cloud_done"),
    NavItem("Third-party Models", "/third-party-models", "hub"),
    NavItem("Deployment Environments", "/deploy-environments", "dns"),
    NavItem("DeepText", "/deeptext", "forum"),
    NavItem("Knowledge", "/knowledge", "menu_book"),
    NavItem("DeepImage", "/deepimage", "palette"),
    NavItem("Assessment", "/assessments", "fact_check"),
    NavItem("Users", "/users", "group"),
)

TRAINING_TABS = (
    ("Runs", "/trainings"),
    ("Compare", "/trainings/compare"),
    ("Profiles", "/training/profiles"),
    ("Methods", "/training/methods"),
)


def _logout() -> None:
    sign_out()
    ui.navigate.to("/login")


def _shell(title: str, section: str, principal) -> None:
    ui.colors(primary="#2f5d50", secondary="#8a6d3b", accent="#c2703d")
    ui.query("body").classes("bg-grey-1")
    # Model output can hold long runs without spaces: let them break anywhere, so a column's
    # narrowest width is never one long word (which would push a phone's page sideways).
    ui.add_css(".break-words { overflow-wrap: anywhere; }")
    with ui.header(elevated=True).classes("items-center gap-2 px-3 py-2 bg-primary"):
        menu = ui.button(icon="menu").props("flat round color=white aria-label=Menu")
        ui.link("Tuneyard", "/").classes("text-white text-lg font-bold no-underline")
        ui.label(title).classes("text-white opacity-80 truncate").props('data-testid="page-title"')
        ui.space()
        who = f"{principal.username} · {principal.role} · project {principal.project_code}"
        ui.label(who).classes("text-white text-sm gt-xs")
        ui.button("Log out", on_click=_logout).props("flat color=white no-caps no-wrap")
    with ui.left_drawer(bordered=True).props("breakpoint=1000 width=256") as drawer:
        drawer.classes("bg-white")
        with ui.column().classes("gap-0 w-full"):
            for item in NAV:
                active = item.path == section
                with ui.link(target=item.path).classes(
                    "w-full no-underline rounded px-3 py-2 flex flex-nowrap items-center gap-3 "
                    + ("bg-primary text-white" if active else "text-grey-9 hover:bg-grey-2")
                ):
                    ui.icon(item.icon).classes("text-lg shrink-0")
                    ui.label(item.label).classes("whitespace-nowrap")
    menu.on_click(drawer.toggle)
    job_notices()


def console_page(path: str, title: str, section: str) -> Callable:
    """Register a signed-in page: `build(**path_params)` fills the page's main column.

    Not signed in -> the login page. An AppError while building (an unknown id, say) is shown
    in place of the page with the service's message.
    """

    def decorate(build: Callable) -> Callable:
        @ui.page(path, title=f"{title} · Tuneyard")
        @functools.wraps(build)
        async def page(*args, **kwargs):
            try:
                principal = current_principal()
            except SignedOut:
                from tuneyard.console.app import MOUNT_PATH

                return RedirectResponse(f"{MOUNT_PATH}/login")
            _shell(title, section, principal)
            with ui.column().classes("w-full max-w-6xl mx-auto p-2 sm:p-4 gap-4"):
                try:
                    result = build(*args, **kwargs)
                    if hasattr(result, "__await__"):
                        await result
                except AppError as exc:
                    with ui.card().classes("w-full"):
                        ui.label(exc.message).classes("text-negative")
                        ui.link("Back", section)

        return page

    return decorate
