"""The console's home: counts, the next step in the lifecycle, recent trainings, usage, and
the workers that run the jobs."""

from __future__ import annotations

from nicegui import ui

from tuneyard.console.session import read
from tuneyard.console.shell import console_page
from tuneyard.console.widgets import heading, when
from tuneyard.dashboard import service
from tuneyard.jobs.pages import recent_jobs

TILES = (
    ("base_models", "Base models", "/base-models"),
    ("datasets", "Datasets", "/datasets"),
    ("trainings", "Trainings", "/trainings"),
    ("customized_models", "Customized models", "/customized-models"),
    ("complete_models", "Complete models", "/complete-models"),
    ("live_models", "Live models", "/live-models"),
    ("third_party_models", "Third-party models", "/third-party-models"),
    ("deploy_environments", "Deployment environments", "/deploy-environments"),
)

# The lifecycle as steps: (count that shows it is done, what to do, where).
STEPS = (
    ("base_models", "Register a base model", "/base-models"),
    ("datasets", "Upload a dataset", "/datasets"),
    ("trainings", "Start a training", "/trainings/new"),
    ("customized_models", "Get a customized model (a finished training)", "/trainings"),
    ("deploy_environments", "Add a deployment environment", "/deploy-environments"),
    ("live_models", "Deploy a model", "/customized-models"),
)

STATUS_SERIES = (
    ("succeeded", "#21ba45"),
    ("failed", "#c10015"),
    ("running", "#1976d2"),
    ("queued", "#9e9e9e"),
    ("cancelled", "#f2c037"),
)


@console_page("/", "Dashboard", "/")
def dashboard_page():
    data = read(service.overview)
    counts = data["counts"]
    heading("Dashboard", "Your project at a glance.")
    with ui.element("div").classes("grid grid-cols-2 md:grid-cols-4 gap-3 w-full"):
        for key, label, target in TILES:
            # One `with`: the card is made after the link is entered, so it goes inside.
            with (
                ui.link(target=target).classes("no-underline text-inherit"),
                ui.card().classes("p-3 hover:shadow-md").props(f'data-testid="count-{key}"'),
            ):
                ui.label(str(counts[key])).classes("text-3xl font-semibold text-primary")
                ui.label(label).classes("text-grey-8")
    pending = [(label, target) for key, label, target in STEPS if not counts[key]]
    if pending:
        with ui.card().classes("w-full bg-amber-1").props("flat bordered"):
            ui.label("Next steps").classes("text-lg font-semibold")
            for label, target in pending[:3]:
                ui.link(label, target)
    with ui.element("div").classes("grid grid-cols-1 md:grid-cols-2 gap-3 w-full"):
        with ui.card().classes("w-full"):
            ui.label("Trainings, last 7 days").classes("font-semibold")
            days = data["trainings_per_day"]
            ui.echart(
                {
                    "tooltip": {"trigger": "axis"},
                    "legend": {"bottom": 0},
                    "grid": {"left": 30, "right": 10, "top": 10, "bottom": 80},
                    "xAxis": {"type": "category", "data": [d["day"][5:] for d in days]},
                    "yAxis": {"type": "value", "minInterval": 1},
                    "series": [
                        {
                            "name": status,
                            "type": "bar",
                            "stack": "all",
                            "color": color,
                            "data": [d.get(status, 0) for d in days],
                        }
                        for status, color in STATUS_SERIES
                    ],
                }
            ).classes("w-full h-64").props('data-testid="trainings-chart"')
        with ui.card().classes("w-full"):
            ui.label("Base model usage").classes("font-semibold")
            usage = data["base_model_usage"]
            if not usage:
                ui.label("No base models yet.").classes("text-grey-7")
            else:
                names = [u["base_model"] for u in reversed(usage)]
                ui.echart(
                    {
                        "tooltip": {"trigger": "axis"},
                        "legend": {"bottom": 0},
                        "grid": {
                            "left": 10,
                            "right": 10,
                            "top": 10,
                            "bottom": 50,
                            "containLabel": True,
                        },
                        "xAxis": {"type": "value", "minInterval": 1},
                        "yAxis": {"type": "category", "data": names},
                        "series": [
                            {
                                "name": "trainings",
                                "type": "bar",
                                "data": [u["trainings"] for u in reversed(usage)],
                            },
                            {
                                "name": "customized models",
                                "type": "bar",
                                "data": [u["customized_models"] for u in reversed(usage)],
                            },
                        ],
                    }
                ).classes("w-full h-64").props('data-testid="usage-chart"')
    workers_card(data["workers"])
    with ui.card().classes("w-full").props('data-testid="recent-jobs"'):
        ui.label("Recent jobs").classes("font-semibold")
        recent_jobs()


def workers_card(workers: list[dict]) -> None:
    """The live workers by host, each with the jobs it runs."""
    with ui.card().classes("w-full").props('data-testid="workers"'):
        ui.label(f"Workers ({len(workers)} alive)").classes("font-semibold")
        if not workers:
            ui.label(
                "No worker is running: jobs wait in the queue. Start one with `tuneyard worker`."
            ).classes("text-grey-7")
        for worker in workers:
            with ui.row().classes("w-full items-baseline gap-3").props('data-testid="worker"'):
                ui.label(worker["host"]).classes("font-medium")
                ui.label(f"up since {when(worker['started_at'])}").classes("text-grey-7")
                if not worker["jobs"] and not worker["other_projects_jobs"]:
                    ui.label("idle").classes("text-grey-7")
                for job in worker["jobs"]:
                    ui.link(f"{job['kind']} · {job['message']}", f"/jobs/{job['id']}")
                if worker["other_projects_jobs"]:
                    ui.label(f"{worker['other_projects_jobs']} job(s) of other projects")
