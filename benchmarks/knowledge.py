"""Knowledge-base storage and ingest: Tuneyard's index and embedder beside plain baselines, in
one run.

Storage: 100k chunks of synthetic text (a Zipf-like draw from a made-up vocabulary, fixed seed)
with random unit vectors of 384 dimensions, stored (a) in Tuneyard's KnowledgeIndex (LanceDB:
flat cosine scan + native BM25 index) added 2,000 rows at a time as ingest jobs add them, and
(b) in numpy (a brute-force dot product over one float32 matrix) + SQLite FTS5 (bm25), fused
with the same reciprocal rank fusion. Prints each one's build time and the hybrid top-5 search
latency p50/p95 over 200 queries (3 words of a chunk, and that chunk's vector plus noise), and
the ratio.

Ingest: 512 chunks of real text (this repository's README and module docstrings, 120-word
windows) embedded with the demo model (all-MiniLM-L6-v2) through LocalEmbedder and stored with
KnowledgeIndex.add, against a plain sentence-transformers loop over the same chunks, one
`encode(text)` at a time, and one `encode(texts)` call; chunks/s and the ratio. Models are
loaded before the clocks start.

    python benchmarks/knowledge.py [--quick] [--rows 100000] [--chunks 512] [--queries 200]
        [--batch-sizes 32,64,128] [--skip-storage] [--skip-ingest] [--maintenance]
"""

from __future__ import annotations

import argparse
import ast
import math
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tuneyard.knowledge.index import (  # noqa: E402
    CANDIDATES_PER_HIT,
    IndexRow,
    KnowledgeIndex,
    rrf,
)

DIMENSIONS = 384
TOP_K = 5
ADD_BATCH = 2000
SEED = 7


# -- synthetic corpus -----------------------------------------------------------------------


def vocabulary(size: int, rng: numpy.random.Generator) -> list[str]:
    syllables = [c + v for c in "bcdfghjklmnprstvz" for v in "aeiou"]
    words = set()
    while len(words) < size:
        count = int(rng.integers(1, 4))
        words.add("".join(syllables[int(i)] for i in rng.integers(0, len(syllables), count)))
    return sorted(words)


def synthetic_chunks(rows: int, seed: int = SEED) -> tuple[list[str], numpy.ndarray]:
    rng = numpy.random.default_rng(seed)
    words = numpy.array(vocabulary(5000, rng))
    weights = 1.0 / numpy.arange(1, len(words) + 1)  # Zipf: a few words are everywhere
    lengths = rng.integers(40, 100, rows)
    drawn = rng.choice(len(words), size=int(lengths.sum()), p=weights / weights.sum())
    texts, start = [], 0
    for length in lengths:
        texts.append(" ".join(words[drawn[start : start + length]]))
        start += length
    vectors = rng.normal(size=(rows, DIMENSIONS)).astype(numpy.float32)
    vectors /= numpy.linalg.norm(vectors, axis=1, keepdims=True)
    return texts, vectors


def queries_for(texts: list[str], vectors: numpy.ndarray, count: int, seed: int = SEED + 1):
    rng = numpy.random.default_rng(seed)
    picked = rng.integers(0, len(texts), count)
    out = []
    for row in picked:
        words = texts[row].split()
        at = int(rng.integers(0, len(words) - 3))
        vector = vectors[row] + rng.normal(scale=0.05, size=DIMENSIONS).astype(numpy.float32)
        out.append((" ".join(words[at : at + 3]), vector / numpy.linalg.norm(vector)))
    return out


def chunk_id(i: int) -> str:
    return f"c{i:08d}"


def document_id(i: int) -> str:
    return f"d{i // 20:07d}"  # 20 chunks a document


# -- the baseline: numpy brute force + SQLite FTS5 ------------------------------------------


