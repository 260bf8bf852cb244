"""Starting a data-parallel training's worker processes from its job process, and what passes
between them: a cancel request one way, a worker's error the other.

The job process runs `python -m tuneyard.training.launch JOB_PID <torch.distributed.run args>`:
this module, as __main__, asks the kernel to end it (SIGTERM) when the job process dies, then
becomes torch.distributed.run, which starts one process per worker and stops them all when one
fails or when it is itself stopped. It runs in a session of its own, so the SIGTERM a cancel
sends to the job's process group reaches the job process alone, which asks worker 0 to stop at
the next step; a job killed outright (SIGKILL after the grace period, out of memory) takes the
workers down with it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from tuneyard.errors import AppError
from tuneyard.jobs.context import JobContext
from tuneyard.storage import remove_tree

POLL_SECONDS = 0.5
# After the job process stops waiting (an error in it), how long the workers get to stop.
STOP_WAIT_SECONDS = 60.0
PR_SET_PDEATHSIG = 1


class WorkerFailed(AppError):
    """A worker of a data-parallel training failed; the message is that worker's error."""

    status = 500


def cancel_flag(job_dir: Path) -> Path:
    """The file whose presence asks the workers to stop at the next step."""
    return job_dir / "workers" / "cancel"


def worker_error_file(job_dir: Path, rank: int) -> Path:
    return job_dir / "workers" / f"error-{rank}.json"


def record_worker_error(job_dir: Path, rank: int, message: str, lost_a_worker: bool) -> None:
    """Say why worker `rank` failed, for the job process to report; `lost_a_worker` when it
    failed only because another worker went away."""
    path = worker_error_file(job_dir, rank)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"rank": rank, "error": message, "at": time.time(), "lost_a_worker": lost_a_worker}
    path.write_text(json.dumps(record))


def first_worker_error(job_dir: Path) -> dict | None:
    """The error of the worker that failed first, of its own accord: the others may fail after
    it, only because it went away."""
    found = []
    for path in (job_dir / "workers").glob("error-*.json"):
        try:
            error = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if not error["lost_a_worker"]:
            found.append(error)
    return min(found, key=lambda error: error["at"]) if found else None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def worker_environment(workers: int) -> dict[str, str]:
    """The job's environment, with the CPU's cores shared out between the workers (the
    launcher would give each one thread)."""
    env = dict(os.environ)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    env.setdefault("OMP_NUM_THREADS", str(max(1, (cores or 1) // workers)))
    return env


def run_workers(ctx: JobContext, workers: int, module: str, args: list[str]) -> None:
    """Run `python -m module JOB_ID *args` in `workers` processes, data-parallel, until all
    end. Relays a cancel request to them; raises WorkerFailed with the error of the worker
    that failed first."""
    folder = ctx.work_dir / "workers"
    remove_tree(folder)
    folder.mkdir(parents=True)
    command = [
        sys.executable,
        "-m",
        __name__,
        str(os.getpid()),
        "--nnodes=1",
        f"--nproc-per-node={workers}",
        "--master-addr=127.0.0.1",
        f"--master-port={free_port()}",
        "--max-restarts=0",
        "--module",
        module,
        ctx.job_id,
        *args,
    ]
    process = subprocess.Popen(
        command, stdin=subprocess.DEVNULL, env=worker_environment(workers), start_new_session=True
    )
    try:
        while process.poll() is None:
            if ctx.cancel_requested and not cancel_flag(ctx.work_dir).exists():
                cancel_flag(ctx.work_dir).touch()
                ctx.log.info("asked the workers to stop at the next step")
            time.sleep(POLL_SECONDS)
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(STOP_WAIT_SECONDS)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    if process.returncode != 0:
        error = first_worker_error(ctx.work_dir)
        remove_tree(folder)
        if error is not None:
            raise WorkerFailed(f"Worker {error['rank']} of {workers} failed: {error['error']}")
        raise WorkerFailed(
            f"A worker of {workers} died without saying why (killed, or out of memory); the "
            f"launcher exited with code {process.returncode}. The job's log has the details."
        )
    remove_tree(folder)


def _become_launcher(parent_pid: int, launcher_args: list[str]) -> None:
    import ctypes
    import runpy

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent_pid:  # the job process died before the line above
        sys.exit(1)
    sys.argv = ["torch.distributed.run", *launcher_args]
    runpy.run_module("torch.distributed.run", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    _become_launcher(int(sys.argv[1]), sys.argv[2:])
