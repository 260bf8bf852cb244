"""The training jobs: "training.run" for the built-in methods, "training.custom" for uploaded
ones; cancel stops either at a step boundary."""

from __future__ import annotations

from tuneyard.jobs.registry import job_kind
from tuneyard.models import Training, utcnow
from tuneyard.storage import Layout, remove_tree
from tuneyard.training.results import result_dir


def _training_ended(session, job) -> None:
    """Keep the training in step with its job when the job fails or is cancelled, and drop a
    model the run had not finished writing."""
    training = session.get(Training, job.params.get("training_id"))
    if training is None or training.job_id != job.id or training.status == "succeeded":
        return
    training.status = job.status
    training.error = job.error
    training.finished_at = utcnow()
    training.eta_seconds = None
    remove_tree(result_dir(Layout().training_dir(training.id)))


@job_kind(
    "training.run",
    on_failure=_training_ended,
    cooperative_cancel=True,
    cancel_grace_seconds=600,  # finish the step and write a checkpoint
)
def run_training(ctx):
    from tuneyard.training.runner import run_training as run

    return run(ctx)


@job_kind(
    "training.custom",
    on_failure=_training_ended,
    cooperative_cancel=True,
    cancel_grace_seconds=120,  # the script returns once report.should_stop() says so
)
def run_custom_training(ctx):
    from tuneyard.training.custom_runner import run_custom_training as run

    return run(ctx)
