"""Stopping the long-lived processes Tuneyard starts (llama.cpp servers, the inference process)."""

from __future__ import annotations

import psutil

STOP_GRACE_SECONDS = 10.0


def stop_process(process: psutil.Process, grace: float = STOP_GRACE_SECONDS) -> None:
    """SIGTERM, then SIGKILL if it is still there after `grace` seconds; gone already is fine."""
    try:
        process.terminate()
        process.wait(grace)
    except psutil.TimeoutExpired:
        process.kill()
        process.wait(grace)
    except psutil.NoSuchProcess:
        pass
