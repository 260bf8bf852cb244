"""The store of one index version: its chunks' vectors and text in a LanceDB table, searched by
vector similarity, by BM25 full text, or by both fused with reciprocal rank fusion.

One folder holds one index version, built by exactly one embedding model: its vectors all have
the dimensions the folder was created with. Every write is a new LanceDB version, so a search
running while another process adds or deletes rows reads a consistent snapshot, and each
handle checks for newer versions before it searches (a search sees every committed write).

Scores:
- vector: cosine similarity of the query vector and the chunk's (1 is the same direction).
- fulltext: BM25 of the query's terms in the chunk's text (LanceDB's native inverted index;
  rows added since the index was last folded are searched flat, so they are found at once).
- hybrid: reciprocal rank fusion, `sum(1 / (RRF_K + rank))` over the two result lists, ranks
  starting at 1; each hit carries both scores and ranks, None for a list it was not in.

`min_score` applies to the score the mode ranks by: the similarity for "vector", the BM25 score
for "fulltext", the fused RRF score for "hybrid" (at most 2 / (RRF_K + 1), about 0.0328, for a
chunk first in both lists).
"""

from __future__ import annotations

import math
import re
import shutil
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import numpy

from tuneyard.errors import Conflict, Invalid, NotFound

TABLE = "chunks"
TEXT_INDEX = "text_idx"
RRF_K = 60
# Each list of a hybrid search brings this many candidates per hit asked for.
CANDIDATES_PER_HIT = 4
MAX_TOP_K = 100
MAX_QUERY_CHARS = 2000
MAX_FILTER_IDS = 1000
MAX_DIMENSIONS = 8192
# Rows added since the indexes were last brought up to date are searched flat: at 100k rows a
# full-text search takes 5 ms with none waiting and 64 ms with 2,000 waiting, and folding 2,000
# rows in (optimize: compaction and both indexes) takes about 1.7 s, a rebuild 2.6 s
# (benchmarks/knowledge.py --maintenance). So an add folds them in once this many wait.
TEXT_INDEX_BACKLOG = 1000
# A flat scan of every vector is exact and costs about 1 ms per 1,000 rows here (100 ms at
# 100k x 384); an IVF index answers in 6 ms at 100k and builds in 6.5 s. Past this many rows
# the index is built.
ANN_MIN_ROWS = 20_000
# Partitions an IVF search reads. At 100k random unit vectors (the worst case: no clusters)
# recall@5 against the flat scan is 0.42 at 32, 0.58 at 64, 0.78 at 128, p50 9-13 ms for all.
ANN_PROBE_PARTITIONS = 128
# Ids enter filter expressions: letters, digits, '-' and '_' only (uuids and hex digests).
_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_COLUMNS = ["chunk_id", "document_id", "text"]

Mode = Literal["hybrid", "vector", "fulltext"]
MODES: tuple[str, ...] = ("hybrid", "vector", "fulltext")


@dataclass(frozen=True)
class IndexRow:
    chunk_id: str
    document_id: str
    text: str
    vector: numpy.ndarray


@dataclass(frozen=True)
class Hit:
    chunk_id: str
    document_id: str
    text: str
    vector_score: float | None  # cosine similarity; None when vector search did not find it
    text_score: float | None  # BM25; None when full-text search did not find it
    vector_rank: int | None
    text_rank: int | None
    score: float  # the fused RRF score in hybrid mode, else the mode's own score


def _schema(dimensions: int):
    import pyarrow

    return pyarrow.schema(
        [
            pyarrow.field("chunk_id", pyarrow.string(), nullable=False),
            pyarrow.field("document_id", pyarrow.string(), nullable=False),
            pyarrow.field("text", pyarrow.string(), nullable=False),
            pyarrow.field("vector", pyarrow.list_(pyarrow.float32(), dimensions), nullable=False),
        ]
    )


def _connect(folder: Path):
    import lancedb

    # Interval 0: every search first looks for versions other processes committed.
    return lancedb.connect(str(folder), read_consistency_interval=timedelta(0))