class NumpySqliteIndex:
    """Vectors in one numpy matrix, text in an SQLite FTS5 table; fused with the same RRF."""

    def __init__(self, folder: Path):
        self.db = sqlite3.connect(folder / "fts.db")
        self.db.execute("CREATE VIRTUAL TABLE chunks USING fts5(chunk_id UNINDEXED, text)")
        self.ids: list[str] = []
        self.texts: list[str] = []
        self.parts: list[numpy.ndarray] = []
        self.matrix = numpy.zeros((0, DIMENSIONS), dtype=numpy.float32)

    def add(self, ids: list[str], texts: list[str], vectors: numpy.ndarray) -> None:
        with self.db:
            self.db.executemany("INSERT INTO chunks VALUES (?, ?)", zip(ids, texts, strict=True))
        self.ids.extend(ids)
        self.texts.extend(texts)
        self.parts.append(vectors)
        self.matrix = numpy.concatenate(self.parts)

    def search(self, query: str, vector: numpy.ndarray, top_k: int) -> list[tuple[str, float]]:
        fetch = top_k * CANDIDATES_PER_HIT
        similarities = self.matrix @ vector
        best = numpy.argpartition(-similarities, fetch)[:fetch]
        best = best[numpy.argsort(-similarities[best])]
        vector_ranks = {self.ids[i]: rank for rank, i in enumerate(best, start=1)}
        match = " OR ".join('"' + word.replace('"', '""') + '"' for word in query.split())
        rows = self.db.execute(
            "SELECT chunk_id FROM chunks WHERE chunks MATCH ? ORDER BY bm25(chunks) LIMIT ?",
            (match, fetch),
        ).fetchall()
        text_ranks = {row[0]: rank for rank, row in enumerate(rows, start=1)}
        fused = {
            key: rrf([vector_ranks.get(key), text_ranks.get(key)])
            for key in vector_ranks.keys() | text_ranks.keys()
        }
        return sorted(fused.items(), key=lambda item: -item[1])[:top_k]


# -- storage --------------------------------------------------------------------------------


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(share * len(ordered)) - 1)]


def latencies(search, queries) -> tuple[float, float]:
    for query, vector in queries[:10]:  # warm caches
        search(query, vector)
    taken = []
    for query, vector in queries:
        started = time.perf_counter()
        search(query, vector)
        taken.append((time.perf_counter() - started) * 1000)
    return statistics.median(taken), percentile(taken, 0.95)


def storage(rows: int, query_count: int) -> None:
    print(f"storage: {rows} chunks x {DIMENSIONS} dims, hybrid top-{TOP_K}, {query_count} queries")
    started = time.perf_counter()
    texts, vectors = synthetic_chunks(rows)
    queries = queries_for(texts, vectors, query_count)
    print(f"  (made the corpus in {time.perf_counter() - started:.1f} s)")
    ids = [chunk_id(i) for i in range(rows)]
    results = {}
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)

        started = time.perf_counter()
        index = KnowledgeIndex.create(folder / "lancedb", DIMENSIONS)
        for start in range(0, rows, ADD_BATCH):
            end = min(rows, start + ADD_BATCH)
            index.add(
                [IndexRow(ids[i], document_id(i), texts[i], vectors[i]) for i in range(start, end)]
            )
        build = time.perf_counter() - started
        assert index.count() == rows

        def tuneyard_search(query, vector):
            return index.search(query=query, vector=vector, top_k=TOP_K)

        results["Tuneyard (LanceDB)"] = (build, *latencies(tuneyard_search, queries))
        vector_only = latencies(
            lambda q, v: index.search(query=q, vector=v, top_k=TOP_K, mode="vector"), queries
        )
        text_only = latencies(
            lambda q, v: index.search(query=q, vector=None, top_k=TOP_K, mode="fulltext"),
            queries,
        )

        started = time.perf_counter()
        baseline = NumpySqliteIndex(folder)
        for start in range(0, rows, ADD_BATCH):
            end = min(rows, start + ADD_BATCH)
            baseline.add(ids[start:end], texts[start:end], vectors[start:end])
        build = time.perf_counter() - started
        results["numpy + SQLite FTS5"] = (
            build,
            *latencies(lambda q, v: baseline.search(q, v, TOP_K), queries),
        )

        agree = 0
        for query, vector in queries:
            ours = [hit.chunk_id for hit in tuneyard_search(query, vector)]
            theirs = [key for key, _ in baseline.search(query, vector, TOP_K)]
            agree += ours[0] == theirs[0]

    print(f"  {'store':<22}{'build s':>9}{'p50 ms':>9}{'p95 ms':>9}")
    for name, (build, p50, p95) in results.items():
        print(f"  {name:<22}{build:>9.1f}{p50:>9.1f}{p95:>9.1f}")
    print(
        f"  Tuneyard alone: vector p50 {vector_only[0]:.1f} / p95 {vector_only[1]:.1f} ms, "
        f"full text p50 {text_only[0]:.1f} / p95 {text_only[1]:.1f} ms; "
        f"same first hit as the baseline for {agree}/{len(queries)} queries"
    )
    ours, theirs = results["Tuneyard (LanceDB)"], results["numpy + SQLite FTS5"]
    print(
        f"  ratio (baseline / Tuneyard): build {theirs[0] / ours[0]:.2f}x, "
        f"search p50 {theirs[1] / ours[1]:.2f}x, p95 {theirs[2] / ours[2]:.2f}x "
        f"(above 1: Tuneyard is faster); Tuneyard p95 {ours[2]:.1f} ms "
        f"({'within' if ours[2] < 100 else 'over'} the 100 ms target)"
    )


