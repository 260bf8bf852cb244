"""The system prompt and sampling parameters of a chat, checked against ChatParams' own
limits as they are typed."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from nicegui import ui
from nicegui.elements.mixins.validation_element import ValidationElement
from pydantic import ValidationError

from tuneyard.chat.schemas import DEFAULT_SYSTEM_PROMPT, ChatParams


def _limits(name: str) -> dict[str, Any]:
    """ChatParams' own bounds for a field (ge, gt, le, max_length), so the form never drifts."""
    limits: dict[str, Any] = {}
    for item in ChatParams.model_fields[name].metadata:
        for key in ("ge", "gt", "le", "max_length"):
            if getattr(item, key, None) is not None:
                limits[key] = getattr(item, key)
    return limits


def _number_rule(label: str, name: str, *, whole: bool, optional: bool) -> dict[str, Callable]:
    limits = _limits(name)
    if "gt" in limits:
        span = f"above {limits['gt']:g} and at most {limits['le']:g}"
    elif "ge" in limits and "le" in limits:
        span = f"between {limits['ge']:g} and {limits['le']:g}"
    else:
        span = "a number"
    kind = "a whole number " if whole and "ge" in limits else ""
    message = f"{label} must be {kind}{span}" + (", or empty" if optional else "")

    def valid(value: Any) -> bool:
        if value is None or value == "":
            return optional
        if whole and float(value) != int(float(value)):
            return False
        value = float(value)
        if "ge" in limits and value < limits["ge"]:
            return False
        if "gt" in limits and value <= limits["gt"]:
            return False
        return not ("le" in limits and value > limits["le"])

    return {message: valid}


class ParamsForm:
    """System prompt and sampling parameters, checked against ChatParams' limits as typed."""

    def __init__(self, values: dict[str, Any] | None = None, *, with_system: bool = True):
        defaults = {**ChatParams().model_dump(), "system": DEFAULT_SYSTEM_PROMPT}
        # A stored chat's own values, its empty system prompt included.
        values = {**defaults, **{k: v for k, v in (values or {}).items() if k in defaults}}
        self.system = None
        if with_system:
            self.system = (
                ui.textarea("System prompt", value=values["system"] or "")
                .props('outlined dense autogrow data-testid="system-prompt"')
                .classes("w-full")
            )

        def number(label: str, name: str, step: float, *, whole: bool, optional: bool = False):
            rule = _number_rule(label, name, whole=whole, optional=optional)
            return ui.number(label, value=values[name], step=step, validation=rule)

        with ui.element("div").classes("grid grid-cols-2 sm:grid-cols-3 gap-2 w-full"):
            self.temperature = number("Temperature", "temperature", 0.1, whole=False)
            self.top_p = number("Top p", "top_p", 0.05, whole=False)
            self.top_k = number("Top k", "top_k", 1, whole=True, optional=True)
            self.max_tokens = number("Max tokens", "max_tokens", 1, whole=True)
            self.seed = ui.number(
                "Seed",
                value=values["seed"],
                step=1,
                validation={
                    "Seed must be a whole number, or empty": lambda v: (
                        v in (None, "") or float(v) == int(float(v))
                    )
                },
            )
        most = _limits("stop").get("max_length", 8)
        self.stop = (
            ui.input_chips(
                "Stop strings",
                value=list(values["stop"] or []),
                new_value_mode="add-unique",
                validation={f"At most {most} stop strings": lambda v: len(v or []) <= most},
            )
            .props("outlined dense hint='Press Enter after each'")
            .classes("w-full")
        )
        for field in self.numbers:
            field.props("outlined dense").classes("w-full")

    @property
    def numbers(self) -> tuple[ui.number, ...]:
        return (self.temperature, self.top_p, self.top_k, self.max_tokens, self.seed)

    def values(self) -> ChatParams | None:
        """The parameters, or None (the fields show why) when one is out of range."""
        fields: list[ValidationElement] = [*self.numbers, self.stop]
        if not all([field.validate() for field in fields]):
            ui.notify("Fix the parameters marked in red first.", type="warning")
            return None

        def whole(value: Any) -> int | None:
            return None if value in (None, "") else int(value)

        system = (self.system.value or "").strip() if self.system is not None else ""
        try:
            return ChatParams(
                system=system or None,
                temperature=float(self.temperature.value),
                top_p=float(self.top_p.value),
                top_k=whole(self.top_k.value),
                max_tokens=whole(self.max_tokens.value),
                seed=whole(self.seed.value),
                stop=list(self.stop.value or []) or None,
            )
        except (ValidationError, TypeError, ValueError) as exc:
            ui.notify(f"Check the parameters: {exc}", type="warning", multi_line=True)
            return None
