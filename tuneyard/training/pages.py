"""Console pages for training: runs, new runs, live progress, comparing, profiles, methods."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from nicegui import ui

from tuneyard.console.session import SignedOut, act, call, fetch, read
from tuneyard.console.shell import TRAINING_TABS, console_page
from tuneyard.console.widgets import (
    JobWatch,
    PagedTable,
    cannot,
    column,
    confirm,
    heading,
    needs,
    set_status,
    status_badge,
    when,
)
from tuneyard.errors import AppError
from tuneyard.training import custom, service
from tuneyard.training.methods import all_methods
from tuneyard.training.params import CommonParams
from tuneyard.training.schemas import MethodOut, ProfileOut, TrainingOut

SECTION = "/trainings"
STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
ACTIVE = service.ACTIVE
LIVE_SECONDS = 2.0
LIST_REFRESH_SECONDS = 3.0
LOG_TAIL_BYTES = 16_000
# Enough for any project's pickers; the API pages these too, at most 500 a page.
PICK_LIMIT = 500
COMPARE_METRICS = ("loss", "eval_loss", "learning_rate", "grad_norm", "reward")
NAME_RULE = "1-100 letters, digits, '.', '_' or '-'"
STEP_AXIS = {
    "type": "value",
    "name": "step",
    "nameLocation": "middle",
    "nameGap": 24,
    "minInterval": 1,
}
EMPTY_RUNS = "No trainings yet. Start one with New training."
CHART_GRID = {"left": 8, "right": 16, "top": 36, "bottom": 24, "containLabel": True}


# -- shared pieces ----------------------------------------------------------------------------


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


def _ready_inputs(session, principal) -> dict[str, list[dict[str, Any]]]:
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


def clear(field: ui.input) -> None:
    """Empty a field after a success without showing its rules as broken."""
    field.value = ""
    field.error = None


def error_label(testid: str) -> ui.label:
    """Where a form says why the service refused it (empty until then)."""
    return (
        ui.label("").classes("text-negative whitespace-pre-wrap").props(f'data-testid="{testid}"')
    )


def script_upload(
    label: str, max_bytes: int, too_big: str, testid: str, on_upload: Callable
) -> ui.upload:
    """An upload of one Python file (a method or reward script), sent as soon as it is chosen."""
    return (
        ui.upload(
            label=label,
            auto_upload=True,
            max_file_size=max_bytes,
            on_upload=on_upload,
            on_rejected=lambda: ui.notify(too_big, type="negative"),
        )
        .props(f'accept=.py data-testid="{testid}"')
        .classes("w-full sm:w-80")
    )


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, list):
        return ", ".join(_short(item) for item in value) or "[]"
    if isinstance(value, dict):
        return ", ".join(f"{key}={_short(item)}" for key, item in value.items())
    return "" if value is None else str(value)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    seconds = int(seconds)
    minutes, seconds = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m" if hours else f"{minutes}m {seconds:02d}s"


def _methods(session, principal) -> list[dict[str, Any]]:
    return [MethodOut.of(m).model_dump() for m in custom.list_methods(session, principal)]


def _parameters(schema: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The parameters of a method's JSON schema: name -> its schema (type, default, ...)."""
    return schema.get("properties", {})


def _type_text(spec: dict[str, Any]) -> str:
    if "enum" in spec:
        return " | ".join(str(option) for option in spec["enum"])
    if "const" in spec:
        return str(spec["const"])
    if "anyOf" in spec:
        return " | ".join(_type_text(option) for option in spec["anyOf"])
    if spec.get("type") == "array":
        return f"list of {spec.get('items', {}).get('type', 'values')}"
    return spec.get("type", "")


def parameter_table(parameters: dict[str, dict[str, Any]], testid: str) -> None:
    columns = [
        column("name", "Parameter", align="left"),
        column("type", "Type", align="left"),
        column("default", "Default", align="left"),
        column("description", "What it does", align="left"),
    ]
    rows = [
        {
            "name": name,
            "type": _type_text(spec),
            "default": _short(spec.get("default")),
            "description": spec.get("description", ""),
        }
        for name, spec in parameters.items()
    ]
    ui.table(columns=columns, rows=rows, row_key="name").props(
        f'flat dense wrap-cells hide-bottom data-testid="{testid}" :rows-per-page-options="[0]"'
    ).classes("w-full")


# -- /trainings -------------------------------------------------------------------------------


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
    inputs = read(_ready_inputs)
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


# -- /trainings/new ---------------------------------------------------------------------------


def _display_value(spec: dict[str, Any], value: Any) -> Any:
    """A parameter's value as its input shows it."""
    if spec.get("type") in ("integer", "number", "boolean") or "enum" in spec or "const" in spec:
        return value
    if isinstance(value, list):
        return ", ".join(str(item) for item in value)
    return "" if value is None else str(value)


def _is_list_param(spec: dict[str, Any]) -> bool:
    if spec.get("type") == "array":
        return True
    return any(option.get("type") == "array" for option in spec.get("anyOf", []))


