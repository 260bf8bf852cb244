"""The executor a worker runs, by the `executor` setting: local processes, or a Ray cluster."""

from __future__ import annotations

from tuneyard.config import Settings, get_settings
from tuneyard.jobs.executor import Executor


def new_executor(settings: Settings | None = None, concurrency: int | None = None) -> Executor:
    """An executor for this installation (Ray is imported only when it is the one chosen)."""
    settings = settings or get_settings()
    if settings.executor == "ray":
        from tuneyard.jobs.ray_executor import RayExecutor

        return RayExecutor(settings, concurrency)
    return Executor(settings, concurrency)
