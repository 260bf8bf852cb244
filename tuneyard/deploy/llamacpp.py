"""The llama.cpp server Tuneyard runs for a deployment environment: its models, process and port.

One llama-cpp-python server (`python -m tuneyard.deploy.llamacpp_server --config_file
config.json`, llama-cpp-python's own server with its weights in plain buffers) serves
every live model of the environment, each under its alias. Its state lives in one folder:
config.json (host, port, API key and models, in the server's own config format; readable by
its owner only), server.pid and server.log. With an API key the server answers only requests
that carry it (`Authorization: Bearer <key>`), so other users of the machine cannot use it.
The server runs detached in its own session, so it outlives the job that started it; a
supervisor calls `ensure_running` to bring it back after a crash, on the same port.

The server loads only the first model at start and the others when first asked for, so
`apply` asks every model for one token before it reports success: a model that does not load
is found at deploy time, not by the first user.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psutil

from tuneyard.deploy.openai_compat import OpenAICompatClient
from tuneyard.errors import AppError, Invalid, Unavailable
from tuneyard.processes import stop_process
from tuneyard.storage import atomic_file

CONFIG_FILE = "config.json"
PID_FILE = "server.pid"
LOG_FILE = "server.log"
LOCK_FILE = ".lock"
SERVER_MODULE = "tuneyard.deploy.llamacpp_server"
LOG_TAIL_LINES = 25
LOG_TAIL_CHARS = 4000
# How long a port may stay held by a just-killed server's closing connections.
PORT_FREE_WAIT_SECONDS = 15.0
# llama_cpp.server's entry point prefers these environment variables to the config file.
OVERRIDING_ENV = ("HOST", "PORT", "CONFIG_FILE")
# The address that means "every interface": clients reach such a server on the loopback.
ANY_ADDRESS = "0.0.0.0"
PROBE = [{"role": "user", "content": "Hi"}]


class StartFailed(Unavailable):
    """The server did not start or a model did not answer; the server is stopped."""

    def __init__(self, reason: str, log_tail: str):
        super().__init__(f"{reason}\nThe end of the server's log (server.log):\n{log_tail}")
        self.reason = reason
        self.log_tail = log_tail


@dataclass(frozen=True)
class ServedModel:
    """One model of the server: clients send `alias` as the model id."""

    alias: str
    model_path: Path
    lora_path: Path | None = None
    n_ctx: int = 2048

    def to_config(self) -> dict:
        # No chat_format: the server then renders the GGUF's own tokenizer.chat_template.
        entry: dict = {
            "model": str(self.model_path),
            "model_alias": self.alias,
            "n_ctx": self.n_ctx,
        }
        if self.lora_path is not None:
            entry["lora_path"] = str(self.lora_path)
        return entry

    @classmethod
    def from_config(cls, entry: dict) -> ServedModel:
        lora = entry.get("lora_path")
        return cls(
            alias=entry.get("model_alias") or entry["model"],
            model_path=Path(entry["model"]),
            lora_path=Path(lora) if lora else None,
            n_ctx=entry.get("n_ctx", 2048),
        )


class ManagedServer:
    """A llama.cpp server Tuneyard runs for one environment: its config, process and log live in
    state_dir (config.json, server.pid, server.log)."""

    def __init__(
        self, state_dir: Path, host: str = "127.0.0.1", port: int = 0, api_key: str | None = None
    ):
        # Resolved: the path is how is_running recognises the server in its command line.
        self.state_dir = Path(state_dir).resolve()
        self.host = host
        self._port = port
        self._api_key = api_key
        self._lock_held = False

    @property
    def config_path(self) -> Path:
        return self.state_dir / CONFIG_FILE

    @property
    def pid_path(self) -> Path:
        return self.state_dir / PID_FILE

    @property
    def log_path(self) -> Path:
        return self.state_dir / LOG_FILE

    @property
    def port(self) -> int:
        """The given port, else the one chosen before (kept in config.json), else a free one,
        which is written down at once so the address stays the same from now on."""
        if not self._port:
            self._port = self._read_config().get("port") or 0
        if not self._port:
            with self._locked():
                self._port = self._read_config().get("port") or _free_port(self.host)
                self._write_config(self.models())
        return self._port

    @property
    def api_key(self) -> str | None:
        """The key clients send: the one given, else the one the server was configured with."""
        return self._api_key or self._read_config().get("api_key")

    @property
    def base_url(self) -> str:
        host = "127.0.0.1" if self.host == ANY_ADDRESS else self.host
        return f"http://{host}:{self.port}"

    def models(self) -> list[ServedModel]:
        return [ServedModel.from_config(entry) for entry in self._read_config().get("models", [])]

    def apply(self, models: list[ServedModel], timeout: float = 120) -> None:
        """Serve exactly `models` (an empty list stops the server).

        Restarts the server with the new config and waits until every model answers. If one
        does not, the server goes back to the models it served before (or stays stopped) and
        Unavailable carries the reason and the end of server.log.
        """
        _check_aliases(models)
        with self._locked():
            previous = self.models()
            self._stop()
            self._write_config(models)
            if not models:
                return
            try:
                self._start(models, timeout)
            except StartFailed as failure:
                now = self._restore(previous, timeout)
                raise StartFailed(f"{failure.reason}\n{now}", failure.log_tail) from None

    def update(
        self, change: Callable[[list[ServedModel]], list[ServedModel]], timeout: float = 120
    ) -> None:
        """Serve `change(the models served now)`, read and applied under the folder's lock, so
        that changes made at once by several processes (two deploys) each keep the other's.
        Restarts the server only when the list changes; a failure is apply's."""
        with self._locked():
            current = self.models()
            wanted = change(current)
            if wanted != current:
                self.apply(wanted, timeout)

    def is_running(self) -> bool:
        return self._process() is not None

    def ensure_running(self, timeout: float = 120) -> bool:
        """Restart the server if models are configured but it is not running; True if it had
        to. Called at worker start and from health checks."""
        with self._locked():
            models = self.models()
            if not models or self.is_running():
                return False
            self._stop()
            if self._api_key and self._read_config().get("api_key") != self._api_key:
                self._write_config(models)  # a server configured before it had its key
            self._start(models, timeout)
            return True

    def stop(self) -> None:
        with self._locked():
            self._stop()

    # -- the process -------------------------------------------------------------------------

    def _start(self, models: list[ServedModel], timeout: float) -> None:
        """Start the server on the config file and wait until each model answers; on failure
        stop it and raise StartFailed with the end of the log this start wrote."""
        log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
        try:
            self._check_port_free()
            process = self._spawn()
            self._wait_until_listed(process, models, timeout)
            self._load_each(models, timeout)
        except Unavailable as exc:
            log_tail = self._log_tail(log_start)  # before stopping adds shutdown lines
            self._stop()
            raise StartFailed(exc.message, log_tail) from None

    def _spawn(self) -> subprocess.Popen:
        env = {key: value for key, value in os.environ.items() if key not in OVERRIDING_ENV}
        command = [sys.executable, "-m", SERVER_MODULE, "--config_file", str(self.config_path)]
        with self.log_path.open("ab") as log:
            log.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting the server\n".encode())
            log.flush()
            # Its own session: a job that starts the server ends (or is killed with its
            # process group) without taking the server along.
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.state_dir,
                env=env,
                start_new_session=True,
            )
        with atomic_file(self.pid_path, "w") as handle:
            handle.write(f"{process.pid}\n")
        return process

    def _wait_until_listed(
        self, process: subprocess.Popen, models: list[ServedModel], timeout: float
    ) -> None:
        wanted = {model.alias for model in models}
        client = OpenAICompatClient(self.base_url, self.api_key, timeout=2)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            code = process.poll()
            if code is not None:
                raise Unavailable(
                    f"The llama.cpp server exited (code {code}) while loading "
                    f"{models[0].model_path}."
                )
            try:
                if wanted <= {entry.get("id") for entry in client.models()}:
                    return
            except Unavailable:
                pass
            time.sleep(0.2)
        raise Unavailable(
            f"The llama.cpp server did not answer on {self.base_url} within {timeout:g} s."
        )

    def _load_each(self, models: list[ServedModel], timeout: float) -> None:
        """Ask each model for one token, the first model last so it stays loaded."""
        client = OpenAICompatClient(self.base_url, self.api_key, timeout=timeout)
        for model in [*models[1:], models[0]]:
            try:
                client.chat(model.alias, PROBE, max_tokens=1)
            except AppError as exc:
                raise Unavailable(
                    f"{model.alias} ({model.model_path}) does not answer: {exc.message}"
                ) from None

    def _restore(self, previous: list[ServedModel], timeout: float) -> str:
        """Go back to the models served before a failed apply; say what is served now."""
        self._write_config(previous)
        if not previous:
            return "The server is stopped."
        try:
            self._start(previous, timeout)
        except StartFailed:
            # The config keeps them, so supervision (ensure_running) tries them again later.
            return "The models served before did not start again either; the server is stopped."
        aliases = ", ".join(model.alias for model in previous)
        return f"The server serves the models it served before: {aliases}."

    def _process(self) -> psutil.Process | None:
        """The running server process of this folder, if any (not a stale or reused pid)."""
        try:
            pid = int(self.pid_path.read_text().strip())
            process = psutil.Process(pid)
            if process.status() == psutil.STATUS_ZOMBIE:
                return None
            command = process.cmdline()
        except (OSError, ValueError, psutil.Error):
            return None
        if SERVER_MODULE in command and str(self.config_path) in command:
            return process
        return None

    def _stop(self) -> None:
        process = self._process()
        if process is not None:
            stop_process(process)
        self.pid_path.unlink(missing_ok=True)

    def _check_port_free(self, wait: float = PORT_FREE_WAIT_SECONDS) -> None:
        # A server that was just killed leaves its connections closing for a moment, and
        # they hold the port; wait that out before blaming another program.
        deadline = time.monotonic() + wait
        while True:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
                # As uvicorn binds: a port our stopped server left in TIME_WAIT is free.
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    probe.bind((self.host, self.port))
                    return
                except OSError as exc:
                    reason = exc.strerror
            if time.monotonic() >= deadline:
                raise Unavailable(
                    f"Port {self.port} on {self.host} is taken by another program "
                    f"({reason}): stop that program, or give this environment another port."
                )
            time.sleep(0.25)

    # -- the folder --------------------------------------------------------------------------

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """One change at a time per folder, across processes (deploy jobs, health checks);
        re-entered freely by this object (apply chooses the port under its own lock)."""
        if self._lock_held:
            yield
            return
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with (self.state_dir / LOCK_FILE).open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self._lock_held = True
            try:
                yield
            finally:
                self._lock_held = False
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _read_config(self) -> dict:
        try:
            return json.loads(self.config_path.read_text())
        except FileNotFoundError:
            return {}

    def _write_config(self, models: list[ServedModel]) -> None:
        # A second request waits for the first instead of cutting its answer short (the
        # server's default), so chats and assessments on one live model can overlap.
        config: dict = {"host": self.host, "port": self.port, "interrupt_requests": False}
        if self.api_key:
            config["api_key"] = self.api_key
        config["models"] = [model.to_config() for model in models]
        # atomic_file creates the file readable by its owner only: it holds the key.
        with atomic_file(self.config_path, "w") as handle:
            json.dump(config, handle, indent=2)

    def _log_tail(self, start: int) -> str:
        if not self.log_path.exists():
            return "(the server was not started)"
        with self.log_path.open("rb") as log:
            log.seek(start)
            text = log.read().decode(errors="replace")
        tail = "\n".join(text.strip().splitlines()[-LOG_TAIL_LINES:])
        return tail[-LOG_TAIL_CHARS:] or "(the server wrote nothing)"


def list_served_models(
    base_url: str, api_key: str | None = None, timeout: float = 5.0
) -> list[str]:
    """The model ids a server lists at GET /v1/models; Unavailable says why if it does not
    answer."""
    client = OpenAICompatClient(base_url, api_key, timeout=timeout)
    return [entry.get("id", "") for entry in client.models()]


def _check_aliases(models: list[ServedModel]) -> None:
    seen: set[str] = set()
    for model in models:
        if not model.alias.strip():
            raise Invalid(f"The model {model.model_path} has an empty alias: give it a name.")
        if model.alias in seen:
            raise Invalid(f"Two models have the alias {model.alias!r}: each needs its own.")
        seen.add(model.alias)


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]