def _parse_value(spec: dict[str, Any], raw: Any) -> Any:
    """What an input holds, as the parameter's type (the service checks it further)."""
    kind = spec.get("type")
    if kind == "integer":
        return None if raw is None or raw == "" else int(raw)
    if kind == "number":
        return None if raw is None or raw == "" else float(raw)
    if kind == "boolean" or "enum" in spec or "const" in spec:
        return raw
    text = "" if raw is None else str(raw).strip()
    constants = [option["const"] for option in spec.get("anyOf", []) if "const" in option]
    if text in constants:
        return text
    if _is_list_param(spec):
        if text.startswith("["):
            try:
                return json.loads(text)
            except json.JSONDecodeError:
                return text
        return [item.strip() for item in text.split(",") if item.strip()]
    return text


def _range_rules(spec: dict[str, Any]) -> dict[str, Any]:
    """Inline hints from the schema's bounds; the service still has the last word."""
    rules: dict[str, Any] = {}

    def number(value) -> float | None:
        return None if value is None or value == "" else float(value)

    if "minimum" in spec:
        low = spec["minimum"]
        rules[f"At least {low}"] = lambda v: number(v) is None or number(v) >= low
    if "exclusiveMinimum" in spec:
        low = spec["exclusiveMinimum"]
        rules[f"Above {low}"] = lambda v: number(v) is None or number(v) > low
    if "maximum" in spec:
        high = spec["maximum"]
        rules[f"At most {high}"] = lambda v: number(v) is None or number(v) <= high
    if "exclusiveMaximum" in spec:
        high = spec["exclusiveMaximum"]
        rules[f"Below {high}"] = lambda v: number(v) is None or number(v) < high
    return rules


def _json_object_rule(text: str) -> bool:
    if not (text or "").strip():
        return True
    try:
        return isinstance(json.loads(text), dict)
    except json.JSONDecodeError:
        return False


class ParameterFields:
    """One input per parameter of a method, in the schema's order, defaults filled in."""

    def __init__(self, container: ui.element):
        self.container = container
        self.specs: dict[str, dict[str, Any]] = {}
        self.inputs: dict[str, ui.element] = {}

    def build(self, schema: dict[str, Any], values: dict[str, Any]) -> None:
        self.container.clear()
        self.specs = _parameters(schema)
        self.inputs = {}
        with self.container:
            for name, spec in self.specs.items():
                value = _display_value(spec, values.get(name, spec.get("default")))
                self.inputs[name] = self._field(name, spec, value)

    @staticmethod
    def _field(name: str, spec: dict[str, Any], value: Any) -> ui.element:
        description = spec.get("description", "")
        options = spec.get("enum") or ([spec["const"]] if "const" in spec else None)
        kind = spec.get("type")
        if kind == "boolean" and not options:
            with ui.column().classes("gap-0 w-full min-w-0"):
                field = ui.switch(name, value=bool(value))
                ui.label(description).classes("text-xs text-grey-7 px-3")
        elif options:
            field = ui.select(list(options), value=value, label=name)
        elif kind in ("integer", "number"):
            field = ui.number(
                name,
                value=value,
                precision=0 if kind == "integer" else None,
                validation=_range_rules(spec),
            )
        else:
            field = ui.input(name, value=value)
            if _is_list_param(spec):
                description += " Comma-separated."
        field.props(f'data-testid="param-{name}"')
        if kind != "boolean" or options:
            # The description as the field's hint: an inline error takes its place.
            field.props("dense outlined hide-bottom-space").classes("w-full min-w-0")
            field.props["hint"] = description
        return field

    def set_values(self, values: dict[str, Any]) -> dict[str, Any]:
        """Fill the named inputs; returns the values that have no input here."""
        rest = {}
        for name, value in values.items():
            if name in self.inputs:
                self.inputs[name].value = _display_value(self.specs[name], value)
            else:
                rest[name] = value
        return rest

    def values(self) -> dict[str, Any]:
        return {
            name: _parse_value(self.specs[name], field.value) for name, field in self.inputs.items()
        }

    def changed(self, always: set[str] = frozenset()) -> dict[str, Any]:
        """The parameters that differ from the method's defaults (or are named in `always`)."""
        return {
            name: value
            for name, value in self.values().items()
            if name in always or value != self.specs[name].get("default")
        }


def _new_form_data(session, principal, copy_from: str | None) -> dict[str, Any]:
    profiles, _ = service.list_profiles(session, principal, PICK_LIMIT, 0)
    return {
        **_ready_inputs(session, principal),
        "methods": _methods(session, principal),
        "profiles": [ProfileOut.model_validate(p).model_dump() for p in profiles],
        "copy": service.copy_settings(session, principal, copy_from) if copy_from else None,
    }


