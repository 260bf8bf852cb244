"""Job kinds used only by the tests (loaded in job processes through TUNEYARD_PLUGINS)."""

import os
import time
from pathlib import Path

from tuneyard.jobs.context import JobCancelled
from tuneyard.jobs.registry import job_kind
from tuneyard.storage import atomic_dir, atomic_file, discard


@job_kind("test.sleep")
def sleep_job(ctx):
    Path(ctx.params["pid_file"]).write_text(str(os.getpid()))
    for step in range(int(ctx.params.get("steps", 600))):
        ctx.progress(step, f"step {step}")
        time.sleep(0.1)
    return {"steps": ctx.params.get("steps")}


@job_kind("test.fail")
def failing_job(ctx):
    ctx.progress(10, "about to fail")
    raise RuntimeError("the disk is full")


@job_kind("test.events")
def events_job(ctx):
    for step in range(3):
        ctx.event("metric", {"step": step, "loss": 1.0 / (step + 1)})
    ctx.progress(100, "Recorded 3 metrics")
    return {"count": 3}


def _discard_written(session, job):
    discard(Path(job.params["target"]))


@job_kind("test.write", cleanup=_discard_written)
def write_job(ctx):
    """Writes a folder part by part (one a tenth of a second, or `step_seconds`), then makes
    it visible. The pid file appears once the first part is written and reported."""
    target = Path(ctx.params["target"])
    pause = float(ctx.params.get("step_seconds", 0.1))
    with atomic_dir(target) as staging:
        for step in range(int(ctx.params.get("steps", 600))):
            (staging / f"part-{step}").write_text("x")
            ctx.progress(step, f"wrote part {step}")
            if step == 0:
                Path(ctx.params["pid_file"]).write_text(str(os.getpid()))
            time.sleep(pause)
    with ctx.session():
        return {"path": str(target)}


def _saved_step(session, job) -> int | None:
    checkpoint = Path(job.params["checkpoint"])
    return int(checkpoint.read_text()) if checkpoint.exists() else None


@job_kind("test.steps", cooperative_cancel=True, resume_point=_saved_step)
def steps_job(ctx):
    """Counts to `steps`, saving the step it reached every `save_every` steps, and on a stop
    request at the next step; run again, it counts on from the saved step, as training does."""
    checkpoint = Path(ctx.params["checkpoint"])
    first = int(checkpoint.read_text()) if checkpoint.exists() else 0
    ctx.event("started", {"from_step": first, "pid": os.getpid()})
    Path(ctx.params["pid_file"]).write_text(str(os.getpid()))
    steps, save_every = int(ctx.params["steps"]), int(ctx.params.get("save_every", 5))
    for step in range(first + 1, steps + 1):
        time.sleep(float(ctx.params.get("step_seconds", 0.1)))
        ctx.progress(100 * step / steps, f"step {step}")
        if step % save_every == 0 or ctx.cancel_requested:
            with atomic_file(checkpoint, "w") as handle:
                handle.write(str(step))
        if ctx.cancel_requested:
            raise JobCancelled()
    return {"from_step": first}