def check_id(value: object, what: str) -> str:
    """`value` if it is an id that may enter a filter expression, else Invalid."""
    if not isinstance(value, str) or not _ID.fullmatch(value):
        shown = repr(value)[:80]
        raise Invalid(
            f"{what} {shown} is not an id: use 1 to 64 letters, digits, '-' or '_' (a uuid)."
        )
    return value


def clean_query(query: str) -> str:
    """The query as full-text search gets it: no control characters, spaces collapsed, bounded.
    LanceDB's match query is not parsed (quotes, colons, AND/OR are plain text to it), so a
    query cannot change what is searched, only which words."""
    if not isinstance(query, str):
        raise Invalid("The query must be text.")
    if len(query) > MAX_QUERY_CHARS * 4:
        raise Invalid(f"The query is too long: keep it under {MAX_QUERY_CHARS} characters.")
    printable = "".join(" " if unicodedata.category(char)[0] in "CZ" else char for char in query)
    words = printable.split()
    text = " ".join(words)
    if len(text) > MAX_QUERY_CHARS:
        raise Invalid(f"The query is too long: keep it under {MAX_QUERY_CHARS} characters.")
    return text


class KnowledgeIndex:
    """The vectors and text of one index version, in `folder`."""

    def __init__(self, folder: Path, table: Any, dimensions: int):
        self.folder = folder
        self.dimensions = dimensions
        self._table = table
        self._vector_indexed = self._has_vector_index()

    @classmethod
    def create(cls, folder: Path, dimensions: int) -> KnowledgeIndex:
        """A new, empty index in `folder` (made if missing; it must not hold an index yet)."""
        from lancedb.index import FTS

        if isinstance(dimensions, bool) or not isinstance(dimensions, int):
            raise Invalid("Dimensions must be a whole number.")
        if not 1 <= dimensions <= MAX_DIMENSIONS:
            raise Invalid(f"Dimensions must be 1 to {MAX_DIMENSIONS}; got {dimensions}.")
        folder = Path(folder)
        if (folder / f"{TABLE}.lance").exists():
            raise Conflict(f"{folder} already holds an index; open it, or drop it first.")
        folder.mkdir(parents=True, exist_ok=True)
        table = _connect(folder).create_table(TABLE, schema=_schema(dimensions))
        table.create_index("text", config=FTS(), name=TEXT_INDEX)
        return cls(folder, table, dimensions)

    @classmethod
    def open(cls, folder: Path) -> KnowledgeIndex:
        """The index in `folder`; NotFound when there is none."""
        folder = Path(folder)
        if not (folder / f"{TABLE}.lance").is_dir():
            raise NotFound(f"No index in {folder}; it was never built or was dropped.")
        table = _connect(folder).open_table(TABLE)
        dimensions = table.schema.field("vector").type.list_size
        return cls(folder, table, dimensions)

    # -- writing ------------------------------------------------------------------------

    def add(self, rows: Sequence[IndexRow]) -> None:
        """Store `rows`; every later search finds them."""
        if not rows:
            return
        import pyarrow

        vectors = numpy.empty((len(rows), self.dimensions), dtype=numpy.float32)
        for i, row in enumerate(rows):
            check_id(row.chunk_id, "Chunk id")
            check_id(row.document_id, "Document id")
            if not isinstance(row.text, str):
                raise Invalid(f"Chunk {row.chunk_id} has no text.")
            vector = numpy.asarray(row.vector, dtype=numpy.float32)
            if vector.shape != (self.dimensions,):
                raise Invalid(
                    f"Chunk {row.chunk_id} has a vector of shape {vector.shape}; this index "
                    f"holds {self.dimensions}-dimensional vectors (one embedding model)."
                )
            vectors[i] = vector
        if not numpy.isfinite(vectors).all():
            raise Invalid("A vector holds a NaN or an infinity; the embedder failed.")
        if (numpy.linalg.norm(vectors, axis=1) == 0).any():
            raise Invalid("A vector is all zeros; it has no direction to compare.")
        flat = pyarrow.array(vectors.reshape(-1), type=pyarrow.float32())
        data = pyarrow.Table.from_arrays(
            [
                pyarrow.array([row.chunk_id for row in rows], pyarrow.string()),
                pyarrow.array([row.document_id for row in rows], pyarrow.string()),
                pyarrow.array([row.text for row in rows], pyarrow.string()),
                pyarrow.FixedSizeListArray.from_arrays(flat, self.dimensions),
            ],
            schema=_schema(self.dimensions),
        )
        self._table.add(data)
        self._maintain()

    def delete_documents(self, document_ids: Sequence[str]) -> None:
        """Remove every chunk of these documents."""
        ids = [check_id(value, "Document id") for value in document_ids]
        for start in range(0, len(ids), MAX_FILTER_IDS):
            self._table.delete(_in_filter("document_id", ids[start : start + MAX_FILTER_IDS]))

    def count(self) -> int:
        return int(self._table.count_rows())

    def drop(self) -> None:
        """Remove the folder and everything in it."""
        shutil.rmtree(self.folder, ignore_errors=True)

    def optimize(self) -> None:
        """Fold every waiting row into the indexes and compact the files (an ingest job calls
        it when it ends; adds call it on their own once TEXT_INDEX_BACKLOG rows wait)."""
        self._table.optimize()

    def _maintain(self) -> None:
        """Fold waiting rows into the indexes once many wait; index vectors once there are many."""
        from lancedb.index import IvfFlat

        stats = self._table.index_stats(TEXT_INDEX)
        if stats is not None and stats.num_unindexed_rows >= TEXT_INDEX_BACKLOG:
            self.optimize()
        total = self.count()
        if total >= ANN_MIN_ROWS and not self._vector_indexed:
            partitions = max(16, int(math.sqrt(total)))
            self._table.create_index(
                "vector", config=IvfFlat(distance_type="cosine", num_partitions=partitions)
            )
            self._vector_indexed = True

    def _has_vector_index(self) -> bool:
        return any("vector" in index.columns for index in self._table.list_indices())

    # -- searching ----------------------------------------------------------------------

    def search(
        self,
        *,
        query: str,
        vector: numpy.ndarray | None,
        top_k: int = 5,
        mode: Mode = "hybrid",
        document_ids: Sequence[str] | None = None,
        min_score: float | None = None,
    ) -> list[Hit]:
        """The `top_k` best chunks for `query` (its words) and `vector` (its embedding), best
        first; only chunks of `document_ids` when given; none scoring under `min_score`."""
        if mode not in MODES:
            raise Invalid(f"Unknown search mode '{mode}'; use one of: {', '.join(MODES)}.")
        if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= MAX_TOP_K:
            raise Invalid(f"top_k must be a whole number from 1 to {MAX_TOP_K}.")
        if min_score is not None and not (
            isinstance(min_score, int | float) and math.isfinite(min_score)
        ):
            raise Invalid("min_score must be a finite number.")
        text = clean_query(query)
        where = None
        if document_ids is not None:
            ids = [check_id(value, "Document id") for value in document_ids]
            if len(ids) > MAX_FILTER_IDS:
                raise Invalid(f"Filter by at most {MAX_FILTER_IDS} documents.")
            if not ids:
                return []
            where = _in_filter("document_id", ids)
        query_vector = None
        if mode != "fulltext":
            if vector is None:
                raise Invalid(f"A {mode} search needs the query's vector.")
            query_vector = self._check_query_vector(vector)

        fetch = top_k if mode != "hybrid" else top_k * CANDIDATES_PER_HIT
        by_vector = (
            self._vector_search(query_vector, fetch, where) if query_vector is not None else []
        )
        by_text = self._text_search(text, fetch, where) if mode != "vector" and text else []

        if mode == "vector":
            hits = [
                _hit(row, vector_rank=rank, score=row["_similarity"]) for rank, row in by_vector
            ]
        elif mode == "fulltext":
            hits = [_hit(row, text_rank=rank, score=row["_score"]) for rank, row in by_text]
        else:
            hits = _fuse(by_vector, by_text)
        if min_score is not None:
            hits = [hit for hit in hits if hit.score >= min_score]
        return hits[:top_k]

    def _check_query_vector(self, vector: numpy.ndarray) -> numpy.ndarray:
        array = numpy.asarray(vector, dtype=numpy.float32)
        if array.shape != (self.dimensions,):
            raise Invalid(
                f"The query vector has shape {array.shape}; this index holds "
                f"{self.dimensions}-dimensional vectors. Embed the query with the index's model."
            )
        if not numpy.isfinite(array).all() or not numpy.any(array):
            raise Invalid("The query vector must be finite and not all zeros.")
        return array

    def _vector_search(
        self, vector: numpy.ndarray, limit: int, where: str | None
    ) -> list[tuple[int, dict[str, Any]]]:
        builder = (
            self._table.search(vector, query_type="vector", vector_column_name="vector")
            .distance_type("cosine")
            .select([*_COLUMNS, "_distance"])
            .limit(limit)
        )
        if self._vector_indexed:
            builder = builder.nprobes(ANN_PROBE_PARTITIONS)
        if where is not None:
            builder = builder.where(where, prefilter=True)
        rows = builder.to_list()
        for row in rows:
            row["_similarity"] = 1.0 - float(row["_distance"])
        return list(enumerate(rows, start=1))

    def _text_search(self, text: str, limit: int, where: str | None) -> list[tuple[int, dict]]:
        from lancedb.query import MatchQuery

        # A match query is not parsed: quotes, colons and AND/OR in it are only characters.
        match = MatchQuery(text, "text")  # type: ignore[call-arg]  # the rest have defaults
        builder = self._table.search(match).select([*_COLUMNS, "_score"]).limit(limit)
        if where is not None:
            builder = builder.where(where, prefilter=True)
        return list(enumerate(builder.to_list(), start=1))