@console_page("/trainings/new", "New training", SECTION)
def new_training_page(
    base_model_id: str | None = None, dataset_id: str | None = None, copy_from: str | None = None
):
    training_tabs("/trainings")
    data = read(lambda session, principal: _new_form_data(session, principal, copy_from))
    copied = data["copy"] or {}
    heading(
        "New training",
        "Settings copied from a training; change what you like."
        if copied
        else "Pick a base model, a dataset and a method; the defaults train a LoRA adapter.",
    )
    ready = lifecycle_needs(data)
    unavailable = training_unavailable()
    if unavailable:
        cannot(unavailable)

    methods = {m["name"]: m for m in data["methods"]}
    profiles = {p["id"]: p for p in data["profiles"]}
    bases = {b["id"]: b["name"] for b in data["bases"]}
    datasets = {
        d["id"]: f"{d['name']} · {d['format']} · {d['records']} records" for d in data["datasets"]
    }

    def preselect(options: dict[str, str], *wanted: str | None) -> str | None:
        for choice in wanted:
            if choice in options:
                return choice
        return next(iter(options)) if len(options) == 1 else None

    with ui.card().classes("w-full").props('data-testid="training-form"'):
        with ui.element("div").classes("grid grid-cols-1 md:grid-cols-2 gap-3 w-full"):
            name = (
                ui.input(
                    "Name",
                    value=copied.get("name", ""),
                    validation={
                        f"A train name is {NAME_RULE}": lambda v: bool(
                            service.NAME_RE.fullmatch(v or "")
                        )
                    },
                )
                .props('outlined dense data-testid="training-name"')
                .classes("w-full")
            )
            method = (
                ui.select(
                    {
                        n: f"{n} · {m['title']}" + (" (custom)" if m["custom"] else "")
                        for n, m in methods.items()
                    },
                    value=copied.get("method") if copied.get("method") in methods else "sft",
                    label="Method",
                )
                .props('outlined dense data-testid="training-method"')
                .classes("w-full")
            )
            base = (
                ui.select(
                    bases,
                    value=preselect(bases, base_model_id, copied.get("base_model_id")),
                    label="Base model",
                    with_input=True,
                )
                .props('outlined dense data-testid="training-base"')
                .classes("w-full")
            )
            dataset = (
                ui.select(
                    datasets,
                    value=preselect(datasets, dataset_id, copied.get("dataset_id")),
                    label="Dataset",
                    with_input=True,
                )
                .props('outlined dense data-testid="training-dataset"')
                .classes("w-full")
            )
        about = ui.label("").classes("text-grey-8 text-sm").props('data-testid="method-about"')
        profile = (
            ui.select({}, value=None, label="Profile (fills the parameters)", clearable=True)
            .props('outlined dense data-testid="training-profile"')
            .classes("w-full md:w-1/2")
        )

    with (
        ui.expansion("Parameters", icon="tune", value=True)
        .classes("w-full")
        .props('data-testid="training-params"')
    ):
        ui.label(
            "Every parameter the method takes, with its default; only changed ones are sent."
        ).classes("text-grey-8 text-sm")
        grid = ui.element("div").classes(
            "grid grid-cols-1 sm:grid-cols-2 lg:grid-cols-3 gap-3 w-full"
        )
        fields = ParameterFields(grid)
        advanced = (
            ui.textarea(
                "Advanced JSON (wins over the fields above)",
                placeholder='{"max_steps": 100}',
                validation={'A JSON object, like {"epochs": 2}': _json_object_rule},
            )
            .props('outlined autogrow data-testid="training-json"')
            .classes("w-full font-mono")
        )

    def method_changed(carry: dict[str, Any] | None = None) -> None:
        chosen = methods.get(method.value)
        if chosen is None:
            return
        # Keep what the user already changed when switching to a method that has it too.
        kept = carry if carry is not None else (fields.changed() if fields.inputs else {})
        fields.build(chosen["params_schema"], kept)
        formats = " or ".join(chosen["dataset_formats"])
        result = {"adapter": " Makes an adapter.", "full": " Makes a complete model."}.get(
            chosen.get("result") or "", ""
        )
        about.text = f"{chosen['description']} Trains on {formats} datasets.{result}"
        usable = {
            pid: p["name"] + (f" ({p['method']})" if p["method"] else "")
            for pid, p in profiles.items()
            if p["method"] in (None, chosen["name"])
        }
        profile.set_options(usable, value=profile.value if profile.value in usable else None)

    def profile_chosen() -> None:
        chosen = profiles.get(profile.value)
        if chosen is None:
            return
        rest = fields.set_values(chosen["params"])
        advanced.value = json.dumps(rest, indent=2) if rest else ""

    method_changed(copied.get("params", {}))
    method.on_value_change(lambda: method_changed())
    profile.on_value_change(profile_chosen)

    error = error_label("form-error")

    async def submit() -> None:
        error.text = ""
        if not name.validate():
            error.text = f"A train name is {NAME_RULE}."
            return
        if not (base.value and dataset.value and method.value):
            error.text = "Pick a base model, a dataset and a method."
            return
        if not advanced.validate():
            error.text = "The advanced JSON must be a JSON object."
            return
        try:
            chosen_profile = profiles.get(profile.value)
            params = fields.changed(set(chosen_profile["params"]) if chosen_profile else set())
        except (TypeError, ValueError) as exc:
            error.text = f"A parameter has a value of the wrong type: {exc}"
            return
        if (advanced.value or "").strip():
            params.update(json.loads(advanced.value))
        settings = {
            "name": name.value.strip(),
            "method": method.value,
            "base_model_id": base.value,
            "dataset_id": dataset.value,
            "params": params,
            "profile_id": profile.value or None,
        }
        training_id = await act(
            lambda session, principal: service.start_training(session, principal, **settings).id,
            done="Training queued",
            error_label=error,
        )
        if training_id is not None:
            ui.navigate.to(f"/trainings/{training_id}")

    with ui.row().classes("w-full gap-2 items-center"):
        start = ui.button("Start training", icon="play_arrow", on_click=submit).props(
            'no-caps data-testid="start-training"'
        )
        ui.link("Cancel", "/trainings")
    if unavailable or not ready:
        start.disable()


