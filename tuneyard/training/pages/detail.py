"""One training's page (/trainings/{id}): live status, charts and log; resume, copy, promote a
checkpoint, and the models it made."""

from __future__ import annotations

from typing import Any

from nicegui import ui

from tuneyard.console.charts import LiveCharts
from tuneyard.console.deploy_dialog import open_deploy_dialog
from tuneyard.console.jobs import JobWatch
from tuneyard.console.schema_form import value_text
from tuneyard.console.session import SignedOut, act, fetch, read
from tuneyard.console.shell import console_page
from tuneyard.console.widgets import cannot, set_status, status_badge, when
from tuneyard.errors import AppError
from tuneyard.training import service
from tuneyard.training.methods import all_methods
from tuneyard.training.pages.frame import ACTIVE, SECTION, training_tabs
from tuneyard.training.schemas import TrainingOut

LIVE_SECONDS = 2.0
LOG_TAIL_BYTES = 16_000


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


def effective_batch_text(params: dict[str, Any]) -> str:
    """Records per optimiser step, and how they are made up."""
    batch, workers = params["batch_size"], params.get("workers", 1)
    accum = params.get("grad_accum_steps", 1)
    total = batch * workers * accum
    return f"{total} ({batch} per worker x {workers} workers x {accum} accumulated)"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    seconds = int(seconds)
    minutes, seconds = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m" if hours else f"{minutes}m {seconds:02d}s"


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
                    " · ".join(f"{key} {value_text(value)}" for key, value in shown.items())
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
                ui.label(value_text(value)).classes("text-sm break-all")
        if "batch_size" in detail["params"]:
            with ui.row().classes("gap-1 min-w-0 flex-nowrap"):
                ui.label("effective batch:").classes("text-grey-7 text-sm shrink-0")
                ui.label(effective_batch_text(detail["params"])).classes("text-sm")

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
