"""The training job: registered as "training.run"; cancel stops it at a step boundary."""

from __future__ import annotations

from tuneyard.jobs.registry import job_kind
from tuneyard.models import Training, utcnow


def _training_ended(session, job) -> None:
    """Keep the training in step with its job when the job fails or is cancelled."""
    training = session.get(Training, job.params.get("training_id"))
    if training is None or training.job_id != job.id or training.status == "succeeded":
        return
    training.status = job.status
    training.error = job.error
    training.finished_at = utcnow()
    training.eta_seconds = None


@job_kind(
    "training.run",
    on_failure=_training_ended,
    cooperative_cancel=True,
    cancel_grace_seconds=600,  # finish the step and write a checkpoint
)
def run_training(ctx):
    from tuneyard.training.runner import run_training as run

    return run(ctx)
