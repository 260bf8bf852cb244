"""Searching knowledge bases: one query against the active index version of one or several
bases, the passages out with where they are (document, page, exact span) and why they were
found (vector, BM25 and fused scores and ranks).

Several bases share one top-k: each is asked for top-k, and the best top-k of all by fused score
are kept (reciprocal rank scores are comparable across indexes: they depend on ranks only).

With a reranker configured (tuneyard.knowledge.rerank), each base is asked for more candidates
(RERANK_POOL times top-k), the reranker scores them all against the query, and the best top-k by
its score are kept; its scores are comparable across bases too (one model, one query).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy.orm import Session

from tuneyard.auth.service import Principal
from tuneyard.errors import Invalid
from tuneyard.knowledge import service
from tuneyard.knowledge.rerank import reranker
from tuneyard.knowledge.schemas import QUERY_MAX_CHARS, TOP_K_MAX, SearchMode
from tuneyard.models import KnowledgeBase, KnowledgeDocument
from tuneyard.storage import Layout

# Vectors of a document deleted a moment ago may still be in the index: ask for a few more.
SPARE = 4
# Candidates a reranker reads per passage returned: a passage fusion ranks low gets its chance.
RERANK_POOL = 3


def _check(query: str, top_k: int) -> str:
    query = (query or "").strip()
    if not query:
        raise Invalid("The query is empty; ask something.")
    if len(query) > QUERY_MAX_CHARS:
        raise Invalid(f"A query is at most {QUERY_MAX_CHARS:,} characters.")
    if not 1 <= top_k <= TOP_K_MAX:
        raise Invalid(f"top_k is 1-{TOP_K_MAX}.")
    return query


def _search_one(
    session: Session,
    principal: Principal,
    kb: KnowledgeBase,
    query: str,
    *,
    top_k: int,
    mode: SearchMode,
    document_ids: Sequence[str] | None,
    min_score: float | None,
) -> tuple[int, list[dict[str, Any]]]:
    from tuneyard.knowledge.embedders import embedder_for
    from tuneyard.knowledge.index import KnowledgeIndex as VectorIndex

    index = service.active_index(session, kb)
    if index is None:
        return 0, []
    folder = service.index_dir(Layout(), index)
    if not folder.is_dir():  # nothing embedded yet
        return index.version, []
    vector = None
    if mode != "fulltext":
        vector = embedder_for(session, principal, index.embedding_model).embed([query])[0]
    hits = VectorIndex.open(folder).search(
        query=query,
        vector=vector,
        top_k=top_k + SPARE,
        mode=mode,
        document_ids=document_ids,
        min_score=min_score,
    )
    chunks = service.chunks_by_id(session, [hit.chunk_id for hit in hits])
    documents = {
        doc.id: doc
        for doc in session.query(KnowledgeDocument).filter(
            KnowledgeDocument.id.in_({chunk.document_id for chunk in chunks.values()})
        )
    }
    passages = []
    for hit in hits:
        chunk = chunks.get(hit.chunk_id)
        document = documents.get(chunk.document_id) if chunk is not None else None
        if chunk is None or document is None:
            continue
        passages.append(
            {
                "chunk_id": chunk.id,
                "knowledge_base_id": kb.id,
                "knowledge_base": kb.name,
                "document_id": document.id,
                "filename": document.filename,
                "page": chunk.page,
                "page_label": chunk.page_label,
                "start": chunk.start,
                "end": chunk.end,
                "heading": chunk.heading,
                "text": chunk.text,
                "score": hit.score,
                "vector_score": hit.vector_score,
                "text_score": hit.text_score,
                "vector_rank": hit.vector_rank,
                "text_rank": hit.text_rank,
                "rerank_score": None,
            }
        )
    return index.version, passages[:top_k]


def _rerank(
    query: str, passages: list[dict[str, Any]], top_k: int, rerank: bool
) -> tuple[str | None, list[dict[str, Any]]]:
    """The reranker's name and the best `top_k` passages by its score (ties keep the fused
    order); without one, (None, the passages as they are)."""
    chosen = reranker() if rerank else None
    if chosen is None or not passages:
        return None, passages[:top_k]
    # Several bases' candidates together: the best by fused score are the ones read.
    passages = passages[: top_k * RERANK_POOL]
    scores = chosen.rerank(query, [passage["text"] for passage in passages])
    scored = [
        {**passage, "rerank_score": score} for passage, score in zip(passages, scores, strict=True)
    ]
    scored.sort(key=lambda passage: passage["rerank_score"], reverse=True)
    return chosen.name, scored[:top_k]


def _candidates(top_k: int, rerank: bool) -> int:
    return top_k * RERANK_POOL if rerank and reranker() is not None else top_k


def search(
    session: Session,
    principal: Principal,
    id_or_name: str,
    query: str,
    *,
    top_k: int = 5,
    mode: SearchMode = "hybrid",
    document_ids: Sequence[str] | None = None,
    min_score: float | None = None,
    rerank: bool = True,
) -> dict[str, Any]:
    """The passages of one knowledge base that answer `query` best; reordered by the configured
    reranker unless `rerank` is False."""
    principal.require("viewer")
    kb = service.get_knowledge_base(session, principal, id_or_name)
    query = _check(query, top_k)
    version, passages = _search_one(
        session,
        principal,
        kb,
        query,
        top_k=_candidates(top_k, rerank),
        mode=mode,
        document_ids=document_ids,
        min_score=min_score,
    )
    used, passages = _rerank(query, passages, top_k, rerank)
    return {
        "query": query,
        "mode": mode,
        "index_version": version,
        "reranker": used,
        "passages": passages,
    }


def retrieve(
    session: Session,
    principal: Principal,
    refs: Sequence[str],
    query: str,
    *,
    top_k: int = 5,
    mode: SearchMode = "hybrid",
    rerank: bool = True,
) -> list[dict[str, Any]]:
    """The best `top_k` passages of all the named knowledge bases together."""
    principal.require("viewer")
    bases = service.find_knowledge_bases(session, principal, refs)
    query = _check(query, top_k)
    candidates = _candidates(top_k, rerank)
    passages: list[dict[str, Any]] = []
    for kb in bases:
        _version, found = _search_one(
            session,
            principal,
            kb,
            query,
            top_k=candidates,
            mode=mode,
            document_ids=None,
            min_score=None,
        )
        passages.extend(found)
    passages.sort(key=lambda passage: passage["score"], reverse=True)
    return _rerank(query, passages, top_k, rerank)[1]