def _in_filter(column: str, ids: Sequence[str]) -> str:
    # Every id has passed check_id: no quote can reach the expression.
    return f"{column} IN ({', '.join(repr(value) for value in ids)})"


def _hit(
    row: dict[str, Any],
    *,
    score: float,
    vector_rank: int | None = None,
    text_rank: int | None = None,
) -> Hit:
    return Hit(
        chunk_id=row["chunk_id"],
        document_id=row["document_id"],
        text=row["text"],
        vector_score=row["_similarity"] if vector_rank is not None else None,
        text_score=float(row["_score"]) if text_rank is not None else None,
        vector_rank=vector_rank,
        text_rank=text_rank,
        score=float(score),
    )


def rrf(ranks: Sequence[int | None], k: int = RRF_K) -> float:
    """Reciprocal rank fusion of one item's 1-based ranks in several lists (None: absent)."""
    return sum(1.0 / (k + rank) for rank in ranks if rank is not None)


def _fuse(
    by_vector: list[tuple[int, dict[str, Any]]], by_text: list[tuple[int, dict[str, Any]]]
) -> list[Hit]:
    found: dict[str, dict[str, Any]] = {}
    for rank, row in by_vector:
        found[row["chunk_id"]] = {"row": row, "vector_rank": rank, "text_rank": None}
    for rank, row in by_text:
        entry = found.setdefault(row["chunk_id"], {"row": row, "vector_rank": None})
        entry["text_rank"] = rank
        entry["text_row"] = row
    hits = []
    for entry in found.values():
        row, vector_rank, text_rank = entry["row"], entry["vector_rank"], entry["text_rank"]
        text_row = entry.get("text_row", row)
        hits.append(
            Hit(
                chunk_id=row["chunk_id"],
                document_id=row["document_id"],
                text=row["text"],
                vector_score=row["_similarity"] if vector_rank is not None else None,
                text_score=float(text_row["_score"]) if text_rank is not None else None,
                vector_rank=vector_rank,
                text_rank=text_rank,
                score=rrf([vector_rank, text_rank]),
            )
        )
    # Ties (the same ranks) go to the closer vector, then to the better text match.
    hits.sort(
        key=lambda hit: (
            -hit.score,
            hit.vector_rank if hit.vector_rank is not None else math.inf,
            hit.text_rank if hit.text_rank is not None else math.inf,
        )
    )
    return hits
