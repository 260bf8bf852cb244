"""How a job runs uploaded code (custom training methods, GRPO reward files): in a process of
its own, started from the job process, that talks to it over two pipes, one JSON object a
line (the other end is tuneyard.training.code_child). The job process alone touches the
database; it checks every message the code sends before acting on it.

What the code's process gets: a scrubbed environment (only the variables in KEPT_VARIABLES
pass: no TUNEYARD_* setting, so no database URL and no data dir or key file path; no tokens
such as HF_TOKEN), a scratch folder inside the job's own folder as its working directory,
HOME and TMPDIR, and the paths it is handed (its script, the base model, the records, its
output folder).

What it can still reach: it runs as the same OS user as Tuneyard, so a file that user can
read (the data dir with other projects' models, the key file that decrypts stored API keys, a
SQLite database) stays readable to code that goes looking for it by path, and the network is
open (a database server that trusts local connections is within reach). Code you do not
trust belongs in a worker that runs as another OS user or in a container.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, TextIO

from tuneyard.errors import AppError

CHILD_MODULE = "tuneyard.training.code_child"
# Variables the code's process keeps: what Python, the libraries and the hardware need.
KEPT_VARIABLES = (
    "PATH",
    "LD_LIBRARY_PATH",  # where GPU containers put the driver's libraries
    "LANG",
    "LANGUAGE",
    "TZ",
    "PYTHONPATH",
    "PYTHONHASHSEED",
    "CUDA_HOME",
    "CUDA_PATH",
    "CUDA_DEVICE_ORDER",
    "CUDA_VISIBLE_DEVICES",
    "NVIDIA_VISIBLE_DEVICES",
    "HIP_VISIBLE_DEVICES",
    "ROCR_VISIBLE_DEVICES",
    "PYTORCH_CUDA_ALLOC_CONF",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "GOMP_SPINCOUNT",
    "HF_HUB_OFFLINE",
    "TRANSFORMERS_OFFLINE",
    "HF_DATASETS_OFFLINE",
)
KEPT_PREFIXES = ("LC_",)
MAX_MESSAGE_CHARS = 1_000_000
EXIT_WAIT_SECONDS = 30.0


def scratch_dir(job_dir: Path) -> Path:
    """The code's working folder, inside the job's own folder."""
    return job_dir / "code"


def scrubbed_environment(scratch: Path) -> dict[str, str]:
    """The code's environment: the job's, less everything but KEPT_VARIABLES, with HOME and
    TMPDIR in the scratch folder."""
    env = {
        name: value
        for name, value in os.environ.items()
        if name in KEPT_VARIABLES or name.startswith(KEPT_PREFIXES)
    }
    home, tmp = scratch / "home", scratch / "tmp"
    home.mkdir(parents=True, exist_ok=True)
    tmp.mkdir(parents=True, exist_ok=True)
    env.update(
        HOME=str(home),
        TMPDIR=str(tmp),
        HF_HOME=str(home / "huggingface"),
        PYTHONUNBUFFERED="1",
        PYTHONDONTWRITEBYTECODE="1",
    )
    return env


class CodeProcess:
    """The job process's end of one process running uploaded code.

    `mode` is "method" (the child calls train and sends reports) or "reward" (the child
    answers score requests). `label` names the code in messages ("method lora-loop").
    """

    def __init__(self, mode: str, scratch: Path, label: str):
        self.mode = mode
        self.scratch = scratch
        self.label = label
        self.process: subprocess.Popen | None = None
        self._to_child: TextIO | None = None
        self._from_child: TextIO | None = None

    def start(self, setup: dict[str, Any]) -> None:
        """Start the process and send it its setup."""
        self.scratch.mkdir(parents=True, exist_ok=True)
        child_in, to_child = os.pipe()
        from_child, child_out = os.pipe()
        try:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    CHILD_MODULE,
                    self.mode,
                    str(child_in),
                    str(child_out),
                    str(os.getpid()),
                ],
                stdin=subprocess.DEVNULL,
                cwd=self.scratch,
                env=scrubbed_environment(self.scratch),
                pass_fds=(child_in, child_out),
            )
        except OSError:
            for fd in (child_in, to_child, from_child, child_out):
                os.close(fd)
            raise
        os.close(child_in)
        os.close(child_out)
        self._to_child = os.fdopen(to_child, "w", encoding="utf-8")
        self._from_child = os.fdopen(from_child, "r", encoding="utf-8")
        self.send(setup)

    def send(self, message: dict[str, Any]) -> None:
        assert self._to_child is not None, "start the process first"
        try:
            self._to_child.write(json.dumps(message) + "\n")
            self._to_child.flush()
        except BrokenPipeError:
            raise self._ended() from None

    def receive(self) -> dict[str, Any]:
        """The next message; AppError when the process ended or sent something malformed."""
        assert self._from_child is not None, "start the process first"
        line = self._from_child.readline(MAX_MESSAGE_CHARS + 1)
        if not line:
            raise self._ended()
        if not line.endswith("\n"):
            raise AppError(f"The {self.label} sent a message longer than 1 MB; it was stopped.")
        try:
            message = json.loads(line)
        except (ValueError, RecursionError):
            message = None
        if not isinstance(message, dict):
            raise AppError(f"The {self.label} sent a malformed message; it was stopped.")
        return message

    def close(self) -> int | None:
        """Close the pipes and wait for the process to end (killed after a while); its exit
        code."""
        for stream in (self._to_child, self._from_child):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        if self.process is None:
            return None
        try:
            return self.process.wait(EXIT_WAIT_SECONDS)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    def _ended(self) -> AppError:
        code = self.close()
        if code is not None and code < 0:
            try:
                how = f"was killed by {signal.Signals(-code).name}"
            except ValueError:
                how = f"was killed by signal {-code}"
        else:
            how = f"exited with code {code}"
        return AppError(f"The process running the {self.label} {how} before it finished.")
