"""Finding, starting and stopping the inference process from other processes (the API, the CLI,
jobs): one per data dir, recorded in `<data_dir>/inference/state.json`.

Nothing here imports torch: callers stay light, and the process does the heavy loading.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import psutil

from tuneyard.config import Settings, get_settings
from tuneyard.errors import Unavailable
from tuneyard.processes import stop_process

SERVER_MODULE = "tuneyard.inference.server"
STATE_FILE = "state.json"
LOG_FILE = "server.log"
LOCK_FILE = ".lock"
HEALTH_TIMEOUT_SECONDS = 5.0
LOG_TAIL_CHARS = 4000
# torch's OpenMP threads spin 300,000 rounds waiting for work by default. When other processes
# want the same cores (the API, a training job), the spinning threads crowd out the one they
# wait for: SmolLM2-135M generation on 2 cores beside two busy processes fell from 21-22 tokens/s
# (alone) to 0.9-1.1. Spinning 10,000 rounds kept 22.6-23.1 alone and gave 5.8-9.6 beside them.
# A value in the caller's environment wins.
OPENMP_ENV = {"GOMP_SPINCOUNT": "10000"}


def inference_dir(settings: Settings | None = None) -> Path:
    return (settings or get_settings()).data_dir / "inference"


def inference_state_file(settings: Settings | None = None) -> Path:
    return inference_dir(settings) / STATE_FILE


def running_inference(settings: Settings | None = None) -> tuple[str, str] | None:
    """(base_url, token) of the recorded inference process if it is alive and answers /health.
    base_url is http://127.0.0.1:<port>: the OpenAI-compatible API is under <base_url>/v1."""
    state = _read_state(settings)
    if state is None or _server_process(state) is None:
        return None
    root = f"http://127.0.0.1:{state['port']}"
    try:
        response = httpx.get(
            f"{root}/health",
            headers={"Authorization": f"Bearer {state['token']}"},
            timeout=HEALTH_TIMEOUT_SECONDS,
        )
    except httpx.HTTPError:
        return None
    if response.status_code != 200:
        return None
    return root, state["token"]


def start_inference(settings: Settings | None = None, timeout: float = 60) -> tuple[str, str]:
    """Start the inference process (detached from the caller's terminal and process group) and
    wait until it answers; the one already running if there is one. Its log is
    <data_dir>/inference/server.log."""
    settings = settings or get_settings()
    with _locked(settings):
        running = running_inference(settings)
        if running is not None:
            return running
        # A recorded process that is alive but does not answer must not linger beside a new one.
        _stop_recorded(settings)
        log_path = inference_dir(settings) / LOG_FILE
        log_start = log_path.stat().st_size if log_path.exists() else 0
        process = _spawn(settings, log_path)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            code = process.poll()
            if code is not None:
                raise Unavailable(
                    f"The inference process exited (code {code}) as it started. The end of "
                    f"its log ({log_path}):\n{_log_tail(log_path, log_start)}"
                )
            state = _read_state(settings)
            if state is not None and state.get("pid") == process.pid:
                running = running_inference(settings)
                if running is not None:
                    return running
            time.sleep(0.1)
        process.kill()
        process.wait()
        raise Unavailable(
            f"The inference process did not answer within {timeout:g} s, so it was stopped. "
            f"The end of its log ({log_path}):\n{_log_tail(log_path, log_start)}"
        )


def stop_inference(settings: Settings | None = None) -> None:
    """Stop the inference process (SIGTERM, then SIGKILL after a grace period)."""
    settings = settings or get_settings()
    with _locked(settings):
        _stop_recorded(settings)


def ensure_inference(settings: Settings | None = None) -> tuple[str, str]:
    """(base_url, token) of the running inference process, started if it is not."""
    return running_inference(settings) or start_inference(settings)


def _spawn(settings: Settings, log_path: Path) -> subprocess.Popen:
    env = {
        **OPENMP_ENV,
        **os.environ,
        "TUNEYARD_DATA_DIR": str(settings.data_dir),
        "TUNEYARD_INFERENCE_MEMORY_GB": str(settings.inference_memory_gb),
    }
    with log_path.open("ab") as log:
        log.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting\n".encode())
        log.flush()
        # Its own session: Ctrl-C in the caller's terminal, or a job killed with its process
        # group, does not take the models down with it.
        return subprocess.Popen(
            [sys.executable, "-m", SERVER_MODULE],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )


def _read_state(settings: Settings | None) -> dict | None:
    try:
        state = json.loads(inference_state_file(settings).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(state, dict) or not {"pid", "port", "token"} <= state.keys():
        return None
    return state


def _server_process(state: dict) -> psutil.Process | None:
    """The recorded process if it is alive and is the inference server (not a reused pid)."""
    try:
        process = psutil.Process(state["pid"])
        if process.status() == psutil.STATUS_ZOMBIE:
            return None
        if SERVER_MODULE in process.cmdline():
            return process
    except (psutil.Error, TypeError, ValueError):
        pass
    return None


def _stop_recorded(settings: Settings) -> None:
    state = _read_state(settings)
    process = _server_process(state) if state is not None else None
    if process is not None:
        stop_process(process)
    inference_state_file(settings).unlink(missing_ok=True)


@contextmanager
def _locked(settings: Settings) -> Iterator[None]:
    """One caller at a time starts or stops the process, across processes."""
    folder = inference_dir(settings)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    with (folder / LOCK_FILE).open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _log_tail(log_path: Path, start: int) -> str:
    try:
        with log_path.open("rb") as log:
            log.seek(start)
            text = log.read().decode(errors="replace").strip()
    except OSError:
        return "(no log)"
    return text[-LOG_TAIL_CHARS:] or "(it wrote nothing)"
