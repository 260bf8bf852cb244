"""The knowledge jobs' bodies: read a document into text, and embed documents into an index
version (for a new document, every version that is active or being built; for a reindex, every
document into the new version, then switch).

A document enters a version by a claim (a KnowledgeIndexDocument row, unique per pair), so two
jobs never embed the same document into the same version; its chunk rows and the claim's
`ready` are written together, after its vectors are stored. A job that stops part way leaves
claims still `building`: `forget_unfinished` removes them and their vectors.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError

from tuneyard.auth.service import Principal
from tuneyard.db import session_scope
from tuneyard.errors import Conflict, NotFound
from tuneyard.knowledge import service
from tuneyard.models import (
    Job,
    KnowledgeChunk,
    KnowledgeDocument,
    KnowledgeIndex,
    KnowledgeIndexDocument,
    new_id,
    utcnow,
)
from tuneyard.storage import Layout, atomic_file, delete_on_commit, remove_tree

EMBED_BATCH = 128  # chunks embedded, stored and counted as one step of progress
PROGRESS_EVERY_SECONDS = 0.5


def job_principal(job_created_by: str | None, project_id: str) -> Principal:
    """The job acts in its project as the user who queued it; the request's role was checked
    when it was queued."""
    return Principal(job_created_by or "", "knowledge", project_id, "", "member")


class Progress:
    """Progress reports, at most every half second."""

    def __init__(self, ctx, share: tuple[float, float] = (0.0, 100.0), prefix: str = ""):
        self.ctx = ctx
        self.low, self.high = share
        self.prefix = prefix
        self.last = 0.0

    def __call__(self, fraction: float, message: str, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self.last >= PROGRESS_EVERY_SECONDS:
            self.last = now
            text = f"{self.prefix}: {message}" if self.prefix else message
            self.ctx.progress(self.low + (self.high - self.low) * fraction, text)


# -- reading a document --------------------------------------------------------------------


def read_document(ctx, document_id: str):
    """Convert the upload to text, keep the text and its page spans; the DocumentText."""
    from tuneyard.knowledge.documents import convert

    with ctx.session() as session:
        document = session.get(KnowledgeDocument, document_id)
        if document is None:
            raise NotFound(f"Document {document_id} was deleted before it was read.")
        document.status = "ingesting"
        filename = document.filename
        source = service.original_path(ctx.layout, document)
        target = service.text_path(ctx.layout, document)
    ctx.progress(1, f"Reading {filename}")
    converted = convert(source, filename)
    with atomic_file(target, "w") as out:
        out.write(converted.text)
    with ctx.session() as session:
        document = session.get_one(KnowledgeDocument, document_id)
        document.media_type = converted.media_type[:100]
        document.char_count = len(converted.text)
        document.pages = [
            {"number": p.number, "label": p.label, "start": p.start, "end": p.end}
            for p in converted.pages
        ]
    ctx.progress(10, f"Read {filename}: {len(converted.pages):,} pages")
    return converted


def load_text(layout: Layout, document: KnowledgeDocument):
    """The DocumentText of a document read before (for a reindex)."""
    from tuneyard.knowledge.documents import DocumentText, PageSpan

    text = service.text_path(layout, document).read_text(encoding="utf-8")
    pages = [PageSpan(p["number"], p["label"], p["start"], p["end"]) for p in document.pages]
    return DocumentText(text=text, pages=pages, media_type=document.media_type or "text/plain")


# -- embedding a document into one version -------------------------------------------------


def _claim(ctx, index_id: str, document_id: str) -> bool:
    """Take the (version, document) pair for this job; False when another job has it."""
    try:
        with ctx.session() as session:
            if session.get(KnowledgeIndex, index_id) is None:
                return False
            session.add(
                KnowledgeIndexDocument(
                    index_id=index_id, document_id=document_id, job_id=ctx.job_id
                )
            )
            session.flush()
    except IntegrityError:
        return False
    return True


def _record_dimensions(ctx, index_id: str, dimensions: int) -> None:
    """The first vectors set the version's size; any other size afterwards is refused."""
    with ctx.session() as session:
        session.execute(
            update(KnowledgeIndex)
            .where(KnowledgeIndex.id == index_id, KnowledgeIndex.dimensions.is_(None))
            .values(dimensions=dimensions)
        )
        recorded = session.scalar(
            select(KnowledgeIndex.dimensions).where(KnowledgeIndex.id == index_id)
        )
    if recorded != dimensions:
        raise Conflict(
            f"The embedding model now answers with {dimensions} dimensions, but this index "
            f"version holds {recorded}: the model behind its name changed. Start a reindex "
            "(`tuneyard kb reindex`) to build a version with it."
        )