def maintenance(rows: int, query_count: int) -> None:
    """What keeping the index current costs at `rows` rows: folding 2,000 new rows into the
    full-text index (optimize) against rebuilding it, and a flat vector scan against an IVF
    index. Informs TEXT_INDEX_BACKLOG and ANN_MIN_ROWS in tuneyard/knowledge/index.py."""
    from lancedb.index import FTS, IvfFlat

    from tuneyard.knowledge import index as index_module

    def vector_ids(index, vector) -> list[str]:
        hits = index.search(query="", vector=vector, mode="vector", top_k=TOP_K)
        return [hit.chunk_id for hit in hits]

    print(f"maintenance at {rows} rows:")
    texts, vectors = synthetic_chunks(rows + ADD_BATCH)
    queries = queries_for(texts[:rows], vectors[:rows], query_count)
    saved = index_module.TEXT_INDEX_BACKLOG, index_module.ANN_MIN_ROWS
    index_module.TEXT_INDEX_BACKLOG = index_module.ANN_MIN_ROWS = 10**12  # no upkeep on add
    try:
        with tempfile.TemporaryDirectory() as scratch:
            index = KnowledgeIndex.create(Path(scratch) / "m", DIMENSIONS)
            for start in range(0, rows, ADD_BATCH * 5):
                end = min(rows, start + ADD_BATCH * 5)
                index.add(
                    [
                        IndexRow(chunk_id(i), document_id(i), texts[i], vectors[i])
                        for i in range(start, end)
                    ]
                )
            table = index._table
            started = time.perf_counter()
            table.optimize()
            took = time.perf_counter() - started
            print(f"  first optimize (compact + index {rows} rows): {took:.1f} s")

            def text_p95() -> float:
                return latencies(
                    lambda q, v: index.search(query=q, vector=None, mode="fulltext", top_k=TOP_K),
                    queries,
                )[1]

            print(f"  full text p95, all rows indexed: {text_p95():.1f} ms")
            index.add(
                [
                    IndexRow(chunk_id(i), document_id(i), texts[i], vectors[i])
                    for i in range(rows, rows + ADD_BATCH)
                ]
            )
            print(f"  full text p95, {ADD_BATCH} rows waiting (searched flat): {text_p95():.1f} ms")
            started = time.perf_counter()
            table.optimize()
            folded = time.perf_counter() - started
            started = time.perf_counter()
            table.create_index("text", config=FTS(), name=index_module.TEXT_INDEX, replace=True)
            rebuilt = time.perf_counter() - started
            print(
                f"  taking in {ADD_BATCH} new rows: optimize {folded:.2f} s, "
                f"rebuilding the full-text index {rebuilt:.2f} s"
            )

            def vector_p95() -> tuple[float, float]:
                return latencies(
                    lambda q, v: index.search(query=q, vector=v, mode="vector", top_k=TOP_K),
                    queries,
                )

            flat = vector_p95()
            flat_ids = [vector_ids(index, vector) for _query, vector in queries]
            started = time.perf_counter()
            partitions = max(16, int(math.sqrt(rows)))
            table.create_index(
                "vector", config=IvfFlat(distance_type="cosine", num_partitions=partitions)
            )
            index._vector_indexed = True
            built = time.perf_counter() - started
            ivf = vector_p95()
            found = sum(
                len(set(expected) & set(vector_ids(index, vector)))
                for expected, (_query, vector) in zip(flat_ids, queries, strict=True)
            )
            print(
                f"  vector search p50/p95: flat {flat[0]:.1f}/{flat[1]:.1f} ms; IVF_FLAT "
                f"{ivf[0]:.1f}/{ivf[1]:.1f} ms (built in {built:.1f} s, recall@{TOP_K} "
                f"{found / (TOP_K * len(queries)):.2f})"
            )
    finally:
        index_module.TEXT_INDEX_BACKLOG, index_module.ANN_MIN_ROWS = saved