# -- /trainings/compare -----------------------------------------------------------------------


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
    series = []
    for training in result["trainings"]:
        points = [
            [step, value]
            for step, value in zip(result["steps"], training["values"], strict=True)
            if value is not None
        ]
        series.append(
            {
                "name": training["name"],
                "type": "line",
                "showSymbol": len(points) < 60,
                "connectNulls": True,
                "data": points,
            }
        )
    return {
        "animation": False,
        "tooltip": {"trigger": "axis"},
        "legend": {"top": 0, "type": "scroll"},
        "grid": CHART_GRID,
        "xAxis": STEP_AXIS,
        "yAxis": {"type": "value", "scale": True, "name": result["metric"]},
        "series": series,
    }


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


# -- /trainings/{id} --------------------------------------------------------------------------


def _training_detail(session, principal, training_id: str) -> dict[str, Any]:
    training = service.get_training(session, principal, training_id)
    out = TrainingOut.model_validate(training).model_dump()
    out["checkpoints"] = service.checkpoint_steps(session, principal, training_id)
    out["custom"] = training.method not in {m.name for m in all_methods()}
    models = []
    if training.customized_model_id:
        models.append(_model_link(session, principal, "customized", training.customized_model_id))
    complete_id = (training.summary or {}).get("complete_model_id")
    if complete_id:
        models.append(_model_link(session, principal, "complete", complete_id))
    out["models"] = [m for m in models if m]
    return out


def _model_link(session, principal, kind: str, model_id: str) -> dict[str, str] | None:
    """The model a training made, if it still exists."""
    try:
        if kind == "customized":
            from tuneyard.customized.service import get_customized

            name = get_customized(session, principal, model_id).name
        else:
            from tuneyard.complete.service import get_complete

            name = get_complete(session, principal, model_id).name
    except AppError:
        return None
    return {"kind": kind, "id": model_id, "name": name}


def _live(session, principal, training_id: str) -> dict[str, Any]:
    """What the live view redraws: the training's state, its metrics and its log's tail."""
    from tuneyard.jobs import service as jobs

    training = service.get_training(session, principal, training_id)
    log = ""
    if training.job_id:
        try:
            log = jobs.read_log(jobs.get_job(session, principal, training.job_id), LOG_TAIL_BYTES)
        except AppError:
            log = ""
    return {
        "status": training.status,
        "progress": training.progress,
        "eta_seconds": training.eta_seconds,
        "error": training.error,
        "metrics": service.metrics(session, principal, training_id)["series"],
        "log": log,
    }


def _line_chart(title: str, y_name: str, testid: str) -> ui.echart:
    with ui.card().classes("w-full min-w-0"):
        ui.label(title).classes("font-semibold")
        return (
            ui.echart(
                {
                    "animation": False,
                    "tooltip": {"trigger": "axis"},
                    "legend": {"top": 0, "type": "scroll"},
                    "grid": CHART_GRID,
                    "xAxis": STEP_AXIS,
                    "yAxis": {"type": "value", "scale": True, "name": y_name},
                    "series": [],
                }
            )
            .classes("w-full h-64")
            .props(f'data-testid="{testid}"')
        )


def _series(name: str, points: list) -> dict[str, Any]:
    return {
        "name": name,
        "type": "line",
        "showSymbol": len(points) < 60,
        "data": points,
    }


class LiveCharts:
    """Loss, learning rate and (for methods that have one) reward, redrawn from the metrics."""

    def __init__(self):
        with ui.element("div").classes("grid grid-cols-1 lg:grid-cols-2 gap-3 w-full"):
            self.loss = _line_chart("Loss", "loss", "loss-chart")
            self.learning_rate = _line_chart("Learning rate", "lr", "lr-chart")
            self.reward_box = ui.element("div").classes("w-full min-w-0")
        self.reward: ui.echart | None = None
        self.waiting = ui.label("No step logged yet; the charts fill in as the run goes.").classes(
            "text-grey-7 text-sm"
        )
        self.drawn: dict[str, Any] | None = None

    @staticmethod
    def _set(chart: ui.echart, series: list[dict[str, Any]]) -> None:
        chart.options["series"] = series
        chart.update()

    def draw(self, metrics: dict[str, dict[str, list]]) -> None:
        if metrics == self.drawn:
            return
        self.drawn = metrics
        train, evaluation = metrics.get("train", {}), metrics.get("eval", {})
        loss = [_series("loss", train.get("loss", []))]
        if evaluation.get("eval_loss"):
            loss.append(_series("eval_loss", evaluation["eval_loss"]))
        self._set(self.loss, loss)
        self._set(self.learning_rate, [_series("learning_rate", train.get("learning_rate", []))])
        rewards = {k: v for k, v in train.items() if "reward" in k and not k.endswith("_std")}
        if rewards:
            if self.reward is None:
                with self.reward_box:
                    self.reward = _line_chart("Reward", "reward", "reward-chart")
            self._set(self.reward, [_series(key, points) for key, points in rewards.items()])
        self.waiting.set_visibility(not train)


