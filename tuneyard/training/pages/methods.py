"""The training methods page (/training/methods): built-in and uploaded methods with their
parameters, uploading a method, and GRPO reward files."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from nicegui import ui

from tuneyard.console.schema_form import parameter_table, schema_parameters
from tuneyard.console.session import act, call, read
from tuneyard.console.shell import console_page
from tuneyard.console.widgets import cannot, clear, confirm, error_label, heading
from tuneyard.training import custom, service
from tuneyard.training.pages.frame import SECTION, method_views, training_tabs
from tuneyard.training.params import CommonParams


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


def _own_parameters(method: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A method's parameters beyond the common ones, or whose default it changes."""
    common = CommonParams.model_json_schema()["properties"]
    return {
        name: spec
        for name, spec in schema_parameters(method["params_schema"]).items()
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
        methods = read(method_views)
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
