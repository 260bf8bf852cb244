"""Data-parallel training on a Ray cluster (TUNEYARD_EXECUTOR=ray): Ray Train's TorchTrainer
runs one worker per training worker, each calling the same worker module that
torch.distributed.run starts locally. Ray is imported only here, when it is used.

The workers read and write the data dir (the cancel request, checkpoints, the model), so on a
cluster of several machines it must be shared storage, as for the jobs themselves.
"""

from __future__ import annotations

import importlib
import os
import threading

from tuneyard.jobs.context import JobContext
from tuneyard.storage import remove_tree
from tuneyard.training.launch import POLL_SECONDS, WorkerFailed, cancel_flag, first_worker_error

# What the Ray workers need of the job's environment: Tuneyard's settings and where its code is.
FORWARDED_ENV_PREFIXES = ("TUNEYARD_", "HF_")
FORWARDED_ENV = ("PYTHONPATH", "OMP_NUM_THREADS")


def _train_worker(config: dict) -> None:
    """The function each Ray worker runs: the worker module's main, as `python -m` would."""
    code = importlib.import_module(config["module"]).main([config["job_id"], *config["args"]])
    if code:
        raise RuntimeError(f"worker {os.environ.get('RANK')} failed; its error is recorded")


def _relay_cancel(ctx: JobContext, done: threading.Event) -> None:
    while not done.wait(POLL_SECONDS):
        if ctx.cancel_requested:
            cancel_flag(ctx.work_dir).touch()
            return


def run_workers_on_ray(ctx: JobContext, workers: int, gpus: int, module: str, args: list[str]):
    """Run `module`'s main in `workers` Ray Train workers, data-parallel, until all end;
    raises WorkerFailed with the error of the worker that failed first."""
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    folder = ctx.work_dir / "workers"
    remove_tree(folder)
    folder.mkdir(parents=True)
    env = {
        name: value
        for name, value in os.environ.items()
        if name.startswith(FORWARDED_ENV_PREFIXES) or name in FORWARDED_ENV
    }
    started_ray = not ray.is_initialized()
    if started_ray:
        ray.init(ctx.settings.ray_address, runtime_env={"env_vars": env}, log_to_driver=True)
    trainer = TorchTrainer(
        _train_worker,
        train_loop_config={"module": module, "job_id": ctx.job_id, "args": args},
        scaling_config=ScalingConfig(
            num_workers=workers,
            use_gpu=gpus > 0,
            resources_per_worker={"GPU": gpus} if gpus else {"CPU": 1},
        ),
        torch_config=TorchConfig(backend="nccl" if gpus else "gloo"),
        run_config=RunConfig(name=f"training-{ctx.job_id}", storage_path=str(folder / "ray")),
    )
    done = threading.Event()
    relay = threading.Thread(target=_relay_cancel, args=(ctx, done), daemon=True)
    relay.start()
    try:
        trainer.fit()
    except Exception as exc:
        error = first_worker_error(ctx.work_dir)
        if error is not None:
            raise WorkerFailed(
                f"Worker {error['rank']} of {workers} failed: {error['error']}"
            ) from None
        raise WorkerFailed(f"The Ray workers of this training failed: {exc}") from None
    finally:
        done.set()
        relay.join()
        if started_ray:
            ray.shutdown()
    remove_tree(folder)
