"""The image process, seen from jobs: one per data dir, started on demand, keeping the last
pipeline loaded so the next request does not load it again; it ends itself after
TUNEYARD_IMAGE_PROCESS_IDLE_SECONDS without work.

Jobs talk to it over an abstract Unix socket named after the data dir (multiprocessing's
connections, with a key in `<data_dir>/images/process/` only the data dir's owner can read).
Nothing here imports torch.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from multiprocessing.connection import Client, Connection
from pathlib import Path
from typing import Any

from tuneyard.config import Settings, get_settings
from tuneyard.errors import Unavailable

SERVER_MODULE = "tuneyard.images.server"
POLL_SECONDS = 0.1
START_TIMEOUT_SECONDS = 120.0


class RemoteFailed(Exception):
    """The image process could not make the image; the message says why."""


def process_dir(settings: Settings | None = None) -> Path:
    return (settings or get_settings()).data_dir / "images" / "process"


def address(settings: Settings | None = None) -> str:
    """The socket's abstract name (no file, so no path length limit and nothing to remove)."""
    root = str((settings or get_settings()).data_dir.resolve())
    return f"\0tuneyard-images-{hashlib.sha256(root.encode()).hexdigest()[:24]}"


def authkey(settings: Settings | None = None) -> bytes:
    """The key a connection proves itself with, made once per data dir (owner-only)."""
    path = process_dir(settings) / "authkey"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_hex(32))
    return path.read_text().strip().encode()


def pid_of_running(settings: Settings | None = None) -> int | None:
    """The image process's pid, if one was started and still lives."""
    path = process_dir(settings) / "pid"
    try:
        pid = int(path.read_text())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


def _try_connect(settings: Settings) -> Connection | None:
    try:
        return Client(address(settings), family="AF_UNIX", authkey=authkey(settings))
    except (OSError, EOFError):
        return None


@contextmanager
def connection(settings: Settings | None = None) -> Iterator[Connection]:
    """A connection to the image process, started first if none answers."""
    settings = settings or get_settings()
    conn = _try_connect(settings)
    if conn is None:
        folder = process_dir(settings)
        folder.mkdir(parents=True, exist_ok=True)
        with (folder / ".lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            conn = _try_connect(settings)
            if conn is None:
                conn = _start(settings)
    try:
        yield conn
    finally:
        conn.close()


def _start(settings: Settings) -> Connection:
    folder = process_dir(settings)
    authkey(settings)
    with (folder / "server.log").open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", SERVER_MODULE],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        conn = _try_connect(settings)
        if conn is not None:
            return conn
        time.sleep(POLL_SECONDS)
    tail = (folder / "server.log").read_text(errors="replace")[-2000:]
    raise Unavailable(f"The image process did not start; its log ends:\n{tail}")


def release_remote(settings: Settings | None = None) -> bool:
    """Ask a running image process to drop its loaded pipeline (a training on this machine
    needs the memory); True if it held one. Starts no process; waits while it serves a
    generation, since it serves one request at a time."""
    conn = _try_connect(settings or get_settings())
    if conn is None:
        return False
    with conn:
        conn.send("release")
        return bool(conn.recv().get("released"))


def generate_remote(
    request: dict[str, Any],
    on_step: Callable[[int], None],
    cancelled: Callable[[], bool],
    settings: Settings | None = None,
) -> dict[str, Any] | None:
    """Ask the image process for one image: `on_step` hears each step; once `cancelled()`
    says so, the process is told to stop at its next step. Returns the PNG (`png`), its
    `width` and `height`, and whether the pipeline was already loaded (`reused`); None once
    cancelled."""
    with connection(settings) as conn:
        conn.send(request)
        while True:
            if cancelled():
                conn.send("cancel")
                return None
            if not conn.poll(POLL_SECONDS):
                continue
            message = conn.recv()
            if "step" in message:
                on_step(int(message["step"]))
            elif "error" in message:
                raise RemoteFailed(message["error"])
            else:
                return message
