"""The process uploaded code runs in:
`python -m tuneyard.training.code_child MODE IN_FD OUT_FD PARENT_PID`.

The job process starts it (see tuneyard.training.code_process) with a scrubbed environment and
talks to it over two pipes, one JSON object a line: the first line in is the setup, then the
child asks and the job process answers (a custom method's reports), or the job process asks
and the child answers (a reward file's scores). The child never opens the database: it has
neither its address nor Tuneyard's settings. Its stdout and stderr are the job's log.

This module imports nothing of Tuneyard's but itself, so nothing here reads settings.
"""

from __future__ import annotations

import ctypes
import importlib.util
import json
import logging
import math
import os
import signal
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

PR_SET_PDEATHSIG = 1


class JobChannel:
    """This end of the two pipes to the job process."""

    def __init__(self, in_fd: int, out_fd: int):
        self._in = os.fdopen(in_fd, "r", encoding="utf-8")
        self._out = os.fdopen(out_fd, "w", encoding="utf-8")

    def send(self, message: dict[str, Any]) -> None:
        self._out.write(json.dumps(message) + "\n")
        self._out.flush()

    def receive(self) -> dict[str, Any] | None:
        line = self._in.readline()
        return json.loads(line) if line else None

    def ask(self, op: str, **fields: Any) -> Any:
        """A request to the job process; its answer, or RuntimeError with its reason."""
        self.send({"op": op, **fields})
        reply = self.receive()
        if reply is None:
            raise RuntimeError("the training job ended while its code was running")
        if "error" in reply:
            raise RuntimeError(reply["error"])
        return reply.get("value")


class Report:
    """What a method's `train` gets as `report` (the contract is in tuneyard.training.custom)."""

    def __init__(self, channel: JobChannel, records_path: Path, max_samples: int, name: str):
        self._channel = channel
        self._records_path = records_path
        self._max_samples = max_samples
        self.log = logging.getLogger(f"tuneyard.job.{name}")

    def records(self) -> Iterator[dict]:
        """The dataset's normalised records, in file order; at most max_samples when set."""
        count = 0
        with self._records_path.open(encoding="utf-8") as handle:
            for line in handle:
                if not line.strip():
                    continue
                if 0 < self._max_samples <= count:
                    return
                count += 1
                yield json.loads(line)

    def progress(self, percent: float, message: str | None = None) -> None:
        """Progress 0-100 of the training (99 at most: writing the model is the last step)."""
        percent = min(max(float(percent), 0.0), 99.0)
        self._channel.ask("progress", percent=percent, message=_text(message))

    def metrics(self, step: int, **values: float) -> None:
        """Record one step's numbers (loss, learning_rate...) as the built-in methods do."""
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise TypeError(f"report.metrics: step must be a whole number >= 0, not {step!r}")
        data: dict[str, float | int] = {}
        for key, value in values.items():
            if isinstance(value, bool | str):
                raise TypeError(f"report.metrics: {key} must be a number, not {value!r}")
            try:
                number = float(value)  # numpy and 0-d torch numbers too
            except (TypeError, ValueError):
                raise TypeError(f"report.metrics: {key} must be a number, not {value!r}") from None
            if not math.isfinite(number):
                self.log.warning("step %d: %s is %s; not recorded", step, key, number)
                continue
            data[key] = value if type(value) is int else number
        self._channel.ask("metrics", step=step, values=data)

    def should_stop(self) -> bool:
        """True once a cancel was asked for: return from train() soon."""
        return bool(self._channel.ask("should_stop"))


def _text(message: Any) -> str | None:
    return None if message is None else str(message)


def _load(path: Path, module_name: str):
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"{path} cannot be imported as a Python file.")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses and pickling in the script look it up
    spec.loader.exec_module(module)
    return module


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def run_method(channel: JobChannel, setup: dict[str, Any]) -> int:
    """Call the script's train(config, output_dir, report); say how it ended."""
    config = setup["config"]
    report = Report(channel, Path(config["records_path"]), setup["max_samples"], setup["name"])
    try:
        train = _load(Path(setup["script"]), setup["module"]).train
        channel.ask("progress", percent=2.0, message=f"Running {setup['name']}")
        train(config, Path(setup["output_dir"]), report)
    except BaseException as exc:  # the script's own SystemExit and KeyboardInterrupt too
        traceback.print_exc()
        channel.send({"op": "failed", "error": _describe(exc)})
        return 1
    channel.send({"op": "done"})
    return 0


def run_reward(channel: JobChannel, setup: dict[str, Any]) -> int:
    """Answer each request with the scores of the file's reward(completions, **columns)."""
    try:
        function = getattr(_load(Path(setup["script"]), setup["module"]), "reward", None)
        if not callable(function):
            raise TypeError(f"{setup['name']} defines no function reward(completions, **columns)")
    except BaseException as exc:
        traceback.print_exc()
        channel.send({"error": _describe(exc)})
        return 1
    channel.send({"value": "ready"})
    while (request := channel.receive()) is not None:
        try:
            scores = [float(s) for s in function(request["completions"], **request["columns"])]
            channel.send({"value": scores})
        except BaseException as exc:
            traceback.print_exc()
            channel.send({"error": _describe(exc)})
    return 0


def main(mode: str, in_fd: int, out_fd: int, parent_pid: int) -> int:
    # A cancel reaches the job's whole process group: the job process decides (the script
    # sees it through report.should_stop()); a kill of the group still ends this process.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if sys.platform == "linux":  # if the job process dies, so does its code
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:
        return 1  # it died before that was set
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stdout
    )
    channel = JobChannel(in_fd, out_fd)
    setup = channel.receive()
    if setup is None:
        return 1
    return (run_method if mode == "method" else run_reward)(channel, setup)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])))
