"""Knowledge bases: create, list, show, rename, delete; documents (upload, list, show, read,
delete); index versions and reindex; search."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Query, UploadFile, status

from tuneyard.deps import CurrentPrincipal, DbSession, Paging
from tuneyard.gate import body_limit
from tuneyard.jobs.schemas import JobAccepted
from tuneyard.knowledge import evaluation, retrieval, service
from tuneyard.knowledge.schemas import (
    DocumentAccepted,
    DocumentOut,
    DocumentTextOut,
    EvaluateIn,
    EvaluationOut,
    IndexOut,
    KnowledgeBaseCreate,
    KnowledgeBaseOut,
    KnowledgeBaseUpdate,
    ReindexIn,
    SearchIn,
    SearchOut,
)
from tuneyard.pagination import Page

router = APIRouter(prefix="/knowledge-bases", tags=["knowledge bases"])

TOO_LARGE = (
    "The document is over the {limit} limit (TUNEYARD_KNOWLEDGE_MAX_FILE_BYTES); split it, or "
    "upload a smaller one."
)


@router.post("", response_model=KnowledgeBaseOut, status_code=status.HTTP_201_CREATED)
def create_knowledge_base(
    body: KnowledgeBaseCreate, principal: CurrentPrincipal, session: DbSession
):
    """A knowledge base with its embedding model and chunking (version 1 of its index)."""
    kb = service.create_knowledge_base(
        session,
        principal,
        name=body.name,
        description=body.description,
        embedding_model=body.embedding_model,
        chunking=body.chunking,
    )
    return service.describe(session, kb)


@router.get("", response_model=Page[KnowledgeBaseOut])
def list_knowledge_bases(principal: CurrentPrincipal, session: DbSession, page: Paging):
    items, total = service.list_knowledge_bases(session, principal, page.limit, page.offset)
    return {"items": [service.describe(session, kb) for kb in items], "total": total}


@router.get("/{kb}", response_model=KnowledgeBaseOut)
def get_knowledge_base(kb: str, principal: CurrentPrincipal, session: DbSession):
    """By id or name: the active index version, and the one being built if any."""
    return service.describe(session, service.get_knowledge_base(session, principal, kb))


@router.patch("/{kb}", response_model=KnowledgeBaseOut)
def update_knowledge_base(
    kb: str, body: KnowledgeBaseUpdate, principal: CurrentPrincipal, session: DbSession
):
    """Rename or describe it; the embedding model and chunking change by a reindex."""
    row = service.update_knowledge_base(
        session, principal, kb, name=body.name, description=body.description
    )
    return service.describe(session, row)


@router.delete("/{kb}", status_code=status.HTTP_204_NO_CONTENT)
def delete_knowledge_base(kb: str, principal: CurrentPrincipal, session: DbSession):
    """The base, its documents and its index (refused while a job works on it)."""
    service.delete_knowledge_base(session, principal, kb)


@router.get("/{kb}/indexes", response_model=list[IndexOut])
def list_indexes(kb: str, principal: CurrentPrincipal, session: DbSession):
    """Every index version, newest first: active, being built, or failed."""
    return [
        service.describe_index(session, index)
        for index in service.list_indexes(session, principal, kb)
    ]


@router.post("/{kb}/reindex", response_model=JobAccepted, status_code=status.HTTP_202_ACCEPTED)
def reindex(kb: str, body: ReindexIn, principal: CurrentPrincipal, session: DbSession):
    """Build a new index version (another embedding model or chunking, or the same again);
    the active version answers until the new one is complete. The id is the new version's."""
    index, job = service.start_reindex(
        session, principal, kb, embedding_model=body.embedding_model, chunking=body.chunking
    )
    return JobAccepted(id=index.id, job_id=job.id)


@router.post("/{kb}/search", response_model=SearchOut)
def search(kb: str, body: SearchIn, principal: CurrentPrincipal, session: DbSession):
    """The passages that answer the query best, with their scores and exact place."""
    return retrieval.search(
        session,
        principal,
        kb,
        body.query,
        top_k=body.top_k,
        mode=body.mode,
        document_ids=body.document_ids,
        min_score=body.min_score,
        rerank=body.rerank,
    )


@router.post("/{kb}/evaluate", response_model=EvaluationOut)
def evaluate(kb: str, body: EvaluateIn, principal: CurrentPrincipal, session: DbSession):
    """Retrieval only: the hit rate and MRR@k of search on a dataset of questions with the
    expected document (file name) or passage."""
    return evaluation.evaluate(
        session,
        principal,
        kb,
        dataset=body.dataset_id,
        question_column=body.question_column,
        expected_column=body.expected_column,
        expected=body.expected,
        top_k=body.top_k,
        mode=body.mode,
        size=body.size,
        seed=body.seed,
        rerank=body.rerank,
    )


@router.post(
    "/{kb}/documents", response_model=DocumentAccepted, status_code=status.HTTP_202_ACCEPTED
)
@body_limit(lambda settings: settings.knowledge_max_file_bytes, TOO_LARGE)
def upload_document(
    kb: str,
    principal: CurrentPrincipal,
    session: DbSession,
    file: Annotated[
        UploadFile,
        File(description="PDF, DOCX, PPTX, XLSX, HTML, Markdown, text, CSV or JSONL."),
    ],
):
    """Store the document and start reading it; follow the job, then read the document."""
    document, job = service.add_document(
        session, principal, kb, filename=file.filename or "", content=file.file
    )
    return DocumentAccepted(id=document.id, job_id=job.id)


@router.get("/{kb}/documents", response_model=Page[DocumentOut])
def list_documents(kb: str, principal: CurrentPrincipal, session: DbSession, page: Paging):
    items, total = service.list_documents(session, principal, kb, page.limit, page.offset)
    return {"items": [service.describe_document(session, d) for d in items], "total": total}


@router.get("/{kb}/documents/{document_id}", response_model=DocumentOut)
def get_document(kb: str, document_id: str, principal: CurrentPrincipal, session: DbSession):
    document = service.get_document(session, principal, kb, document_id)
    return service.describe_document(session, document)


@router.get("/{kb}/documents/{document_id}/text", response_model=DocumentTextOut)
def document_text(
    kb: str,
    document_id: str,
    principal: CurrentPrincipal,
    session: DbSession,
    start: Annotated[int, Query(ge=0, le=2**31)] = 0,
    end: Annotated[int | None, Query(ge=0, le=2**31)] = None,
):
    """The converted text (a window of it: a cited passage's start and end, widened)."""
    return service.document_text(session, principal, kb, document_id, start, end)


@router.delete("/{kb}/documents/{document_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_document(kb: str, document_id: str, principal: CurrentPrincipal, session: DbSession):
    """The document and its chunks in every index version."""
    service.delete_document(session, principal, kb, document_id)