@console_page("/trainings/{training_id}", "Training", SECTION)
def training_page(training_id: str):
    training_tabs("/trainings")
    detail = read(lambda session, principal: _training_detail(session, principal, training_id))
    state = {"status": detail["status"], "final_drawn": False}

    with ui.row().classes("w-full items-center gap-3 flex-wrap"):
        ui.label(detail["name"]).classes("text-2xl font-semibold break-all")
        badge = status_badge(detail["status"]).props('data-testid="training-status"')
    with ui.row().classes("w-full gap-x-4 gap-y-1 flex-wrap text-grey-8 text-sm -mt-2"):
        ui.label(f"Method: {detail['method']}")
        with ui.row().classes("gap-1 items-center"):
            ui.label("Base model:")
            if detail["base_model_id"]:
                ui.link(detail["base_model_name"], f"/base-models/{detail['base_model_id']}")
            else:
                ui.label(f"{detail['base_model_name']} (deleted)")
        with ui.row().classes("gap-1 items-center"):
            ui.label("Dataset:")
            if detail["dataset_id"]:
                ui.link(detail["dataset_name"], f"/datasets/{detail['dataset_id']}")
            else:
                ui.label(f"{detail['dataset_name']} (deleted)")
        ui.label(f"Created {when(detail['created_at'])}")

    eta = ui.label("").classes("text-sm text-grey-8").props('data-testid="training-eta"')
    error = ui.label(detail["error"] or "").classes("text-negative whitespace-pre-wrap")
    error.set_visibility(bool(detail["error"]))

    @ui.refreshable
    def actions() -> None:
        status = state["status"]
        with ui.row().classes("w-full gap-2 items-center flex-wrap"):
            if status in ACTIVE:
                ui.button("Cancel training", icon="stop", on_click=cancel_training).props(
                    'no-caps color=negative outline data-testid="cancel-training"'
                )
            elif status in ("cancelled", "failed"):
                resumable = detail["base_model_id"] and detail["dataset_id"]
                resume_button = ui.button("Resume", icon="replay", on_click=resume_training).props(
                    'no-caps data-testid="resume-training"'
                )
                if not resumable:
                    resume_button.disable()
            ui.button(
                "Copy settings",
                icon="content_copy",
                on_click=lambda: ui.navigate.to(f"/trainings/new?copy_from={training_id}"),
            ).props('no-caps outline data-testid="copy-settings"')
            ui.button(
                "Compare",
                icon="stacked_line_chart",
                on_click=lambda: ui.navigate.to(f"/trainings/compare?ids={training_id}"),
            ).props("no-caps flat")
        if status in ("cancelled", "failed"):
            if not (detail["base_model_id"] and detail["dataset_id"]):
                cannot("Its base model or dataset was deleted, so it cannot resume.")
            elif detail["custom"]:
                ui.label(
                    "Custom methods keep no checkpoints: resuming runs the script from the start."
                ).classes("text-sm text-grey-8")
            elif detail["checkpoints"]:
                ui.label(
                    f"Resuming continues from the checkpoint at step {detail['checkpoints'][-1]}."
                ).classes("text-sm text-grey-8")
            else:
                ui.label("No checkpoint was written yet: resuming starts from step 0.").classes(
                    "text-sm text-grey-8"
                )

    @ui.refreshable
    def results() -> None:
        if state["status"] != "succeeded":
            return
        with ui.card().classes("w-full bg-green-1").props('flat bordered data-testid="results"'):
            ui.label("This training made:").classes("font-medium")
            if not detail["models"]:
                ui.label("Its model was deleted.").classes("text-grey-8")
            for model in detail["models"]:
                kind_label = (
                    "Customized model" if model["kind"] == "customized" else ("Complete model")
                )
                with ui.row().classes("items-center gap-2 flex-wrap"):
                    ui.label(f"{kind_label}:")
                    ui.link(model["name"], f"/{model['kind']}-models/{model['id']}").props(
                        f'data-testid="result-{model["kind"]}"'
                    ).classes("break-all")
                    ui.button(
                        "Deploy",
                        icon="rocket_launch",
                        on_click=lambda m=model: deploy(m),
                    ).props("no-caps dense flat")
            if any(m["kind"] == "customized" for m in detail["models"]):
                ui.label(
                    "Open the customized model to Save it as a complete model (merged into the "
                    "base) or Deploy it to a server."
                ).classes("text-sm text-grey-8")
            if detail["summary"]:
                shown = {k: v for k, v in detail["summary"].items() if k != "complete_model_id"}
                ui.label(
                    " · ".join(f"{key} {_short(value)}" for key, value in shown.items())
                ).classes("text-sm text-grey-8 break-all")

    @ui.refreshable
    def checkpoint_card() -> None:
        promotable = not detail["custom"] and detail["params"].get("adapter") != "full"
        if state["status"] in ACTIVE or not detail["checkpoints"] or not promotable:
            return
        with ui.card().classes("w-full").props('flat bordered data-testid="checkpoints"'):
            ui.label("Checkpoints").classes("font-semibold")
            ui.label(
                "Each kept checkpoint can become a customized model of its own, to save, deploy "
                "or chat with: an earlier step sometimes answers better than the last."
            ).classes("text-sm text-grey-8")
            with ui.row().classes("gap-2 flex-wrap"):
                for step in detail["checkpoints"]:
                    ui.button(f"Step {step}", icon="add", on_click=lambda s=step: promote(s)).props(
                        f'no-caps outline data-testid="promote-{step}"'
                    )

    async def promote(step: int) -> None:
        from tuneyard.customized.service import promote_checkpoint

        made = await act(
            lambda s, p: promote_checkpoint(s, p, training_id, step).id,
            done=f"Made a customized model from step {step}",
        )
        if made is not None:
            ui.navigate.to(f"/customized-models/{made}")

    def deploy(model: dict[str, str]) -> None:
        from tuneyard.deploy.pages import open_deploy_dialog

        open_deploy_dialog(model["kind"], model["id"], model["name"])

    async def cancel_training() -> None:
        training = await act(
            lambda s, p: service.cancel_training(s, p, training_id).status, done="Cancelling"
        )
        if training is not None:
            await refresh()

    async def resume_training() -> None:
        resumed = await act(
            lambda s, p: service.resume_training(s, p, training_id).id, done="Training resumed"
        )
        if resumed is not None:
            # A resumed run is a new job: reload so the page follows that one.
            ui.navigate.to(f"/trainings/{training_id}")

    actions()
    results()
    checkpoint_card()

    if detail["job_id"]:
        with ui.card().classes("w-full"):
            ui.label("Job").classes("font-semibold")
            JobWatch(detail["job_id"], on_finish=lambda _job: refresh(), cancellable=False)

    charts = LiveCharts()

    with ui.card().classes("w-full"):
        ui.label("Log (last lines)").classes("font-semibold")
        log = ui.log(max_lines=400).classes("w-full h-72 text-xs").props('data-testid="log-tail"')
    shown_log = {"text": None}

    parameters = ui.expansion("Parameters", icon="tune", value=True).classes("w-full")
    parameters.props('data-testid="training-parameters"')
    grid = "grid grid-cols-1 sm:grid-cols-2 lg:grid-cols-3 gap-x-4 gap-y-1 w-full"
    with parameters, ui.element("div").classes(grid):
        for key, value in detail["params"].items():
            with ui.row().classes("gap-1 min-w-0 flex-nowrap"):
                ui.label(f"{key}:").classes("text-grey-7 text-sm shrink-0")
                ui.label(_short(value)).classes("text-sm break-all")

    async def refresh() -> None:
        try:
            live = await fetch(lambda s, p: _live(s, p, training_id))
        except (SignedOut, AppError):
            timer.cancel()
            return
        charts.draw(live["metrics"])
        if live["log"] != shown_log["text"]:
            shown_log["text"] = live["log"]
            log.clear()
            log.push(
                live["log"].rstrip("\n") or "(the log is empty so far)",
                classes="whitespace-pre-wrap break-all",
            )
        eta.text = (
            f"{live['progress']:.0f}% · about {_duration(live['eta_seconds'])} left"
            if live["status"] in ACTIVE and live["eta_seconds"]
            else ""
        )
        error.text = live["error"] or ""
        error.set_visibility(bool(live["error"]))
        if live["status"] != state["status"]:
            state["status"] = live["status"]
            set_status(badge, live["status"], "training-status")
            if live["status"] not in ACTIVE:
                # The made model's id is only known once the run wrote it.
                fresh = await fetch(lambda s, p: _training_detail(s, p, training_id))
                detail.update(fresh)
            actions.refresh()
            results.refresh()
            checkpoint_card.refresh()
        if live["status"] not in ACTIVE:
            timer.active = False

    timer = ui.timer(LIVE_SECONDS, refresh, immediate=True)


