"""Mounting the console on the API's FastAPI app (once per process: NiceGUI is global)."""

from __future__ import annotations

import importlib
import os

from fastapi import FastAPI
from fastapi.responses import RedirectResponse

from tuneyard.secrets import derived_secret
from tuneyard.storage import Layout

MOUNT_PATH = "/console"

# Each module registers its pages with @ui.page when imported.
PAGE_MODULES = (
    "tuneyard.console.login",
    "tuneyard.console.downloads",
    "tuneyard.dashboard.pages",
    "tuneyard.jobs.pages",
    "tuneyard.basemodels.pages",
    "tuneyard.datasets.pages",
    "tuneyard.training.pages",
    "tuneyard.customized.pages",
    "tuneyard.complete.pages",
    "tuneyard.deploy.pages",
    "tuneyard.thirdparty.pages",
    "tuneyard.chat.pages",
    "tuneyard.knowledge.pages",
    "tuneyard.images.pages",
    "tuneyard.assessment.pages",
    "tuneyard.auth.pages",
)


def mount_console(app: FastAPI) -> None:
    """Serve the console under /console (and send / there)."""
    layout = Layout()
    storage_dir = layout.root / "console"
    storage_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    # NiceGUI reads where to keep per-user storage when it is imported.
    os.environ["NICEGUI_STORAGE_PATH"] = str(storage_dir)
    from nicegui import app as nicegui_app
    from nicegui import ui

    nicegui_app.storage.path = storage_dir
    for module in PAGE_MODULES:
        importlib.import_module(module)

    @app.get("/", include_in_schema=False)
    def root():
        return RedirectResponse(f"{MOUNT_PATH}/")

    ui.run_with(
        app,
        mount_path=MOUNT_PATH,
        title="Tuneyard",
        # Signs the console's session cookie; restarts keep people signed in.
        storage_secret=derived_secret("tuneyard-console"),
        show_welcome_message=False,
        favicon="🧵",
        reconnect_timeout=10.0,
    )