def embed_into(
    ctx,
    index: KnowledgeIndex,
    document_id: str,
    text,
    embedder,
    report: Callable[[float, str], None],
) -> int:
    """Chunk, embed and store one document in one version; returns its chunk count (0 when
    another job has the pair)."""
    from tuneyard.knowledge.chunking import ChunkSettings, split
    from tuneyard.knowledge.index import IndexRow
    from tuneyard.knowledge.index import KnowledgeIndex as VectorIndex

    if not _claim(ctx, index.id, document_id):
        return 0
    settings = ChunkSettings(**index.chunking)
    chunks = split(text, settings, embedder.count_tokens)
    folder = service.index_dir(ctx.layout, index)
    vectors = VectorIndex.open(folder) if folder.is_dir() else None
    ids = [new_id() for _ in chunks]
    for start in range(0, len(chunks), EMBED_BATCH):
        ctx.check_cancelled()
        batch = chunks[start : start + EMBED_BATCH]
        embedded = embedder.embed([chunk.text for chunk in batch])
        _record_dimensions(ctx, index.id, int(embedded.shape[1]))
        if vectors is None:
            vectors = VectorIndex.create(folder, int(embedded.shape[1]))
        vectors.add(
            [
                IndexRow(chunk_id=ids[start + i], document_id=document_id, text=c.text, vector=v)
                for i, (c, v) in enumerate(zip(batch, embedded, strict=True))
            ]
        )
        done = min(start + EMBED_BATCH, len(chunks))
        report(done / max(1, len(chunks)), f"Embedded {done:,} of {len(chunks):,} chunks")
    if index.state == "active" and folder.is_dir():
        # Searched now: its vectors are where searches read them before its chunks are. A
        # version being built is searched once it is switched to (switch lands it).
        ctx.land(folder)
    with ctx.session() as session:
        claim = session.get(KnowledgeIndexDocument, (index.id, document_id))
        if claim is None:  # the document or version went meanwhile
            if vectors is not None:
                vectors.delete_documents([document_id])
            return 0
        session.add_all(
            KnowledgeChunk(
                id=ids[n],
                index_id=index.id,
                document_id=document_id,
                ordinal=chunk.ordinal,
                start=chunk.start,
                end=chunk.end,
                page=chunk.page,
                page_label=chunk.page_label[:100],
                heading=chunk.heading,
                text=chunk.text,
            )
            for n, chunk in enumerate(chunks)
        )
        claim.state = "ready"
        claim.chunk_count = len(chunks)
    return len(chunks)


def embedder_of(ctx, index: KnowledgeIndex, created_by: str | None):
    from tuneyard.knowledge.embedders import embedder_for

    with session_scope(ctx.settings) as session:
        return embedder_for(
            session, job_principal(created_by, ctx.project_id), index.embedding_model
        )


def _versions_taking_documents(ctx, kb_id: str) -> list[KnowledgeIndex]:
    with session_scope(ctx.settings) as session:
        rows = list(
            session.scalars(
                select(KnowledgeIndex)
                .where(
                    KnowledgeIndex.knowledge_base_id == kb_id,
                    KnowledgeIndex.state.in_(service.ACTIVE_STATES),
                )
                .order_by(KnowledgeIndex.version)
            )
        )
        session.expunge_all()
        return rows


# -- the two jobs --------------------------------------------------------------------------


def ingest(ctx) -> dict[str, Any]:
    """Read one uploaded document and embed it into every version that takes documents."""
    kb_id, document_id = ctx.params["knowledge_base_id"], ctx.params["document_id"]
    with session_scope(ctx.settings) as session:
        created_by = session.get_one(Job, ctx.job_id).created_by
    text = read_document(ctx, document_id)
    versions = _versions_taking_documents(ctx, kb_id)
    chunks = 0
    for n, index in enumerate(versions):
        embedder = embedder_of(ctx, index, created_by)
        share = (10 + 90 * n / len(versions), 10 + 90 * (n + 1) / len(versions))
        report = Progress(ctx, share)
        chunks += embed_into(ctx, index, document_id, text, embedder, report)
    with session_scope(ctx.settings) as session:
        read = session.get(KnowledgeDocument, document_id)
        folder = service.document_dir(ctx.layout, read) if read is not None else None
    if folder is not None:
        ctx.land(folder)  # its text, which passages are cut from, before it says ready
    with ctx.session() as session:
        document = session.get(KnowledgeDocument, document_id)
        if document is None:
            raise NotFound(f"Document {document_id} was deleted while it was read.")
        document.status = "ready"
        document.error = None
        filename = document.filename
    ctx.progress(100, f"{filename} is ready: {chunks:,} chunks")
    return {"document_id": document_id, "chunks": chunks, "pages": len(text.pages)}


def _next_document(ctx, kb_id: str, index_id: str) -> KnowledgeDocument | None:
    """A read document the version does not hold yet (documents uploaded during the build
    are found too: the loop ends only when none is left)."""
    with session_scope(ctx.settings) as session:
        held = select(KnowledgeIndexDocument.document_id).where(
            KnowledgeIndexDocument.index_id == index_id
        )
        document = session.scalar(
            select(KnowledgeDocument)
            .where(
                KnowledgeDocument.knowledge_base_id == kb_id,
                KnowledgeDocument.status.in_(("ingesting", "ready")),
                KnowledgeDocument.char_count > 0,
                KnowledgeDocument.id.not_in(held),
            )
            .order_by(KnowledgeDocument.created_at, KnowledgeDocument.id)
            .limit(1)
        )
        if document is not None:
            session.expunge(document)
        return document