# -- ingest ---------------------------------------------------------------------------------


def real_chunks(count: int, words_per_chunk: int = 120) -> list[str]:
    """Windows of this repository's README and module docstrings."""
    words = (ROOT / "README.md").read_text().split()
    for path in sorted((ROOT / "tuneyard").rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef):
                docstring = ast.get_docstring(node)
                if docstring:
                    words.extend(docstring.split())
    stride = max(1, min(words_per_chunk, (len(words) - words_per_chunk) // count))
    chunks = [
        " ".join(words[start : start + words_per_chunk])
        for start in range(0, len(words) - words_per_chunk, stride)
    ]
    return chunks[:count]


def ingest(count: int, batch_sizes: list[int]) -> None:
    from sentence_transformers import SentenceTransformer

    from tuneyard.basemodels.service import demo_embedding_folder
    from tuneyard.knowledge import embedders
    from tuneyard.knowledge.embedders import LocalEmbedder

    chunks = real_chunks(count)
    folder = demo_embedding_folder()
    embedder = LocalEmbedder(folder)
    plain = SentenceTransformer(str(folder), device="cpu")
    tokens = sum(embedder.count_tokens(text) for text in chunks) / len(chunks)
    print(f"ingest: {len(chunks)} chunks of real text (about {tokens:.0f} tokens each), demo model")
    embedder.embed(chunks[:4])
    plain.encode(chunks[:4])

    rates = {}
    for size in batch_sizes:
        embedders.BATCH_SIZE = size
        started = time.perf_counter()
        embedder.embed(chunks)
        rates[size] = len(chunks) / (time.perf_counter() - started)
    print(
        "  LocalEmbedder.embed by batch size: "
        + ", ".join(f"{size}: {rate:.1f} chunks/s" for size, rate in rates.items())
    )
    embedders.BATCH_SIZE = max(rates, key=lambda size: rates[size])

    with tempfile.TemporaryDirectory() as scratch:
        index = KnowledgeIndex.create(Path(scratch) / "ingest", embedder.dimensions)
        started = time.perf_counter()
        vectors = embedder.embed(chunks)
        index.add(
            [
                IndexRow(chunk_id(i), document_id(i), text, vector)
                for i, (text, vector) in enumerate(zip(chunks, vectors, strict=True))
            ]
        )
        ours = len(chunks) / (time.perf_counter() - started)
    started = time.perf_counter()
    for text in chunks:
        plain.encode(text)
    one_by_one = len(chunks) / (time.perf_counter() - started)
    started = time.perf_counter()
    plain.encode(chunks)
    batched = len(chunks) / (time.perf_counter() - started)
    print(f"  {'way':<44}{'chunks/s':>10}")
    print(f"  {f'Tuneyard embed (batch {embedders.BATCH_SIZE}) + index add':<44}{ours:>10.1f}")
    print(f"  {'sentence-transformers encode(text) loop':<44}{one_by_one:>10.1f}")
    print(f"  {'sentence-transformers encode(texts)':<44}{batched:>10.1f}")
    print(
        f"  ratio (Tuneyard / baseline): {ours / one_by_one:.2f}x the encode(text) loop, "
        f"{ours / batched:.2f}x encode(texts)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke test")
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--chunks", type=int, default=512)
    parser.add_argument("--batch-sizes", default="32,64,128")
    parser.add_argument("--skip-storage", action="store_true")
    parser.add_argument("--skip-ingest", action="store_true")
    parser.add_argument(
        "--maintenance", action="store_true", help="also the cost of keeping the index current"
    )
    args = parser.parse_args()
    if args.quick:
        args.rows, args.queries, args.chunks, args.batch_sizes = 3000, 40, 48, "16,32"
    if not args.skip_storage:
        storage(args.rows, args.queries)
    if args.maintenance:
        maintenance(args.rows, args.queries)
    if not args.skip_ingest:
        ingest(args.chunks, [int(size) for size in args.batch_sizes.split(",")])


if __name__ == "__main__":
    main()