# -- /training/profiles -----------------------------------------------------------------------


def _profile_row(profile) -> dict[str, Any]:
    return {
        "id": profile.id,
        "name": profile.name,
        "method": profile.method or "any",
        "params": _short(profile.params),
        "description": profile.description,
        "created": when(profile.created_at),
    }


def _params_text(params: dict[str, Any]) -> str:
    return json.dumps(params, indent=2) if params else ""


def _parse_params(text: str) -> dict[str, Any]:
    return json.loads(text) if (text or "").strip() else {}


@console_page("/training/profiles", "Training profiles", SECTION)
def profiles_page():
    training_tabs("/training/profiles")
    heading(
        "Parameter profiles",
        "Named sets of parameters to start trainings from (a profile fills the form's fields).",
    )
    method_names = read(lambda s, p: [m["name"] for m in _methods(s, p)])

    def fetch_page(session, principal, limit, offset):
        items, total = service.list_profiles(session, principal, limit, offset)
        return [_profile_row(p) for p in items], total

    with (
        ui.expansion("New profile", icon="add", value=False)
        .classes("w-full")
        .props('data-testid="new-profile"')
    ):
        with ui.element("div").classes("grid grid-cols-1 md:grid-cols-2 gap-3 w-full"):
            name = (
                ui.input(
                    "Profile name",
                    validation={"1-100 characters": lambda v: 0 < len((v or "").strip()) <= 100},
                )
                .props('outlined dense data-testid="profile-name"')
                .classes("w-full")
            )
            method = (
                ui.select(
                    {"": "Any method", **{n: n for n in method_names}}, value="", label="Method"
                )
                .props('outlined dense data-testid="profile-method"')
                .classes("w-full")
            )
        params = (
            ui.textarea(
                "Parameters (JSON object)",
                placeholder='{"learning_rate": 0.0001, "epochs": 3}',
                validation={"A JSON object": _json_object_rule},
            )
            .props('outlined autogrow data-testid="profile-params"')
            .classes("w-full font-mono")
        )
        description = (
            ui.input("Description").props('outlined dense data-testid="profile-description"')
        ).classes("w-full")

        async def create() -> None:
            if not (name.validate() and params.validate()):
                return
            created = await act(
                lambda s, p: (
                    service.create_profile(
                        s,
                        p,
                        name.value.strip(),
                        _parse_params(params.value),
                        method.value or None,
                        description.value or "",
                    ).id
                ),
                done="Profile created",
            )
            if created is not None:
                for field in (name, params, description):
                    clear(field)
                table.load(1)

        ui.button("Create profile", icon="add", on_click=create).props(
            'no-caps data-testid="create-profile"'
        )

    table = PagedTable(
        [
            column("name", "Name"),
            column("method", "Method"),
            column("params", "Parameters"),
            column("description", "Description"),
            column("created", "Created"),
        ],
        fetch_page,
        empty="No profiles yet. Create one with New profile; click a profile to edit it.",
    )
    table.table.props('data-testid="profiles-table"').classes("cursor-pointer")

    def edit(event) -> None:
        row = event.args[1] if isinstance(event.args, list) and len(event.args) > 1 else None
        if row is None:
            return
        profile = read(call(service.get_profile, row["id"]))
        current = ProfileOut.model_validate(profile).model_dump()
        with (
            ui.dialog() as dialog,
            ui.card().classes("w-full max-w-lg").props('data-testid="edit-profile"'),
        ):
            ui.label(f"Edit profile {current['name']}").classes("text-lg font-semibold")
            ui.label(f"Method: {current['method'] or 'any'}").classes("text-sm text-grey-8")
            new_name = (
                ui.input(
                    "Profile name",
                    value=current["name"],
                    validation={"1-100 characters": lambda v: 0 < len((v or "").strip()) <= 100},
                )
                .props("outlined dense")
                .classes("w-full")
            )
            new_params = (
                ui.textarea(
                    "Parameters (JSON object)",
                    value=_params_text(current["params"]),
                    validation={"A JSON object": _json_object_rule},
                )
                .props("outlined autogrow")
                .classes("w-full font-mono")
            )
            new_description = (
                ui.input("Description", value=current["description"])
                .props("outlined dense")
                .classes("w-full")
            )

            async def save() -> None:
                if not (new_name.validate() and new_params.validate()):
                    return
                saved = await act(
                    lambda s, p: (
                        service.update_profile(
                            s,
                            p,
                            current["id"],
                            name=new_name.value.strip(),
                            params=_parse_params(new_params.value),
                            description=new_description.value or "",
                        ).id
                    ),
                    done="Profile saved",
                )
                if saved is not None:
                    dialog.close()
                    table.load()

            async def remove() -> None:
                await act(call(service.delete_profile, current["id"]), done="Profile deleted")
                dialog.close()
                table.load(1)

            with ui.row().classes("w-full justify-between gap-2 flex-wrap"):
                ui.button(
                    "Delete",
                    icon="delete",
                    on_click=lambda: confirm(
                        f"Delete profile {current['name']}?",
                        "Only the profile goes: trainings started with it keep their parameters "
                        "and models.",
                        "Delete profile",
                        remove,
                    ),
                ).props('flat color=negative no-caps data-testid="delete-profile"')
                with ui.row().classes("gap-2"):
                    ui.button("Close", on_click=dialog.close).props("flat no-caps")
                    ui.button("Save", on_click=save).props('no-caps data-testid="save-profile"')
        dialog.open()

    table.table.on("row-click", edit)


