"""Keeps the llama.cpp servers Tuneyard runs alive: restarts one whose process died."""

from __future__ import annotations

import logging
import threading

from tuneyard.config import Settings, get_settings
from tuneyard.db import session_scope

log = logging.getLogger(__name__)


def supervise_once(settings: Settings | None = None) -> list[str]:
    """Restart every managed llama.cpp server that has live models but no process.
    Returns the names of the environments restarted."""
    from tuneyard.deploy.environments import managed_environments_serving
    from tuneyard.deploy.targets import LlamaCppTarget

    target = LlamaCppTarget()
    with session_scope(settings) as session:
        environments = managed_environments_serving(session)
        session.expunge_all()
    restarted = []
    for environment in environments:
        try:
            if target.server(environment).ensure_running():
                log.warning("restarted the llama.cpp server of environment %s", environment.name)
                restarted.append(environment.name)
        except Exception:
            log.exception("could not restart the llama.cpp server of %s", environment.name)
    return restarted


class Supervisor:
    """A daemon thread that runs supervise_once every `interval` seconds."""

    def __init__(self, interval: float = 30.0, settings: Settings | None = None):
        self.interval = interval
        self.settings = settings or get_settings()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tuneyard-supervisor", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                supervise_once(self.settings)
            except Exception:
                log.exception("supervising serving tools failed; retrying")
            self._stop.wait(self.interval)
