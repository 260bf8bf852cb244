"""Job kinds used only by the tests (loaded in job processes through TUNEYARD_PLUGINS)."""

import os
import time
from pathlib import Path

from tuneyard.jobs.registry import job_kind
from tuneyard.storage import atomic_dir, discard


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
