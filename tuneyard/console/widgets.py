"""Pieces the console's pages share: headings, guidance, facts, buttons, paged tables,
confirmations."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any

from nicegui import ui

from tuneyard.console.session import act, read

STATUS_COLORS = {
    "queued": "grey",
    "running": "blue",
    "succeeded": "positive",
    "failed": "negative",
    "cancelled": "warning",
    "ready": "positive",
    "live": "positive",
    "deploying": "blue",
    "saving": "blue",
    "parsing": "blue",
    "ingesting": "blue",
    "building": "blue",
    "importing": "blue",
    "downloading": "blue",
    "stopped": "warning",
    "active": "positive",
    "revoked": "negative",
    "expired": "warning",
}
# A q-badge coloured like status_badge, for the status cells of tables.
STATUS_SLOT = (
    '<q-td :props="props"><q-badge :color="('
    + json.dumps(STATUS_COLORS).replace('"', "'")
    + ')[props.value] || \'grey\'" :label="props.value" /></q-td>'
)


def heading(title: str, explanation: str = "") -> None:
    ui.label(title).classes("text-2xl font-semibold")
    if explanation:
        ui.label(explanation).classes("text-grey-8 -mt-3")


def needs(what: str, missing: Sequence[tuple[str, str]]) -> None:
    """Lifecycle guidance: `what` needs each missing (label, link) first."""
    if not missing:
        return
    with ui.card().classes("w-full bg-amber-1").props('flat bordered data-testid="needs"'):
        ui.label(f"{what} needs {' and '.join(label for label, _ in missing)} first.").classes(
            "font-medium"
        )
        with ui.row().classes("gap-2"):
            for label, target in missing:
                ui.link(f"Add {label}", target)


def cannot(reason: str) -> None:
    """Say why an action is unavailable, beside where it would be."""
    with ui.row().classes("items-center gap-2 text-warning"):
        ui.icon("info")
        ui.label(reason).props('data-testid="cannot"')


def status_badge(status: str) -> ui.badge:
    return ui.badge(status, color=STATUS_COLORS.get(status, "grey")).props(
        f'data-testid="status-{status}"'
    )


def set_status(badge: ui.badge, status: str, testid: str | None = None) -> None:
    """Show a new status on a badge: its text, its colour and (unless given) its test id."""
    badge.text = status
    badge.props(
        f'color={STATUS_COLORS.get(status, "grey")} data-testid="{testid or f"status-{status}"}"'
    )


def fact(label: str, value: Any = None, link: str | None = None, testid: str = "") -> None:
    """One labelled value of a detail page; a link when `link` is given."""
    with ui.column().classes("gap-0 min-w-0"):
        ui.label(label).classes("text-xs text-grey-7 uppercase")
        text = "" if value is None else str(value)
        shown = ui.link(text, link) if link else ui.label(text or "—")
        shown.classes("wrap-anywhere")
        if testid:
            shown.props(f'data-testid="{testid}"')


def facts(pairs: Sequence[tuple[str, Any]]) -> None:
    """Label/value pairs in a grid that folds to one column on a narrow window."""
    with ui.element("div").classes("grid grid-cols-1 sm:grid-cols-2 gap-x-6 gap-y-1 w-full"):
        for label, value in pairs:
            fact(label, value)


def link_button(text: str, target: str, icon: str = "forum", testid: str = "") -> None:
    """A real link (opens in a new tab too) that looks like the page's other actions."""
    link = ui.link(target=target).classes("no-underline")
    if testid:
        link.props(f'data-testid="{testid}"')
    with link:
        ui.button(text, icon=icon).props("no-caps outline")


def delete_button(on_click: Callable[[], Any], testid: str = "delete") -> ui.button:
    return ui.button("Delete", icon="delete", color="negative", on_click=on_click).props(
        f'outline no-caps data-testid="{testid}"'
    )


def failure_card(title: str, error: str | None, testid: str) -> None:
    """Why something failed, in red, with the recorded reason."""
    with ui.card().classes("w-full bg-red-1").props("flat bordered"):
        ui.label(title).classes("font-medium text-negative")
        ui.label(error or "No reason was recorded.").classes(
            "whitespace-pre-wrap wrap-anywhere"
        ).props(f'data-testid="{testid}"')


def clear(field: ui.input) -> None:
    """Empty a field after a success without showing its rules as broken."""
    field.value = ""
    field.error = None


def error_label(testid: str) -> ui.label:
    """Where a form says why the service refused it (empty until then)."""
    return (
        ui.label("").classes("text-negative whitespace-pre-wrap").props(f'data-testid="{testid}"')
    )


def column(
    name: str, label: str, *, wide_only: bool | str = False, field: str | None = None, **extra
) -> dict[str, Any]:
    """A table column showing the row's `field` (default: `name`).

    `wide_only` leaves it out on a phone-sized window: True hides it below Quasar's sm
    breakpoint (class gt-xs); a class such as "gt-sm" names another breakpoint.
    """
    spec = {"name": name, "label": label, "field": field or name, **extra}
    if wide_only:
        shown = "gt-xs" if wide_only is True else wide_only
        spec.update(classes=shown, headerClasses=shown)
    return spec


def actions_slot(buttons: list[tuple[str, str, str, str]]) -> str:
    """A table cell of per-row buttons (label, event, color, v-if condition or ""); each emits
    its event with the row, for the page to handle with `table.on(event, ...)`."""
    rendered = "".join(
        f'<q-btn dense flat no-caps color="{color}" label="{label}" '
        + (f'v-if="{condition}" ' if condition else "")
        + f":data-testid=\"'{event}-' + props.row.name\" "
        f"@click.stop=\"() => $parent.$emit('{event}', props.row)\" />"
        for label, event, color, condition in buttons
    )
    return f'<q-td :props="props"><div class="flex flex-wrap gap-1">{rendered}</div></q-td>'


