"""Job kinds, keyed by name. Domains register their job bodies here, as a plugin would.

A job body receives a JobContext and returns a JSON-able result (or None). It runs in its own
process. `on_failure` runs wherever the job is found failed or cancelled (in the job's process
after an exception, in a worker after the process died, in a worker on another machine that
took it for dead) so the domain can mark its entity failed. `cleanup` removes what the run
left on disk (partial folders, a result whose row never said ready); it runs only where no
process of the job can still be writing, which a worker on another machine cannot know, so
there it waits until the job's own machine sees the process gone (see tuneyard.jobs.executor).
`resources` says what one run needs from the machine that runs it (the ray executor places the
job on a node that has it); without it a job takes one CPU.
`resume_point` marks a kind whose body, run again, resumes from its last checkpoint: it gives
the step it would resume from (None while there is no checkpoint), so a job whose worker
stopped or died goes back to the queue instead of failing; `on_requeue` then lets the domain
say so on its entity (a training waits again).
`writes` marks a kind that can run on a cluster node sharing no disk with the API (an
artifact store, see tuneyard.artifacts): it names the resources among its `uses` whose files the
job changes (the others it only reads), and before it marks a folder or file it made ready, it
calls `ctx.land(path)`; a kind without it is left for a local worker on such a cluster.
`files` names the single files such a job reads besides its `uses` folders (the uploaded code it
runs: a training method's script, reward files), as paths of the API's data dir: they travel
with its inputs.
`reads` names the other folders and files such a job reads whose resources have no artifact
folder of their own (an image model kept in the data dir, adapters, a source image, a training
set), as paths of the API's data dir: those there travel with its inputs, and one the job
removes (a training set it used up) is removed from the API's data dir too; one elsewhere
keeps the job for a local worker, unless it lies in the Python environment. The body finds each
at `ctx.layout.local(path)`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Modules whose import registers built-in job kinds. They import nothing heavy at top level.
BUILTIN_TASK_MODULES = (
    "tuneyard.datasets.tasks",
    "tuneyard.basemodels.tasks",
    "tuneyard.training.tasks",
    "tuneyard.complete.tasks",
    "tuneyard.deploy.tasks",
    "tuneyard.assessment.tasks",
    "tuneyard.knowledge.tasks",
    "tuneyard.images.tasks",
)


@dataclass(frozen=True)
class JobKind:
    name: str
    run: Callable[..., Any]
    on_failure: Callable[..., None] | None = None
    cleanup: Callable[..., None] | None = None
    # True when the body stops by itself at a safe point after a cancel request (it polls
    # `ctx.cancel_requested`); otherwise a cancel interrupts it at once.
    cooperative_cancel: bool = False
    # Seconds between SIGTERM and SIGKILL on cancel; None uses the setting. A cooperative body
    # may need a whole step (and a checkpoint) before it can stop.
    cancel_grace_seconds: float | None = None
    # params -> {"num_cpus": .., "num_gpus": .., "memory": bytes}; None: DEFAULT_RESOURCES.
    resources: Callable[[dict[str, Any]], dict[str, float]] | None = None
    # (session, job) -> the checkpoint step a new attempt would resume from, or None.
    resume_point: Callable[..., int | None] | None = None
    # (session, job): the job went back to the queue (its worker stopped or died).
    on_requeue: Callable[..., None] | None = None
    # The resources (tuneyard.jobs.keys.Resource values) of its `uses` whose files it changes;
    # None: the kind cannot run without the API's data dir.
    writes: tuple[str, ...] | None = None
    # (session, job) -> the single files it reads besides its uses' folders (paths of the
    # API's data dir, under tuneyard.artifacts.FILE_ROOTS); None: none.
    files: Callable[..., list[Path]] | None = None
    # (session, job) -> the other paths (the API's) it reads besides its uses' folders; None:
    # it reads those alone.
    reads: Callable[..., list[Path]] | None = None

    def resources_for(self, params: dict[str, Any]) -> dict[str, float]:
        """What one run with these parameters needs: the defaults, overridden by the kind's."""
        wanted = dict(DEFAULT_RESOURCES)
        if self.resources is not None:
            wanted.update(self.resources(params))
        return wanted


# One CPU, no GPU, no memory reserved (a job uses what it needs, as a local process would).
DEFAULT_RESOURCES: dict[str, float] = {"num_cpus": 1.0, "num_gpus": 0.0, "memory": 0.0}

_KINDS: dict[str, JobKind] = {}
_loaded = False


def job_kind(
    name: str,
    *,
    on_failure=None,
    cleanup=None,
    cooperative_cancel: bool = False,
    cancel_grace_seconds: float | None = None,
    resources: Callable[[dict[str, Any]], dict[str, float]] | None = None,
    resume_point=None,
    on_requeue=None,
    writes: tuple[str, ...] | None = None,
    files: Callable[..., list[Path]] | None = None,
    reads: Callable[..., list[Path]] | None = None,
):
    """Decorator registering a job body under `name`."""

    def register(func):
        if name in _KINDS and _KINDS[name].run is not func:
            raise ValueError(f"Job kind '{name}' is registered twice.")
        _KINDS[name] = JobKind(
            name,
            func,
            on_failure,
            cleanup,
            cooperative_cancel,
            cancel_grace_seconds,
            resources,
            resume_point,
            on_requeue,
            writes,
            files,
            reads,
        )
        return func

    return register


def load_builtin_kinds() -> None:
    """Import the built-in job modules and the configured plugins (once per process)."""
    global _loaded
    if not _loaded:
        from tuneyard.config import get_settings

        for module in (*BUILTIN_TASK_MODULES, *get_settings().plugin_modules):
            importlib.import_module(module)
        _loaded = True


def get_kind(name: str) -> JobKind:
    load_builtin_kinds()
    try:
        return _KINDS[name]
    except KeyError:
        raise KeyError(f"No job kind '{name}'. Known: {', '.join(sorted(_KINDS))}") from None
