"""Line charts of metrics over training steps: one run's live charts, or runs overlaid."""

from __future__ import annotations

from typing import Any

from nicegui import ui

STEP_AXIS = {
    "type": "value",
    "name": "step",
    "nameLocation": "middle",
    "nameGap": 24,
    "minInterval": 1,
}
CHART_GRID = {"left": 8, "right": 16, "top": 36, "bottom": 24, "containLabel": True}
# Past this many points a line reads better without a marker on each.
MAX_SYMBOLS = 60


def step_series(name: str, points: list, **extra: Any) -> dict[str, Any]:
    """One line of [step, value] points."""
    return {
        "name": name,
        "type": "line",
        "showSymbol": len(points) < MAX_SYMBOLS,
        "data": points,
        **extra,
    }


def step_chart_options(y_name: str, series: list[dict[str, Any]]) -> dict[str, Any]:
    """An echart of lines over the step axis, its y axis named `y_name`."""
    return {
        "animation": False,
        "tooltip": {"trigger": "axis"},
        "legend": {"top": 0, "type": "scroll"},
        "grid": CHART_GRID,
        "xAxis": STEP_AXIS,
        "yAxis": {"type": "value", "scale": True, "name": y_name},
        "series": series,
    }


def step_chart(title: str, y_name: str, testid: str) -> ui.echart:
    """An empty chart over steps in a titled card; `redraw` fills it."""
    with ui.card().classes("w-full min-w-0"):
        ui.label(title).classes("font-semibold")
        return (
            ui.echart(step_chart_options(y_name, []))
            .classes("w-full h-64")
            .props(f'data-testid="{testid}"')
        )


def redraw(chart: ui.echart, series: list[dict[str, Any]]) -> None:
    chart.options["series"] = series
    chart.update()


class LiveCharts:
    """Loss, learning rate and (for methods that have one) reward, redrawn from a run's metrics
    (`{"train": {name: points}, "eval": {name: points}}`)."""

    def __init__(self):
        with ui.element("div").classes("grid grid-cols-1 lg:grid-cols-2 gap-3 w-full"):
            self.loss = step_chart("Loss", "loss", "loss-chart")
            self.learning_rate = step_chart("Learning rate", "lr", "lr-chart")
            self.reward_box = ui.element("div").classes("w-full min-w-0")
        self.reward: ui.echart | None = None
        self.waiting = ui.label("No step logged yet; the charts fill in as the run goes.").classes(
            "text-grey-7 text-sm"
        )
        self.drawn: dict[str, Any] | None = None

    def draw(self, metrics: dict[str, dict[str, list]]) -> None:
        if metrics == self.drawn:
            return
        self.drawn = metrics
        train, evaluation = metrics.get("train", {}), metrics.get("eval", {})
        loss = [step_series("loss", train.get("loss", []))]
        if evaluation.get("eval_loss"):
            loss.append(step_series("eval_loss", evaluation["eval_loss"]))
        redraw(self.loss, loss)
        redraw(self.learning_rate, [step_series("learning_rate", train.get("learning_rate", []))])
        rewards = {k: v for k, v in train.items() if "reward" in k and not k.endswith("_std")}
        if rewards:
            if self.reward is None:
                with self.reward_box:
                    self.reward = step_chart("Reward", "reward", "reward-chart")
            redraw(self.reward, [step_series(key, points) for key, points in rewards.items()])
        self.waiting.set_visibility(not train)
