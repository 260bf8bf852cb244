"""The knowledge jobs: "knowledge.ingest" reads one document into every index version that takes
documents; "knowledge.reindex" builds a new version and switches to it. Cancel stops either
between batches of chunks."""

from __future__ import annotations

from tuneyard.jobs.keys import Resource
from tuneyard.jobs.registry import job_kind
from tuneyard.knowledge.service import INGEST_JOB, REINDEX_JOB


def _ingest_failed(session, job) -> None:
    from tuneyard.knowledge import ingest

    ingest.forget_unfinished(session, job)
    ingest.mark_ingest_failed(session, job)


def _ingest_cleanup(session, job) -> None:
    from tuneyard.knowledge import ingest

    ingest.remove_failed_document(session, job)


def _reindex_failed(session, job) -> None:
    from tuneyard.knowledge import ingest

    ingest.forget_unfinished(session, job)
    ingest.mark_reindex_failed(session, job)


def _reindex_cleanup(session, job) -> None:
    from tuneyard.knowledge import ingest

    ingest.remove_failed_version(session, job)


@job_kind(
    INGEST_JOB,
    on_failure=_ingest_failed,
    cleanup=_ingest_cleanup,
    cooperative_cancel=True,
    writes=(Resource.KNOWLEDGE_BASE,),  # the document's text and the versions' vectors
)
def ingest_document(ctx):
    from tuneyard.knowledge.ingest import ingest

    return ingest(ctx)


@job_kind(
    REINDEX_JOB,
    on_failure=_reindex_failed,
    cleanup=_reindex_cleanup,
    cooperative_cancel=True,
    writes=(Resource.KNOWLEDGE_BASE,),  # the new version's vectors; the old one goes
)
def reindex_knowledge_base(ctx):
    from tuneyard.knowledge.ingest import reindex

    return reindex(ctx)
