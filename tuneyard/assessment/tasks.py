"""The assessment job, "assessment.run": cancel stops it between rows; finished rows are kept
for a resumed run."""

from __future__ import annotations

from tuneyard.assessment.service import RUN_JOB
from tuneyard.jobs.registry import job_kind


def _settle(session, job) -> None:
    from tuneyard.assessment.runner import settle

    settle(session, job)


@job_kind(
    RUN_JOB,
    on_failure=_settle,
    cooperative_cancel=True,
    cancel_grace_seconds=30,  # model calls in flight are left to end or time out
    writes=(),  # its rows are all it writes; it reads its dataset and local models' folders
)
def run_assessment(ctx):
    from tuneyard.assessment.runner import run_assessment as run

    return run(ctx)