def reindex(ctx) -> dict[str, Any]:
    """Fill a new version with every document, then make it the active one."""
    kb_id, index_id = ctx.params["knowledge_base_id"], ctx.params["index_id"]
    with session_scope(ctx.settings) as session:
        created_by = session.get_one(Job, ctx.job_id).created_by
        index = session.get(KnowledgeIndex, index_id)
        if index is None:
            raise NotFound(f"Index version {index_id} was deleted before it was built.")
        total = session.scalar(
            select(func.count()).where(KnowledgeDocument.knowledge_base_id == kb_id)
        )
        session.expunge(index)
    embedder = embedder_of(ctx, index, created_by)
    done = chunks = 0
    skipped: set[str] = set()
    while (document := _next_document(ctx, kb_id, index_id)) is not None:
        if document.id in skipped:
            break
        total = max(total or 0, done + 1)
        message = f"Version {index.version}: {document.filename} ({done + 1} of {total})"
        report = Progress(ctx, (100 * done / total, 100 * (done + 1) / total), message)
        report(0, "chunking", force=True)
        added = embed_into(
            ctx, index, document.id, load_text(ctx.layout, document), embedder, report
        )
        if added == 0:
            skipped.add(document.id)
        chunks += added
        done += 1
    retired = switch(ctx, kb_id, index_id)
    ctx.progress(100, f"Version {index.version} is active: {done:,} documents, {chunks:,} chunks")
    return {"index_id": index_id, "documents": done, "chunks": chunks, "retired": retired}


def switch(ctx, kb_id: str, index_id: str) -> list[str]:
    """Make the version active and drop the one it replaces (rows now, folder on commit)."""
    with session_scope(ctx.settings) as session:
        index = session.get(KnowledgeIndex, index_id)
        folder = service.index_dir(ctx.layout, index) if index is not None else None
    if folder is not None and folder.is_dir():
        ctx.land(folder)
    with ctx.session() as session:
        index = session.get(KnowledgeIndex, index_id)
        if index is None:
            raise NotFound(f"Index version {index_id} was deleted while it was built.")
        old = list(
            session.scalars(
                select(KnowledgeIndex).where(
                    KnowledgeIndex.knowledge_base_id == kb_id,
                    KnowledgeIndex.id != index_id,
                    KnowledgeIndex.state.in_(("active", "failed")),
                )
            )
        )
        for row in old:
            folder = service.index_dir(ctx.layout, row)
            session.delete(row)
            session.flush()
            delete_on_commit(session, row, folder)
        index.state = "active"
        index.activated_at = utcnow()
        index.error = None
        return [row.id for row in old]


# -- when a job stops part way -------------------------------------------------------------


def forget_unfinished(session, job: Job) -> None:
    """Remove the claims the job left `building`, and the vectors it stored for them."""
    from tuneyard.knowledge.index import KnowledgeIndex as VectorIndex

    claims = list(
        session.scalars(
            select(KnowledgeIndexDocument).where(
                KnowledgeIndexDocument.job_id == job.id,
                KnowledgeIndexDocument.state == "building",
            )
        )
    )
    layout = Layout()
    for claim in claims:
        index = session.get(KnowledgeIndex, claim.index_id)
        if index is not None:
            folder = service.index_dir(layout, index)
            if folder.is_dir():
                VectorIndex.open(folder).delete_documents([claim.document_id])
    if claims:
        session.execute(
            delete(KnowledgeIndexDocument).where(
                KnowledgeIndexDocument.job_id == job.id,
                KnowledgeIndexDocument.state == "building",
            )
        )


def mark_ingest_failed(session, job: Job) -> None:
    """An unreadable or interrupted document is failed and says why."""
    document = session.get(KnowledgeDocument, (job.params or {}).get("document_id"))
    if document is None or document.status == "ready" or document.job_id != job.id:
        return
    document.status = "failed"
    document.error = job.error or "The ingest was cancelled before it finished."


def mark_reindex_failed(session, job: Job) -> None:
    """A version whose build stopped is failed (the active one keeps answering); its folder
    goes with `remove_failed_version`."""
    index = session.get(KnowledgeIndex, (job.params or {}).get("index_id"))
    if index is None or index.state != "building":
        return
    index.state = "failed"
    index.error = job.error or "The build was cancelled before it finished."
    session.execute(
        delete(KnowledgeIndexDocument).where(KnowledgeIndexDocument.index_id == index.id)
    )
    session.execute(delete(KnowledgeChunk).where(KnowledgeChunk.index_id == index.id))


def remove_failed_version(session, job: Job) -> None:
    index = session.get(KnowledgeIndex, (job.params or {}).get("index_id"))
    if index is not None and index.state == "failed":
        remove_tree(service.index_dir(Layout(), index))


def remove_failed_document(session, job: Job) -> None:
    """A failed document keeps its upload (to show what failed) but no converted text."""
    document = session.get(KnowledgeDocument, (job.params or {}).get("document_id"))
    if document is not None and document.status == "failed":
        service.text_path(Layout(), document).unlink(missing_ok=True)
