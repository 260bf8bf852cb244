"""API shapes for knowledge bases: the base, its index versions, documents, and search."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

NAME_MAX = 200
DESCRIPTION_MAX = 2000
QUERY_MAX_CHARS = 2000
TOP_K_MAX = 50
MAX_KNOWLEDGE_BASES = 5  # grounding one chat request
SearchMode = Literal["hybrid", "vector", "fulltext"]


class ChunkingIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    splitter: Literal["recursive", "markdown"] = Field(
        "recursive",
        description="recursive: paragraphs, lines, sentences; markdown: headings first.",
    )
    size: int = Field(256, ge=32, le=4096, description="Tokens per chunk, at most.")
    overlap: int = Field(32, ge=0, le=2048, description="Tokens carried into the next chunk.")


class KnowledgeBaseCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=NAME_MAX, pattern=r"\S")
    description: str = Field("", max_length=DESCRIPTION_MAX)
    embedding_model: str = Field(
        min_length=1,
        max_length=500,
        description="An embedding model: base:<id>, third-party:<id>, or its name.",
    )
    chunking: ChunkingIn = Field(default_factory=ChunkingIn)


class KnowledgeBaseUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, min_length=1, max_length=NAME_MAX, pattern=r"\S")
    description: str | None = Field(None, max_length=DESCRIPTION_MAX)


class ReindexIn(BaseModel):
    """What the new index version changes; what is left out stays as the active version has it."""

    model_config = ConfigDict(extra="forbid")

    embedding_model: str | None = Field(None, min_length=1, max_length=500)
    chunking: ChunkingIn | None = None


class IndexOut(BaseModel):
    id: str
    version: int
    embedding_model: str
    embedding_name: str
    dimensions: int | None
    chunking: dict
    state: str
    error: str | None
    job_id: str | None
    documents: int
    chunks: int
    created_at: datetime
    activated_at: datetime | None


class KnowledgeBaseOut(BaseModel):
    id: str
    name: str
    description: str
    created_at: datetime
    documents: int
    active_index: IndexOut | None
    building_index: IndexOut | None


class DocumentOut(BaseModel):
    id: str
    knowledge_base_id: str
    filename: str
    digest: str
    size_bytes: int
    media_type: str | None
    status: str
    error: str | None
    pages: int
    char_count: int
    chunks: int
    job_id: str | None
    progress: float
    message: str
    created_at: datetime


class DocumentAccepted(BaseModel):
    id: str
    job_id: str


class SearchIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    query: str = Field(min_length=1, max_length=QUERY_MAX_CHARS)
    top_k: int = Field(5, ge=1, le=TOP_K_MAX)
    mode: SearchMode = "hybrid"
    document_ids: list[str] | None = Field(
        None, max_length=100, description="Only passages of these documents."
    )
    min_score: float | None = Field(
        None,
        description="Drop passages scoring below this (the fused score in hybrid mode, cosine "
        "similarity in vector mode, BM25 in full-text mode), before any reranking.",
    )
    rerank: bool = Field(
        True,
        description="Reorder the passages by the server's reranker, when one is configured; "
        "false keeps the fused order.",
    )


class Passage(BaseModel):
    """One retrieved passage: where it is, its exact text, and why it was found."""

    chunk_id: str
    knowledge_base_id: str
    knowledge_base: str
    document_id: str
    filename: str
    page: int
    page_label: str
    start: int = Field(description="Offset of the passage in the document's text.")
    end: int
    heading: str | None
    text: str
    score: float = Field(description="The fused (reciprocal rank) score, or the mode's score.")
    vector_score: float | None = Field(description="Cosine similarity to the query.")
    text_score: float | None = Field(description="BM25 score of the query's words.")
    vector_rank: int | None
    text_rank: int | None
    rerank_score: float | None = Field(
        None,
        description="The reranker's relevance score, by which the passages are ordered; null "
        "when no reranker ran.",
    )


class SearchOut(BaseModel):
    query: str
    mode: SearchMode
    index_version: int
    reranker: str | None = Field(
        None, description="The reranker that ordered the passages; null when none ran."
    )
    passages: list[Passage]


class DocumentTextOut(BaseModel):
    """The document's converted text, or a window of it around a passage."""

    document_id: str
    filename: str
    start: int
    end: int
    char_count: int
    text: str


class EvaluateIn(BaseModel):
    """Questions of a dataset, each with the document or passage search should find."""

    model_config = ConfigDict(extra="forbid")

    dataset_id: str = Field(min_length=1, max_length=200, description="A dataset, by id or name.")
    question_column: str = Field(min_length=1, max_length=200)
    expected_column: str = Field(
        min_length=1, max_length=200, description="The expected document's file name, or passage."
    )
    expected: Literal["document", "passage"] = "document"
    top_k: int = Field(5, ge=1, le=TOP_K_MAX)
    mode: SearchMode = "hybrid"
    size: int = Field(100, ge=1, le=500, description="How many questions (the first, or drawn).")
    seed: int | None = Field(None, ge=0, le=2**32 - 1, description="Draw them with this seed.")
    rerank: bool = Field(
        True, description="Search as a user would, with the reranker when one is configured."
    )


class EvaluationRow(BaseModel):
    record_index: int
    question: str
    expected: str
    rank: int | None = Field(description="Where the first match ranks; null when not in top k.")
    skipped: str | None = None
    retrieved: list[dict] | None = None


class EvaluationOut(BaseModel):
    knowledge_base: str
    dataset: str
    k: int
    mode: SearchMode
    reranker: str | None = Field(None, description="The reranker that ordered the passages.")
    expected: str
    questions: int
    skipped: int
    hit_rate: float | None = Field(description="Share of questions with a match in the top k.")
    mrr: float | None = Field(description="Mean reciprocal rank of the first match (MRR@k).")
    rows: list[EvaluationRow]
