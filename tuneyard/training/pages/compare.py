"""The compare page (/trainings/compare): one metric of two or more runs, overlaid by step."""

from __future__ import annotations

from typing import Any

from nicegui import ui

from tuneyard.console.charts import step_chart_options, step_series
from tuneyard.console.session import act, call, fetch, read
from tuneyard.console.shell import console_page
from tuneyard.console.widgets import cannot, heading, when
from tuneyard.training import service
from tuneyard.training.pages.frame import PICK_LIMIT, SECTION, training_tabs

COMPARE_METRICS = ("loss", "eval_loss", "learning_rate", "grad_norm", "reward")


def _compare_choices(session, principal) -> list[dict[str, Any]]:
    items, _ = service.list_trainings(session, principal, None, PICK_LIMIT, 0)
    return [
        {"id": t.id, "name": t.name, "status": t.status, "created": when(t.created_at)}
        for t in items
    ]


def _metric_names(session, principal, training_ids: list[str]) -> list[str]:
    names: set[str] = set()
    for training_id in training_ids:
        series = service.metrics(session, principal, training_id)["series"]
        names.update(series["train"])
        names.update(series["eval"])
    return sorted(names)


def _compare_chart_options(result: dict[str, Any]) -> dict[str, Any]:
    """One line per training of `service.compare`'s result, over the steps any of them logged."""
    series = []
    for training in result["trainings"]:
        points = [
            [step, value]
            for step, value in zip(result["steps"], training["values"], strict=True)
            if value is not None
        ]
        series.append(step_series(training["name"], points, connectNulls=True))
    return step_chart_options(result["metric"], series)


@console_page("/trainings/compare", "Compare trainings", SECTION)
async def compare_page(ids: str | None = None):
    training_tabs("/trainings/compare")
    heading("Compare trainings", "Overlay one metric of two or more trainings, step by step.")
    choices = read(_compare_choices)
    if len(choices) < 2:
        with ui.card().classes("w-full bg-amber-1").props('flat bordered data-testid="needs"'):
            ui.label("Comparing needs at least two trainings.").classes("font-medium")
            ui.link("Start a training", "/trainings/new")
        return
    known = {c["id"] for c in choices}
    wanted = [i for i in (ids or "").split(",") if i in known]
    with ui.element("div").classes("grid grid-cols-1 md:grid-cols-3 gap-3 w-full items-start"):
        picked = (
            ui.select(
                {c["id"]: f"{c['name']} · {c['status']} · {c['created']}" for c in choices},
                value=wanted,
                multiple=True,
                with_input=True,
                label="Trainings",
            )
            .props('outlined dense use-chips data-testid="compare-trainings"')
            .classes("w-full md:col-span-2")
        )
        metric = (
            ui.select(list(COMPARE_METRICS), value="loss", label="Metric")
            .props('outlined dense data-testid="compare-metric"')
            .classes("w-full")
        )
    hint = ui.row().classes("w-full")
    with ui.card().classes("w-full"):
        chart = (
            ui.echart(_compare_chart_options({"metric": "loss", "steps": [], "trainings": []}))
            .classes("w-full h-80")
            .props('data-testid="compare-chart"')
        )
        summary = ui.column().classes("w-full gap-1").props('data-testid="compare-summary"')

    async def refresh_metrics() -> None:
        selected = list(picked.value or [])
        if not selected:
            return
        names = await fetch(lambda s, p: _metric_names(s, p, selected))
        options = list(dict.fromkeys([*COMPARE_METRICS, *names]))
        if options != metric.options:
            metric.set_options(options, value=metric.value)

    async def draw() -> None:
        selected = list(picked.value or [])
        hint.clear()
        if len(selected) < 2:
            with hint:
                cannot("Pick at least two trainings to compare.")
            chart.options.update(
                _compare_chart_options({"metric": metric.value, "steps": [], "trainings": []})
            )
            chart.update()
            summary.clear()
            return
        await refresh_metrics()
        result = await act(call(service.compare, selected, metric.value))
        if result is None:
            return
        chart.options.update(_compare_chart_options(result))
        chart.update()
        summary.clear()
        with summary:
            for training in result["trainings"]:
                values = [v for v in training["values"] if v is not None]
                text = (
                    f"{training['name']}: last {values[-1]:.4g}, min {min(values):.4g}, "
                    f"{len(values)} points"
                    if values
                    else f"{training['name']}: no {result['metric']} logged"
                )
                ui.link(text, f"/trainings/{training['id']}").classes("text-sm")

    picked.on_value_change(draw)
    metric.on_value_change(draw)
    await draw()
