"""The training jobs: "training.run" for the built-in methods, "training.custom" for uploaded
ones; cancel stops either at a step boundary. A built-in run whose worker stops or dies goes
back to the queue and resumes from its last checkpoint."""

from __future__ import annotations

import shutil
from pathlib import Path

from tuneyard.jobs.keys import Resource
from tuneyard.jobs.registry import job_kind
from tuneyard.models import Training, TrainingMethodScript, utcnow
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


def _training_requeued(session, job) -> None:
    """The run went back to the queue: the training waits for a worker again."""
    training = _ended_run(session, job)
    if training is not None:
        training.status = "queued"
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


def training_resources(params) -> dict[str, float]:
    """What the job's own process needs on a cluster node: a one-process training the GPUs it
    asks for (`gpus_per_worker`; -1, "a GPU where there is one", asks for none, since a cluster
    gives GPUs only to those who ask); a data-parallel one a CPU, its workers asking Ray Train
    for their own."""
    workers = int(params.get("workers") or 1)
    gpus = int(params.get("gpus_per_worker", -1))
    return {"num_cpus": 1.0, "num_gpus": float(max(gpus, 0)) if workers == 1 else 0.0}


def _uploaded_code(session, job) -> list[Path]:
    """The uploaded code a run executes, which travels with it to a cluster node without the
    API's data dir: its GRPO reward files, and a custom method's script (held by its `uses`)."""
    paths = [Path(path) for path in (job.params.get("reward_files") or {}).values()]
    for use in job.uses or []:
        resource, _, script_id = use.partition(":")
        if resource == Resource.TRAINING_METHOD:
            script = session.get(TrainingMethodScript, script_id)
            if script is not None:  # deleted: the job says so when it runs
                paths.append(Path(script.path))
    return paths


def _last_checkpoint_step(session, job) -> int | None:
    """The step a new attempt of this run resumes from (the runner takes the last checkpoint)."""
    kept = checkpoints(Layout().training_dir(job.params["training_id"]))
    return int(kept[-1].name.removeprefix(CHECKPOINT_PREFIX)) if kept else None


@job_kind(
    "training.run",
    on_failure=_training_ended,
    cleanup=_remove_unfinished,
    cooperative_cancel=True,
    cancel_grace_seconds=600,  # finish the step and write a checkpoint
    resources=training_resources,
    resume_point=_last_checkpoint_step,
    on_requeue=_training_requeued,
    writes=(Resource.TRAINING,),  # and the model it makes, a new folder
    files=_uploaded_code,
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
    resources=training_resources,
    writes=(Resource.TRAINING,),  # and the model it makes, a new folder
    files=_uploaded_code,
)
def run_custom_training(ctx):
    from tuneyard.training.custom_runner import run_custom_training as run

    return run(ctx)
