"""Knowledge bases: create, rename and delete them; upload and delete documents; start new index
versions; search the active one.

Index settings are versions, never edits: a knowledge base searches its one active index version
(one embedding model, one chunking), and a change of either builds a new version by a reindex
job while the active one keeps answering. The switch is one short transaction once the new
version holds every document, and an index is only ever written by its own embedding model, so
vectors of two sizes never meet.

Jobs (tasks.py, ingest.py) do the slow part: converting, chunking, embedding, storing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, BinaryIO

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from tuneyard.auth.service import Principal
from tuneyard.config import get_settings
from tuneyard.errors import Conflict, Invalid, NotFound, TooLarge
from tuneyard.jobs import service as jobs
from tuneyard.jobs.keys import Resource, UseKey, model_key
from tuneyard.knowledge.schemas import (
    DESCRIPTION_MAX,
    MAX_KNOWLEDGE_BASES,
    NAME_MAX,
    ChunkingIn,
)
from tuneyard.modelref import Capability, parse_reference, resolve
from tuneyard.models import (
    Job,
    KnowledgeBase,
    KnowledgeChunk,
    KnowledgeDocument,
    KnowledgeIndex,
    KnowledgeIndexDocument,
    new_id,
)
from tuneyard.pagination import paginate
from tuneyard.storage import (
    Layout,
    atomic_file,
    delete_on_commit,
    discard_on_rollback,
    remove_tree,
)

INGEST_JOB = "knowledge.ingest"
REINDEX_JOB = "knowledge.reindex"
COPY_CHUNK = 1 << 20
ACTIVE_STATES = ("active", "building")  # versions a new document is embedded into
LIST_HINT = "List them with `tuneyard kb ls`."


# -- where things are ----------------------------------------------------------------------


def base_dir(layout: Layout, kb_id: str) -> Path:
    return layout.root / "knowledge" / kb_id


def index_dir(layout: Layout, index: KnowledgeIndex) -> Path:
    return base_dir(layout, index.knowledge_base_id) / "indexes" / index.id


def document_dir(layout: Layout, document: KnowledgeDocument) -> Path:
    return base_dir(layout, document.knowledge_base_id) / "documents" / document.id


def original_path(layout: Layout, document: KnowledgeDocument) -> Path:
    """The upload as it came, named by its row (the user's file name is only a label)."""
    suffix = PurePosixPath(document.filename).suffix.lower()
    return document_dir(layout, document) / f"original{suffix}"


def text_path(layout: Layout, document: KnowledgeDocument) -> Path:
    """The converted text that chunks' offsets point into."""
    return document_dir(layout, document) / "text.txt"


# -- knowledge bases -----------------------------------------------------------------------


def _check_name(name: str) -> str:
    name = (name or "").strip()
    if not 1 <= len(name) <= NAME_MAX:
        raise Invalid(f"A knowledge base name is 1-{NAME_MAX} characters.")
    return name


def _check_description(description: str) -> str:
    if len(description) > DESCRIPTION_MAX:
        raise Invalid(f"A description is at most {DESCRIPTION_MAX:,} characters.")
    return description


def _by_name(session: Session, principal: Principal, name: str) -> KnowledgeBase | None:
    return session.scalar(
        select(KnowledgeBase).where(
            KnowledgeBase.project_id == principal.project_id, KnowledgeBase.name == name
        )
    )


def get_knowledge_base(session: Session, principal: Principal, id_or_name: str) -> KnowledgeBase:
    """A knowledge base of the caller's project, by id or name."""
    kb = session.get(KnowledgeBase, id_or_name)
    if kb is None or kb.project_id != principal.project_id:
        kb = _by_name(session, principal, (id_or_name or "").strip())
    if kb is None:
        raise NotFound(f"No knowledge base '{id_or_name}'. {LIST_HINT}")
    return kb


def find_knowledge_bases(
    session: Session, principal: Principal, refs: Sequence[str]
) -> list[KnowledgeBase]:
    """The knowledge bases a chat or search request names (ids or names), each once."""
    if len(refs) > MAX_KNOWLEDGE_BASES:
        raise Invalid(f"Ground one request in at most {MAX_KNOWLEDGE_BASES} knowledge bases.")
    found: dict[str, KnowledgeBase] = {}
    for ref in refs:
        kb = get_knowledge_base(session, principal, ref)
        found.setdefault(kb.id, kb)
    return list(found.values())


def list_knowledge_bases(
    session: Session, principal: Principal, limit: int, offset: int
) -> tuple[list[KnowledgeBase], int]:
    stmt = (
        select(KnowledgeBase)
        .where(KnowledgeBase.project_id == principal.project_id)
        .order_by(KnowledgeBase.created_at.desc(), KnowledgeBase.id)
    )
    return paginate(session, stmt, limit, offset)


def _embedding_model(session: Session, principal: Principal, text: str) -> tuple[str, str]:
    """The canonical reference and name of an embedding model every member can use."""
    try:
        model = resolve(session, principal, text, Capability.EMBED)
    except (NotFound, Invalid, Conflict) as exc:
        raise type(exc)(f"embedding_model: {exc.message}") from None
    row = model.row
    if getattr(row, "status", "ready") != "ready":
        raise Conflict(f"embedding_model: {model.name} is {row.status}; wait until it is ready.")
    if getattr(row, "private", False):
        raise Invalid(
            f"embedding_model: {model.name} is a private entry, but a knowledge base is shared "
            "with the project; share the entry first (private: false) or choose another model."
        )
    return str(model.ref), model.name


def _chunking(chunking: ChunkingIn) -> dict[str, Any]:
    from tuneyard.knowledge.chunking import ChunkSettings

    settings = ChunkSettings(chunking.splitter, chunking.size, chunking.overlap).check()
    return {"splitter": settings.splitter, "size": settings.size, "overlap": settings.overlap}


def create_knowledge_base(
    session: Session,
    principal: Principal,
    *,
    name: str,
    embedding_model: str,
    description: str = "",
    chunking: ChunkingIn | None = None,
) -> KnowledgeBase:
    """A knowledge base with an empty first index version, active at once."""
    principal.require("member")
    name = _check_name(name)
    description = _check_description(description)
    settings = _chunking(chunking or ChunkingIn())
    ref, model_name = _embedding_model(session, principal, embedding_model)
    if _by_name(session, principal, name) is not None:
        raise Conflict(f"A knowledge base named '{name}' already exists; choose another name.")
    kb = KnowledgeBase(
        project_id=principal.project_id,
        name=name,
        description=description,
        created_by=principal.user_id,
    )
    session.add(kb)
    try:
        session.flush()
    except IntegrityError:
        raise Conflict(
            f"A knowledge base named '{name}' was created at the same time; choose another name."
        ) from None
    session.add(
        KnowledgeIndex(
            knowledge_base_id=kb.id,
            version=1,
            embedding_model=ref,
            embedding_name=model_name,
            chunking=settings,
            state="active",
            activated_at=kb.created_at,
        )
    )
    session.flush()
    return kb


def update_knowledge_base(
    session: Session,
    principal: Principal,
    id_or_name: str,
    *,
    name: str | None = None,
    description: str | None = None,
) -> KnowledgeBase:
    """Rename or describe; index settings change by `start_reindex`."""
    principal.require("member")
    kb = get_knowledge_base(session, principal, id_or_name)
    if name is not None:
        name = _check_name(name)
        other = _by_name(session, principal, name)
        if other is not None and other.id != kb.id:
            raise Conflict(f"A knowledge base named '{name}' already exists; choose another name.")
        kb.name = name
    if description is not None:
        kb.description = _check_description(description)
    session.flush()
    return kb


def delete_knowledge_base(session: Session, principal: Principal, id_or_name: str) -> str:
    """Remove the base, its documents and every index version; refused while a job works on it."""
    principal.require("member")
    kb = get_knowledge_base(session, principal, id_or_name)
    jobs.ensure_not_in_use(
        session, UseKey(Resource.KNOWLEDGE_BASE, kb.id), f"Knowledge base {kb.name}"
    )
    name = kb.name
    session.delete(kb)
    session.flush()
    delete_on_commit(session, kb, base_dir(Layout(), kb.id))
    return name


# -- index versions ------------------------------------------------------------------------


def active_index(session: Session, kb: KnowledgeBase) -> KnowledgeIndex | None:
    return session.scalar(
        select(KnowledgeIndex).where(
            KnowledgeIndex.knowledge_base_id == kb.id, KnowledgeIndex.state == "active"
        )
    )


def building_index(session: Session, kb: KnowledgeBase) -> KnowledgeIndex | None:
    return session.scalar(
        select(KnowledgeIndex).where(
            KnowledgeIndex.knowledge_base_id == kb.id, KnowledgeIndex.state == "building"
        )
    )


def job_keys(session: Session, kb_ids: Sequence[str]) -> list[UseKey]:
    """What a job reading or writing these knowledge bases holds: each base, and the embedding
    model of each of its versions that is active or being built (a job on a cluster node finds
    their files there through them)."""
    keys = [UseKey(Resource.KNOWLEDGE_BASE, kb_id) for kb_id in dict.fromkeys(kb_ids)]
    refs = session.scalars(
        select(KnowledgeIndex.embedding_model)
        .where(
            KnowledgeIndex.knowledge_base_id.in_(list(kb_ids)),
            KnowledgeIndex.state.in_(ACTIVE_STATES),
        )
        .order_by(KnowledgeIndex.version)
    )
    for ref in dict.fromkeys(refs):
        kind, model_id = parse_reference(ref)
        assert kind is not None, "an index stores its embedding model as kind:id"
        keys.append(model_key(kind, model_id))
    return keys


def list_indexes(session: Session, principal: Principal, id_or_name: str) -> list[KnowledgeIndex]:
    kb = get_knowledge_base(session, principal, id_or_name)
    return list(
        session.scalars(
            select(KnowledgeIndex)
            .where(KnowledgeIndex.knowledge_base_id == kb.id)
            .order_by(KnowledgeIndex.version.desc())
        )
    )


def start_reindex(
    session: Session,
    principal: Principal,
    id_or_name: str,
    *,
    embedding_model: str | None = None,
    chunking: ChunkingIn | None = None,
) -> tuple[KnowledgeIndex, Job]:
    """Build a new index version (the active one's settings, with what is given changed) by a
    job; the active version answers until the new one holds every document."""
    principal.require("member")
    kb = get_knowledge_base(session, principal, id_or_name)
    current = active_index(session, kb)
    building = building_index(session, kb)
    if building is not None:
        raise Conflict(
            f"Version {building.version} of {kb.name}'s index is being built (job "
            f"{building.job_id}); wait for it, or cancel that job first."
        )
    if embedding_model is not None:
        ref, model_name = _embedding_model(session, principal, embedding_model)
    elif current is not None:
        ref, model_name = current.embedding_model, current.embedding_name
        _embedding_model(session, principal, ref)  # still there, and usable
    else:
        raise Invalid(f"{kb.name} has no active index; name an embedding_model.")
    if chunking is not None:
        settings = _chunking(chunking)
    elif current is not None:
        settings = dict(current.chunking)
    else:
        settings = _chunking(ChunkingIn())
    version = (
        session.scalar(
            select(func.max(KnowledgeIndex.version)).where(
                KnowledgeIndex.knowledge_base_id == kb.id
            )
        )
        or 0
    ) + 1
    index = KnowledgeIndex(
        knowledge_base_id=kb.id,
        version=version,
        embedding_model=ref,
        embedding_name=model_name,
        chunking=settings,
        state="building",
    )
    session.add(index)
    try:
        session.flush()
    except IntegrityError:
        raise Conflict(f"{kb.name}'s index was changed at the same time; try again.") from None
    job = jobs.enqueue(
        session,
        principal,
        REINDEX_JOB,
        {"knowledge_base_id": kb.id, "index_id": index.id},
        uses=job_keys(session, [kb.id]),
        message=f"Waiting for a worker to build version {version} of {kb.name}'s index",
    )
    index.job_id = job.id
    session.flush()
    return index, job


def index_counts(session: Session, index: KnowledgeIndex) -> tuple[int, int]:
    """How many documents are ready in the version, and how many chunks it holds."""
    documents, chunks = session.execute(
        select(
            func.count(),
            func.coalesce(func.sum(KnowledgeIndexDocument.chunk_count), 0),
        ).where(
            KnowledgeIndexDocument.index_id == index.id,
            KnowledgeIndexDocument.state == "ready",
        )
    ).one()
    return int(documents), int(chunks)


def describe_index(session: Session, index: KnowledgeIndex | None) -> dict[str, Any] | None:
    if index is None:
        return None
    documents, chunks = index_counts(session, index)
    fields = {
        name: getattr(index, name)
        for name in (
            "id",
            "version",
            "embedding_model",
            "embedding_name",
            "dimensions",
            "chunking",
            "state",
            "error",
            "job_id",
            "created_at",
            "activated_at",
        )
    }
    return {**fields, "documents": documents, "chunks": chunks}


def describe(session: Session, kb: KnowledgeBase) -> dict[str, Any]:
    documents = session.scalar(
        select(func.count()).where(KnowledgeDocument.knowledge_base_id == kb.id)
    )
    return {
        "id": kb.id,
        "name": kb.name,
        "description": kb.description,
        "created_at": kb.created_at,
        "documents": int(documents or 0),
        "active_index": describe_index(session, active_index(session, kb)),
        "building_index": describe_index(session, building_index(session, kb)),
    }


# -- documents -----------------------------------------------------------------------------


def _save_upload(content: BinaryIO, target: Path, limit: int) -> tuple[int, str]:
    """Stream the upload to `target`, refusing it past `limit`; its size and sha256."""
    size = 0
    digest = hashlib.sha256()
    with atomic_file(target) as out:
        while chunk := content.read(COPY_CHUNK):
            size += len(chunk)
            if size > limit:
                raise TooLarge(
                    f"The document is over the {limit / 1024**2:.0f} MiB limit "
                    "(TUNEYARD_KNOWLEDGE_MAX_FILE_BYTES); split it, or upload a smaller one."
                )
            digest.update(chunk)
            out.write(chunk)
    if size == 0:
        raise Invalid("The document is empty; upload a file with text in it.")
    return size, digest.hexdigest()


def _check_filename(filename: str) -> str:
    from tuneyard.knowledge.documents import SUPPORTED_SUFFIXES

    # Browsers on Windows may send the full path of the file.
    filename = PureWindowsPath(filename or "").name.strip()
    if not filename:
        raise Invalid("The upload has no file name; its extension tells the document type.")
    if len(filename) > 255:
        raise Invalid("A document's file name is at most 255 characters.")
    suffix = PurePosixPath(filename).suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise Invalid(
            f"'{filename}' is not a document Tuneyard reads; upload one of: "
            f"{', '.join(SUPPORTED_SUFFIXES)}."
        )
    return filename


def add_document(
    session: Session, principal: Principal, id_or_name: str, *, filename: str, content: BinaryIO
) -> tuple[KnowledgeDocument, Job]:
    """Store an uploaded document and queue its ingest job. The same file twice is refused,
    naming the document that has it; a failed one is replaced."""
    principal.require("member")
    kb = get_knowledge_base(session, principal, id_or_name)
    filename = _check_filename(filename)
    layout = Layout()
    document = KnowledgeDocument(
        id=new_id(),
        knowledge_base_id=kb.id,
        filename=filename,
        digest="",
        size_bytes=0,
        status="queued",
        created_by=principal.user_id,
    )
    folder = document_dir(layout, document)
    try:
        document.size_bytes, document.digest = _save_upload(
            content, original_path(layout, document), get_settings().knowledge_max_file_bytes
        )
        same = session.scalar(
            select(KnowledgeDocument).where(
                KnowledgeDocument.knowledge_base_id == kb.id,
                KnowledgeDocument.digest == document.digest,
            )
        )
        if same is not None and same.status != "failed":
            raise Conflict(
                f"{kb.name} already has this file, as '{same.filename}' ({same.status}); "
                "delete that document first to upload it again."
            )
        if same is not None:
            _delete_document_rows(session, layout, same)
        session.add(document)
        try:
            session.flush()
        except IntegrityError:
            raise Conflict(
                f"The same file was uploaded to {kb.name} at the same time; it is there once."
            ) from None
        job = jobs.enqueue(
            session,
            principal,
            INGEST_JOB,
            {"knowledge_base_id": kb.id, "document_id": document.id},
            uses=[
                *job_keys(session, [kb.id]),
                UseKey(Resource.KNOWLEDGE_DOCUMENT, document.id),
            ],
            message=f"Waiting for a worker to read {filename}",
        )
    except BaseException:
        remove_tree(folder)
        raise
    document.job_id = job.id
    session.flush()
    discard_on_rollback(session, folder)
    return document, job


def get_document(
    session: Session, principal: Principal, id_or_name: str, document_id: str
) -> KnowledgeDocument:
    kb = get_knowledge_base(session, principal, id_or_name)
    document = session.get(KnowledgeDocument, document_id)
    if document is None or document.knowledge_base_id != kb.id:
        raise NotFound(
            f"No document '{document_id}' in {kb.name}. List them with `tuneyard kb ls {kb.name}`."
        )
    return document


def list_documents(
    session: Session, principal: Principal, id_or_name: str, limit: int, offset: int
) -> tuple[list[KnowledgeDocument], int]:
    kb = get_knowledge_base(session, principal, id_or_name)
    stmt = (
        select(KnowledgeDocument)
        .where(KnowledgeDocument.knowledge_base_id == kb.id)
        .order_by(KnowledgeDocument.created_at.desc(), KnowledgeDocument.id)
    )
    return paginate(session, stmt, limit, offset)


def describe_document(session: Session, document: KnowledgeDocument) -> dict[str, Any]:
    job = session.get(Job, document.job_id) if document.job_id else None
    kb = session.get_one(KnowledgeBase, document.knowledge_base_id)
    index = active_index(session, kb)
    chunks = 0
    if index is not None:
        chunks = (
            session.scalar(
                select(KnowledgeIndexDocument.chunk_count).where(
                    KnowledgeIndexDocument.index_id == index.id,
                    KnowledgeIndexDocument.document_id == document.id,
                    KnowledgeIndexDocument.state == "ready",
                )
            )
            or 0
        )
    fields = {
        name: getattr(document, name)
        for name in (
            "id",
            "knowledge_base_id",
            "filename",
            "digest",
            "size_bytes",
            "media_type",
            "status",
            "error",
            "char_count",
            "job_id",
            "created_at",
        )
    }
    return {
        **fields,
        "pages": len(document.pages or []),
        "chunks": int(chunks),
        "progress": job.progress if job is not None else 0.0,
        "message": job.message if job is not None else "",
    }


def _delete_document_rows(session: Session, layout: Layout, document: KnowledgeDocument) -> None:
    """Forget the document: its rows (chunks and memberships go with it), its vectors in every
    version's index, and its files once the deletion commits. Searches skip vectors whose chunk
    row is gone, so the order of the two stores never shows a dangling passage."""
    from tuneyard.knowledge.index import KnowledgeIndex as VectorIndex

    folders = [
        index_dir(layout, index)
        for index in session.scalars(
            select(KnowledgeIndex)
            .join(KnowledgeIndexDocument, KnowledgeIndexDocument.index_id == KnowledgeIndex.id)
            .where(KnowledgeIndexDocument.document_id == document.id)
        )
    ]
    session.delete(document)
    session.flush()
    delete_on_commit(session, document, document_dir(layout, document))
    for folder in folders:
        if folder.is_dir():
            VectorIndex.open(folder).delete_documents([document.id])


def delete_document(
    session: Session, principal: Principal, id_or_name: str, document_id: str
) -> str:
    """Remove a document and its chunks from every index version; returns its file name."""
    principal.require("member")
    document = get_document(session, principal, id_or_name, document_id)
    jobs.ensure_not_in_use(
        session, UseKey(Resource.KNOWLEDGE_DOCUMENT, document.id), f"Document {document.filename}"
    )
    kb = session.get_one(KnowledgeBase, document.knowledge_base_id)
    if building_index(session, kb) is not None:
        raise Conflict(
            f"{kb.name}'s index is being rebuilt; delete documents once that job has finished, "
            "or cancel it."
        )
    filename = document.filename
    _delete_document_rows(session, Layout(), document)
    return filename


def document_text(
    session: Session,
    principal: Principal,
    id_or_name: str,
    document_id: str,
    start: int = 0,
    end: int | None = None,
) -> dict[str, Any]:
    """A window of the document's converted text (a cited passage, with what surrounds it)."""
    document = get_document(session, principal, id_or_name, document_id)
    if document.status != "ready":
        raise Conflict(f"{document.filename} is {document.status}; its text is there once ready.")
    limit = 200_000
    end = document.char_count if end is None else min(end, document.char_count)
    start = max(0, min(start, end))
    if end - start > limit:
        raise Invalid(f"Read at most {limit:,} characters at a time (start and end).")
    text = text_path(Layout(), document).read_text(encoding="utf-8")
    return {
        "document_id": document.id,
        "filename": document.filename,
        "start": start,
        "end": end,
        "char_count": document.char_count,
        "text": text[start:end],
    }


def chunks_by_id(session: Session, chunk_ids: Sequence[str]) -> dict[str, KnowledgeChunk]:
    if not chunk_ids:
        return {}
    rows = session.scalars(select(KnowledgeChunk).where(KnowledgeChunk.id.in_(list(chunk_ids))))
    return {row.id: row for row in rows}
