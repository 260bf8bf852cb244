"""One worker process of a data-parallel training, started by torch.distributed.run:
`python -m tuneyard.training.rank JOB_ID [CHECKPOINT]`. It trains its share of every step; an
error it meets is written down for the job process to report."""

from __future__ import annotations

import logging
import os
import sys
import traceback

from tuneyard.config import get_settings
from tuneyard.db import session_scope
from tuneyard.errors import AppError
from tuneyard.jobs.context import JobContext
from tuneyard.models import Job
from tuneyard.training.launch import record_worker_error
from tuneyard.training.runner import train_as_worker

log = logging.getLogger("tuneyard.job")


def _describe(exc: BaseException) -> str:
    return exc.message if isinstance(exc, AppError) else f"{type(exc).__name__}: {exc}"


def lost_a_worker(exc: BaseException) -> bool:
    """Whether a collective failed because another worker went away (gloo says so in a plain
    RuntimeError, NCCL in a DistError): that worker's end is the cause, not this error."""
    import torch.distributed as dist

    return isinstance(exc, dist.DistError) or "gloo/transport" in str(exc)


def main(argv: list[str]) -> int:
    rank = int(os.environ["RANK"])
    logging.basicConfig(
        level=logging.INFO,
        format=f"%(asctime)s %(levelname)s [worker {rank}] %(message)s",
        stream=sys.stdout,
    )
    settings = get_settings()
    with session_scope(settings) as session:
        ctx = JobContext(session.get_one(Job, argv[0]), settings)
    try:
        train_as_worker(ctx, rank, argv[1] if len(argv) > 1 else None)
    except BaseException as exc:
        record_worker_error(ctx.work_dir, rank, _describe(exc), lost_a_worker(exc))
        log.error("worker %s failed\n%s", rank, traceback.format_exc())
        return 1
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