# -- /training/methods ------------------------------------------------------------------------


def _own_parameters(method: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A method's parameters beyond the common ones, or whose default it changes."""
    common = CommonParams.model_json_schema()["properties"]
    return {
        name: spec
        for name, spec in _parameters(method["params_schema"]).items()
        if name not in common or spec.get("default") != common[name].get("default")
    }


def method_card(method: dict[str, Any], on_delete: Callable[[str], None] | None) -> None:
    """One method: what it does, what it trains on, its own parameters; delete if uploaded."""
    card = ui.card().classes("w-full min-w-0").props(f'data-testid="method-{method["name"]}"')
    with card, ui.row().classes("items-center gap-2 flex-wrap"):
        ui.label(method["name"]).classes("text-lg font-semibold")
        ui.badge(
            "custom" if method["custom"] else "built-in",
            color="accent" if method["custom"] else "primary",
        )
        if method["custom"]:
            ui.label(f"makes: {method['result']}").classes("text-sm text-grey-8")
    with card:
        if method["title"] != method["name"]:
            ui.label(method["title"]).classes("font-medium")
        ui.label(method["description"]).classes("text-grey-8")
        formats = " or ".join(method["dataset_formats"])
        ui.label(f"Trains on {formats} datasets.").classes("text-sm")
        own = _own_parameters(method)
        if own:
            with ui.expansion(f"Its own parameters ({len(own)})").classes("w-full"):
                parameter_table(own, f"params-{method['name']}")
        if not method["custom"]:
            return
        ui.label(f"sha256 {method['digest']}").classes("text-xs text-grey-7 break-all")
        if on_delete is not None:
            ui.button("Delete", icon="delete", on_click=lambda: on_delete(method["name"])).props(
                "flat dense color=negative no-caps"
            )


@console_page("/training/methods", "Training methods", SECTION)
def methods_page():
    training_tabs("/training/methods")
    heading(
        "Training methods",
        "The built-in methods and the ones uploaded to this project, with their parameters.",
    )
    refusal = read(lambda _s, principal: custom.code_upload_refusal(principal))

    with (
        ui.expansion("Parameters every method shares", icon="list")
        .classes("w-full")
        .props('data-testid="common-params"')
    ):
        parameter_table(CommonParams.model_json_schema()["properties"], "common-params-table")

    @ui.refreshable
    def method_list() -> None:
        methods = read(_methods)
        with ui.element("div").classes("grid grid-cols-1 md:grid-cols-2 gap-3 w-full"):
            for method in methods:
                method_card(method, ask_delete if refusal is None else None)

    def ask_delete(name: str) -> None:
        async def go() -> None:
            await act(call(custom.delete_method, name), done=f"Method {name} deleted")
            method_list.refresh()

        confirm(
            f"Delete training method {name}?",
            "Its script is removed. Trainings already made with it keep their parameters, "
            "metrics and models; they cannot be resumed unless it is uploaded again.",
            "Delete method",
            go,
        )

    method_list()

    with ui.card().classes("w-full").props('data-testid="upload-method"'):
        ui.label("Upload a training method").classes("text-lg font-semibold")
        ui.label(
            "One Python file: it sets DESCRIPTION, FORMATS, RESULT and PARAMETERS as plain "
            "literals and defines train(config, output_dir, report). See the README's custom "
            "methods section."
        ).classes("text-sm text-grey-8")
        if refusal is not None:
            cannot(refusal)
        else:
            method_name = (
                ui.input(
                    "Method name",
                    validation={
                        "A lowercase letter, then lowercase letters, digits, '_' or '-'": (
                            lambda v: bool(custom.NAME_RE.fullmatch(v or ""))
                        )
                    },
                )
                .props('outlined dense data-testid="method-name"')
                .classes("w-full sm:w-80")
            )
            method_error = error_label("method-error")

            async def method_uploaded(event) -> None:
                method_error.text = ""
                method_upload.reset()
                if not method_name.validate():
                    method_error.text = "Give the method a valid name first, then upload again."
                    return
                source = await event.file.read()
                name = method_name.value
                added = await act(
                    lambda s, p: custom.add_method(s, p, name, source).name,
                    done=f"Method {name} added",
                    error_label=method_error,
                )
                if added is not None:
                    clear(method_name)
                    method_list.refresh()

            method_upload = script_upload(
                "Method script (.py)",
                custom.MAX_SCRIPT_BYTES,
                "A method script is at most 1 MB of Python.",
                "method-upload",
                method_uploaded,
            )

    reward_files(refusal)


def reward_files(refusal: str | None) -> None:
    """GRPO reward files: Python functions a grpo training names as rewards=['file:NAME'].
    `refusal` says why this user may not upload them (None: they may)."""
    with ui.card().classes("w-full").props('data-testid="reward-files"'):
        ui.label("GRPO reward files").classes("text-lg font-semibold")
        ui.label(
            "A reward file defines def reward(completions, **columns) returning one score per "
            'completion; a grpo training uses it with rewards: ["file:NAME"].'
        ).classes("text-sm text-grey-8")

        @ui.refreshable
        def listing() -> None:
            names = read(lambda _s, principal: service.list_reward_files(principal))
            if not names:
                ui.label("No reward files yet.").classes("text-grey-7")
                return
            with ui.row().classes("gap-2 flex-wrap").props('data-testid="reward-file-list"'):
                for name in names:
                    ui.chip(f"file:{name}", icon="functions").props("outline")

        listing()
        if refusal is not None:
            cannot(refusal)
            return
        reward_name = (
            ui.input(
                "Reward file name (empty: the file's name)",
                validation={
                    "1-64 letters, digits, '_' or '-'": lambda v: (
                        not v or bool(service.REWARD_NAME_RE.fullmatch(v))
                    )
                },
            )
            .props('outlined dense data-testid="reward-name"')
            .classes("w-full sm:w-80")
        )
        reward_error = error_label("reward-error")

        async def reward_uploaded(event) -> None:
            reward_error.text = ""
            reward_upload.reset()
            if not reward_name.validate():
                return
            name = reward_name.value or event.file.name.rsplit(".", 1)[0]
            source = await event.file.read()
            saved = await act(
                lambda _s, p: service.save_reward_file(p, name, source),
                done=f"Reward file {name} saved",
                error_label=reward_error,
            )
            if saved is not None:
                clear(reward_name)
                listing.refresh()

        reward_upload = script_upload(
            "Reward file (.py)",
            1_000_000,
            "A reward file is at most 1 MB of Python.",
            "reward-upload",
            reward_uploaded,
        )
