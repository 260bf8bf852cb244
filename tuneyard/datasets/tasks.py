"""The dataset parse job: validate the uploaded file and write its normalised records."""

from __future__ import annotations

import time

from sqlalchemy.orm import Session

from tuneyard.datasets.parsing import ParseFailed, parse_file
from tuneyard.datasets.service import PARSE_JOB, original_path, records_path
from tuneyard.db import session_scope
from tuneyard.errors import Invalid, NotFound
from tuneyard.jobs.keys import Resource
from tuneyard.jobs.registry import job_kind
from tuneyard.models import Dataset, Job
from tuneyard.storage import Layout, remove_tree

PROGRESS_EVERY_SECONDS = 0.5


def mark_parse_failed(session: Session, job: Job) -> None:
    """Whatever stopped the parse before the dataset was ready, it is failed and says why."""
    dataset = session.get(Dataset, job.params.get("dataset_id"))
    if dataset is None or dataset.status == "ready":
        return
    dataset.status = "failed"
    if not dataset.errors:
        reason = job.error or "The parse was cancelled before it finished."
        dataset.errors = [reason]


def remove_parse_files(session: Session, job: Job) -> None:
    """A failed dataset keeps no files (its upload included)."""
    dataset = session.get(Dataset, job.params.get("dataset_id"))
    if dataset is not None and dataset.status == "failed":
        remove_tree(Layout().dataset_dir(dataset.id))


@job_kind(
    PARSE_JOB,
    on_failure=mark_parse_failed,
    cleanup=remove_parse_files,
    writes=(Resource.DATASET,),
)
def parse_dataset(ctx) -> dict:
    dataset_id = ctx.params["dataset_id"]
    with session_scope(ctx.settings) as session:
        dataset = session.get(Dataset, dataset_id)
        if dataset is None:
            raise NotFound(f"Dataset {dataset_id} was deleted before it was parsed.")
        name, filename = dataset.name, dataset.original_filename
        file_type, mapping = dataset.file_type, dict(dataset.column_mapping)
        source = original_path(dataset, ctx.layout)
        target = records_path(dataset, ctx.layout)
    ctx.progress(0, f"Reading {filename}")
    last_report = time.monotonic()

    def report(fraction: float, records: int) -> None:
        nonlocal last_report
        now = time.monotonic()
        if now - last_report >= PROGRESS_EVERY_SECONDS:
            last_report = now
            ctx.progress(95 * fraction, f"Read {records:,} records of {filename}")

    try:
        parsed = parse_file(
            source,
            file_type,
            target,
            column_mapping=mapping,
            max_errors=ctx.settings.dataset_max_errors,
            max_line_chars=ctx.settings.dataset_max_line_chars,
            max_records=ctx.settings.dataset_max_records,
            on_progress=report,
        )
    except ParseFailed as failure:
        # Recorded here, where the whole list is known; the job's error carries the summary.
        with session_scope(ctx.settings) as session:
            session.get_one(Dataset, dataset_id).errors = failure.errors
        raise Invalid(failure.summary) from None
    ctx.land(ctx.layout.dataset_dir(dataset_id))
    with ctx.session() as session:
        dataset = session.get(Dataset, dataset_id)
        dataset.status = "ready"
        dataset.format = parsed.format
        dataset.fields = parsed.fields
        dataset.record_count = parsed.record_count
        dataset.digest = parsed.digest
        dataset.errors = []
    ctx.progress(
        100, f"Dataset '{name}' is ready: {parsed.record_count:,} records, {parsed.format}"
    )
    return {"format": parsed.format, "record_count": parsed.record_count}
