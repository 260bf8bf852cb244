"""The training jobs: "training.run" for the built-in methods, "training.custom" for uploaded
ones; cancel stops either at a step boundary."""

from __future__ import annotations

import shutil

from tuneyard.jobs.registry import job_kind
from tuneyard.models import Training, utcnow
from tuneyard.storage import Layout, remove_tree
from tuneyard.training.checkpoints import CHECKPOINT_PREFIX, checkpoints
from tuneyard.training.results import discard_unrecorded_result, result_dir


def _ended_run(session, job) -> Training | None:
    """The training this job ran, unless a later run took it over or it succeeded."""
    training = session.get(Training, job.params.get("training_id"))
    if training is None or training.job_id != job.id or training.status == "succeeded":
        return None
    return training


def _training_ended(session, job) -> None:
    """Keep the training in step with its job when the job fails or is cancelled."""
    training = _ended_run(session, job)
    if training is None:
        return
    training.status = job.status
    training.error = job.error
    training.finished_at = utcnow()
    training.eta_seconds = None


def _remove_unfinished(session, job) -> None:
    """Drop what the run had not finished writing: its result folder, a model folder it put in
    place without recording it, and a checkpoint it was killed while saving (kept checkpoints
    stay, to resume from)."""
    training = _ended_run(session, job)
    if training is None:
        return
    layout = Layout()
    work_dir = layout.training_dir(training.id)
    remove_tree(result_dir(work_dir))
    discard_unrecorded_result(session, layout, training.id)
    kept = set(checkpoints(work_dir))
    for folder in (work_dir / "checkpoints").glob(f"{CHECKPOINT_PREFIX}*"):
        if folder not in kept:
            shutil.rmtree(folder, ignore_errors=True)


@job_kind(
    "training.run",
    on_failure=_training_ended,
    cleanup=_remove_unfinished,
    cooperative_cancel=True,
    cancel_grace_seconds=600,  # finish the step and write a checkpoint
)
def run_training(ctx):
    from tuneyard.training.runner import run_training as run

    return run(ctx)


@job_kind(
    "training.custom",
    on_failure=_training_ended,
    cleanup=_remove_unfinished,
    cooperative_cancel=True,
    cancel_grace_seconds=120,  # the script returns once report.should_stop() says so
)
def run_custom_training(ctx):
    from tuneyard.training.custom_runner import run_custom_training as run

    return run(ctx)
