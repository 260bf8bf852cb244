"""Forms and tables built from a JSON schema's properties: one input per parameter, in the
schema's order, with its default, bounds and description; and the values read back typed."""

from __future__ import annotations

import json
from collections.abc import Collection
from typing import Any

from nicegui import ui
from nicegui.elements.mixins.value_element import ValueElement

from tuneyard.console.widgets import column


def value_text(value: Any) -> str:
    """A parameter's value as one short line: lists and objects inline, floats to 6 digits."""
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, list):
        return ", ".join(value_text(item) for item in value) or "[]"
    if isinstance(value, dict):
        return ", ".join(f"{key}={value_text(item)}" for key, item in value.items())
    return "" if value is None else str(value)


def schema_parameters(schema: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The parameters a JSON schema describes: name -> its schema (type, default, ...)."""
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
    """Parameters as a reference table: name, type, default and what each does."""
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
            "default": value_text(spec.get("default")),
            "description": spec.get("description", ""),
        }
        for name, spec in parameters.items()
    ]
    ui.table(columns=columns, rows=rows, row_key="name").props(
        f'flat dense wrap-cells hide-bottom data-testid="{testid}" :rows-per-page-options="[0]"'
    ).classes("w-full")


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


def is_json_object_or_empty(text: str | None) -> bool:
    """A validation rule for a JSON field that may be left empty."""
    if not text or not text.strip():
        return True
    try:
        return isinstance(json.loads(text), dict)
    except json.JSONDecodeError:
        return False


class ParameterFields:
    """One input per parameter of a schema, in the schema's order, defaults filled in."""

    def __init__(self, container: ui.element):
        self.container = container
        self.specs: dict[str, dict[str, Any]] = {}
        self.inputs: dict[str, ValueElement] = {}

    def build(self, schema: dict[str, Any], values: dict[str, Any]) -> None:
        self.container.clear()
        self.specs = schema_parameters(schema)
        self.inputs = {}
        with self.container:
            for name, spec in self.specs.items():
                value = _display_value(spec, values.get(name, spec.get("default")))
                self.inputs[name] = self._field(name, spec, value)

    @staticmethod
    def _field(name: str, spec: dict[str, Any], value: Any) -> ValueElement:
        description = spec.get("description", "")
        options = spec.get("enum") or ([spec["const"]] if "const" in spec else None)
        kind = spec.get("type")
        field: ValueElement
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

    def changed(self, always: Collection[str] = frozenset()) -> dict[str, Any]:
        """The parameters that differ from the method's defaults (or are named in `always`)."""
        return {
            name: value
            for name, value in self.values().items()
            if name in always or value != self.specs[name].get("default")
        }