def when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M") if value else ""


def size_text(size: int | None) -> str:
    if not size:
        return ""
    amount = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if amount < 1024 or unit == "GB":
            return f"{amount:.0f} {unit}" if unit == "B" else f"{amount:.1f} {unit}"
        amount /= 1024
    return ""


def _card_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, dict):
        return ", ".join(f"{key}={_card_value(item)}" for key, item in value.items())
    if isinstance(value, list):
        return ", ".join(_card_value(item) for item in value)
    return "" if value is None else str(value)


def model_card(card: dict[str, Any] | None) -> None:
    """A model card: its plain fields first, then one small table per section."""
    if not card:
        ui.label("No model card yet.").classes("text-grey-7")
        return
    columns = [column("field", "Field", align="left"), column("value", "Value", align="left")]

    def table(items: dict[str, Any]) -> None:
        rows = [{"field": key, "value": _card_value(value)} for key, value in items.items()]
        # Long ids and digests wrap anywhere: a phone shows them whole.
        ui.table(columns=columns, rows=rows, row_key="field").props(
            "flat dense wrap-cells hide-bottom hide-header"
        ).classes("w-full [&_td:first-child]:whitespace-nowrap [&_td:last-child]:wrap-anywhere")

    plain = {k: v for k, v in card.items() if not isinstance(v, dict)}
    sections = {k: v for k, v in card.items() if isinstance(v, dict) and v}
    with ui.card().classes("w-full").props('flat bordered data-testid="model-card"'):
        ui.label("Model card").classes("text-lg font-semibold")
        if plain:
            table(plain)
        for name, items in sections.items():
            ui.label(name.replace("_", " ").capitalize()).classes("font-medium mt-2")
            table(items)


class PagedTable:
    """A table over a service list: pages are fetched as the user turns them.

    `fetch(session, principal, limit, offset) -> (rows as dicts, total)`. Row clicks open
    `link(row)` when given. The column named `status_column`, if there is one, shows its
    value as a coloured badge.
    """

    def __init__(
        self,
        columns: list[dict[str, Any]],
        fetch: Callable[[Any, Any, int, int], tuple[list[dict[str, Any]], int]],
        *,
        link: Callable[[dict[str, Any]], str] | None = None,
        rows_per_page: int = 20,
        empty: str = "Nothing here yet.",
        row_key: str = "id",
        status_column: str | None = "status",
    ):
        self.fetch = fetch
        self.link = link
        self.rows_per_page = rows_per_page
        self.table = (
            ui.table(
                columns=[{"align": "left", **column} for column in columns],
                rows=[],
                row_key=row_key,
                pagination={"rowsPerPage": rows_per_page, "page": 1, "rowsNumber": 0},
            )
            .props(f'flat bordered wrap-cells no-data-label="{empty}"')
            .classes("w-full")
        )
        if any(column["name"] == status_column for column in columns):
            self.table.add_slot(f"body-cell-{status_column}", STATUS_SLOT)
        self.table.on("request", self._on_request)
        if link is not None:
            self.table.on("row-click", self._on_click)
            self.table.classes("cursor-pointer")
        self.load(1)

    def load(self, page: int | None = None) -> None:
        pagination = dict(self.table.pagination)
        page = page or pagination.get("page", 1)
        per_page = pagination.get("rowsPerPage") or self.rows_per_page
        rows, total = read(
            lambda session, principal: self.fetch(
                session, principal, per_page, (page - 1) * per_page
            )
        )
        self.table.rows = rows
        self.table.pagination = {**pagination, "page": page, "rowsNumber": total}
        self.table.update()

    def _on_request(self, event) -> None:
        pagination = event.args["pagination"]
        self.table.pagination = {**self.table.pagination, **pagination}
        self.load(pagination.get("page", 1))

    def _on_click(self, event) -> None:
        row = event.args[1] if isinstance(event.args, list) and len(event.args) > 1 else None
        if row is not None and self.link is not None:
            ui.navigate.to(self.link(row))


def confirm(
    title: str, consequence: str, action: str, on_confirm: Callable[[], Awaitable[Any] | Any]
) -> None:
    """Ask before a destructive action; `consequence` says what happens and what is kept."""
    with ui.dialog() as dialog, ui.card().props('data-testid="confirm"'):
        ui.label(title).classes("text-lg font-semibold")
        ui.label(consequence).classes("max-w-md")
        with ui.row().classes("w-full justify-end"):
            ui.button("Cancel", on_click=dialog.close).props("flat")

            async def go() -> None:
                dialog.close()
                result = on_confirm()
                if hasattr(result, "__await__"):
                    await result

            ui.button(action, on_click=go, color="negative")
    dialog.open()


def confirm_delete(
    title: str,
    consequence: str,
    delete: Callable[[Any, Any], Any],
    *,
    done: str,
    then: Callable[[], Any],
    action: str = "Delete",
) -> None:
    """Ask, then run `delete(session, principal)`; once it succeeds say `done` and run `then()`
    (open the list, reload the table). A refusal is shown in the service's words."""

    async def go() -> None:
        deleted = await act(
            lambda session, principal: delete(session, principal) or True, done=done
        )
        if deleted is not None:
            then()

    confirm(title, consequence, action, go)
