"""The index store: rows in, hits out, by vector, by words, and by both fused."""

from __future__ import annotations

import multiprocessing
import threading
import uuid

import numpy
import pytest

from tuneyard.errors import Conflict, Invalid, NotFound
from tuneyard.knowledge.index import RRF_K, IndexRow, KnowledgeIndex

pytestmark = pytest.mark.nodb

DIMS = 8


def unit(*weights: float) -> numpy.ndarray:
    vector = numpy.zeros(DIMS, dtype=numpy.float32)
    vector[: len(weights)] = weights
    return vector / numpy.linalg.norm(vector)


DOC_A = str(uuid.UUID(int=1))
DOC_B = str(uuid.UUID(int=2))

ROWS = [
    IndexRow("a1", DOC_A, "The capital of France is Paris, on the Seine.", unit(1, 0, 0)),
    IndexRow("a2", DOC_A, "Bananas are yellow and rich in potassium.", unit(0, 1, 0)),
    IndexRow("b1", DOC_B, "Paris hosted the Olympic games in 2024.", unit(0.9, 0.1, 0)),
    IndexRow("b2", DOC_B, "Rust has no garbage collector; it has ownership.", unit(0, 0, 1)),
]


@pytest.fixture
def index(tmp_path) -> KnowledgeIndex:
    index = KnowledgeIndex.create(tmp_path / "index", DIMS)
    index.add(ROWS)
    return index


def ids(hits) -> list[str]:
    return [hit.chunk_id for hit in hits]


def test_vector_search_ranks_by_cosine_similarity(index):
    hits = index.search(query="", vector=unit(1, 0, 0), mode="vector", top_k=2)
    assert ids(hits) == ["a1", "b1"]
    assert hits[0].vector_score == pytest.approx(1.0, abs=1e-5)
    expected = float(unit(1, 0, 0) @ unit(0.9, 0.1, 0))
    assert hits[1].vector_score == pytest.approx(expected, abs=1e-5)
    assert hits[0].score == hits[0].vector_score
    assert [hit.vector_rank for hit in hits] == [1, 2]
    assert hits[0].text_score is None and hits[0].text_rank is None
    assert hits[0].text == ROWS[0].text and hits[0].document_id == DOC_A


def test_fulltext_search_finds_the_words(index):
    hits = index.search(query="paris", vector=None, mode="fulltext")
    assert set(ids(hits)) == {"a1", "b1"}
    assert all(hit.text_score and hit.text_score > 0 for hit in hits)
    assert all(hit.vector_score is None for hit in hits)
    assert index.search(query="potassium", vector=None, mode="fulltext")[0].chunk_id == "a2"
    assert index.search(query="kangaroo", vector=None, mode="fulltext") == []


def test_hybrid_fuses_both_lists_with_reciprocal_ranks(index):
    # Words point at the garbage collector chunk, the vector at the France one.
    hits = index.search(query="garbage collector", vector=unit(1, 0, 0), top_k=4)
    by_id = {hit.chunk_id: hit for hit in hits}
    rust = by_id["b2"]
    assert rust.text_rank == 1 and rust.text_score is not None
    assert rust.vector_rank is not None and rust.vector_score is not None
    assert rust.score == pytest.approx(1 / (RRF_K + 1) + 1 / (RRF_K + rust.vector_rank))
    france = by_id["a1"]
    assert france.vector_rank == 1 and france.text_rank is None
    assert france.score == pytest.approx(1 / (RRF_K + 1))
    # Found by both lists beats first in only one.
    assert hits[0].chunk_id == "b2"
    assert [hit.score for hit in hits] == sorted((hit.score for hit in hits), reverse=True)


def test_hybrid_without_words_is_the_vector_ranking(index):
    hits = index.search(query="  ", vector=unit(0, 1, 0), top_k=1)
    assert ids(hits) == ["a2"] and hits[0].text_rank is None


def test_filter_by_documents(index):
    hits = index.search(query="paris", vector=unit(1, 0, 0), top_k=4, document_ids=[DOC_B])
    assert {hit.document_id for hit in hits} == {DOC_B}
    assert "b1" in ids(hits)
    assert index.search(query="paris", vector=unit(1, 0, 0), document_ids=[]) == []


@pytest.mark.parametrize(
    "bad", ["x' OR '1'='1", "a) OR (1=1", "doc id", "", "é", "x" * 65, 7, None]
)
def test_filter_refuses_ids_that_could_change_the_expression(index, bad):
    with pytest.raises(Invalid, match="is not an id"):
        index.search(query="paris", vector=unit(1, 0, 0), document_ids=[bad])


def test_min_score_applies_to_the_modes_score(index):
    hits = index.search(query="", vector=unit(1, 0, 0), mode="vector", top_k=4, min_score=0.9)
    assert ids(hits) == ["a1", "b1"]
    fused = index.search(query="paris", vector=unit(1, 0, 0), top_k=4)
    both = [hit for hit in fused if hit.vector_rank and hit.text_rank]
    kept = index.search(query="paris", vector=unit(1, 0, 0), top_k=4, min_score=both[-1].score)
    assert ids(kept) == ids(fused)[: len(kept)]
    assert all(hit.score >= both[-1].score for hit in kept)
    assert len(kept) < len(fused)


def test_delete_documents_removes_their_chunks_from_both_searches(index):
    index.delete_documents([DOC_A])
    assert index.count() == 2
    assert ids(index.search(query="potassium", vector=None, mode="fulltext")) == []
    hits = index.search(query="", vector=unit(1, 0, 0), mode="vector", top_k=4)
    assert set(ids(hits)) == {"b1", "b2"}


def test_added_rows_are_found_at_once_by_words(index):
    index.add([IndexRow("c1", DOC_A, "A quokka smiles on Rottnest island.", unit(0, 0, 0, 1))])
    assert ids(index.search(query="quokka", vector=None, mode="fulltext")) == ["c1"]


def test_reopen_keeps_rows_and_dimensions(index, tmp_path):
    again = KnowledgeIndex.open(tmp_path / "index")
    assert again.dimensions == DIMS and again.count() == 4
    assert ids(again.search(query="olympic", vector=unit(1, 0, 0), top_k=1)) == ["b1"]


def test_open_without_an_index_and_create_twice(tmp_path, index):
    with pytest.raises(NotFound):
        KnowledgeIndex.open(tmp_path / "nothing")
    with pytest.raises(Conflict, match="already holds an index"):
        KnowledgeIndex.create(tmp_path / "index", DIMS)


def test_drop_removes_the_folder(index, tmp_path):
    index.drop()
    assert not (tmp_path / "index").exists()


@pytest.mark.parametrize(
    "query",
    [
        '"unterminated',
        "title:paris",
        "(paris",
        "paris)",
        "paris AND OR NOT",
        "NOT",
        "paris^3 ~2",
        "*",
        "pa*",
        "\\",
        "'; DROP TABLE chunks; --",
        "paris\x00",
        "\u202eparis",
        "+paris -france",
        "{paris}",
        "🦘 paris",
    ],
)
def test_hostile_queries_are_plain_words(index, query):
    hits = index.search(query=query, vector=unit(1, 0, 0), top_k=4)
    words = index.search(query=query, vector=None, mode="fulltext", top_k=4)
    assert hits  # the vector side still answers
    if "paris" in query:
        assert {"a1", "b1"} <= set(ids(words))


def test_queries_too_long_are_refused(index):
    with pytest.raises(Invalid, match="too long"):
        index.search(query="paris " * 2000, vector=unit(1, 0, 0))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mode": "fuzzy"}, "Unknown search mode"),
        ({"top_k": 0}, "top_k"),
        ({"top_k": 10_000}, "top_k"),
        ({"min_score": float("nan")}, "min_score"),
        ({"vector": numpy.ones(3, dtype=numpy.float32)}, "8-dimensional"),
        ({"vector": numpy.full(DIMS, numpy.nan, dtype=numpy.float32)}, "finite"),
        ({"vector": None}, "needs the query's vector"),
    ],
)
def test_bad_search_arguments_say_what_to_fix(index, kwargs, message):
    arguments = {"query": "paris", "vector": unit(1, 0, 0), **kwargs}
    with pytest.raises(Invalid, match=message):
        index.search(**arguments)


def test_rows_of_other_dimensions_or_broken_vectors_are_refused_whole(index):
    wrong = IndexRow("z1", DOC_A, "wrong size", numpy.ones(DIMS + 1, dtype=numpy.float32))
    good = IndexRow("z2", DOC_A, "good", unit(1, 1))
    with pytest.raises(Invalid, match="8-dimensional"):
        index.add([good, wrong])
    broken = IndexRow("z3", DOC_A, "nan", numpy.full(DIMS, numpy.nan, dtype=numpy.float32))
    with pytest.raises(Invalid, match="NaN"):
        index.add([good, broken])
    with pytest.raises(Invalid, match="is not an id"):
        index.add([IndexRow("x'y", DOC_A, "quote", unit(1))])
    assert index.count() == 4


def test_dimensions_are_checked_at_create(tmp_path):
    with pytest.raises(Invalid, match="Dimensions"):
        KnowledgeIndex.create(tmp_path / "zero", 0)


def _add_in_another_process(folder: str, batches: int) -> None:
    index = KnowledgeIndex.open(folder)
    rng = numpy.random.default_rng(1)
    for batch in range(batches):
        vectors = rng.normal(size=(50, DIMS)).astype(numpy.float32)
        index.add(
            [
                IndexRow(f"p{batch}-{i}", DOC_B, f"concurrent row {batch} {i} paris", vector)
                for i, vector in enumerate(vectors)
            ]
        )


def test_searches_keep_answering_while_another_process_adds(index, tmp_path):
    context = multiprocessing.get_context("spawn")
    writer = context.Process(target=_add_in_another_process, args=(str(tmp_path / "index"), 20))
    writer.start()
    errors: list[BaseException] = []
    seen = []

    def search_loop() -> None:
        try:
            while writer.is_alive():
                hits = index.search(query="paris", vector=unit(1, 0, 0), top_k=5)
                seen.append(index.count())
                assert hits
        except BaseException as exc:  # reported below, from the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=search_loop) for _ in range(2)]
    for thread in threads:
        thread.start()
    writer.join(timeout=120)
    for thread in threads:
        thread.join(timeout=30)
    assert writer.exitcode == 0
    assert errors == []
    assert index.count() == 4 + 20 * 50
    # This handle saw the other process's rows as they came, not only at the end.
    assert len(set(seen)) > 1
    words = index.search(query="concurrent", vector=None, mode="fulltext", top_k=100)
    assert len(words) == 100


def test_many_rows_get_a_vector_index_and_a_folded_text_index(tmp_path, monkeypatch):
    from tuneyard.knowledge import index as index_module

    monkeypatch.setattr(index_module, "ANN_MIN_ROWS", 300)
    monkeypatch.setattr(index_module, "TEXT_INDEX_BACKLOG", 100)
    rng = numpy.random.default_rng(3)
    vectors = rng.normal(size=(400, DIMS)).astype(numpy.float32)
    vectors /= numpy.linalg.norm(vectors, axis=1, keepdims=True)
    index = KnowledgeIndex.create(tmp_path / "big", DIMS)
    for start in range(0, 400, 100):
        index.add(
            [
                IndexRow(f"r{i}", DOC_A, f"row {i} word{i}", vectors[i])
                for i in range(start, start + 100)
            ]
        )
    stats = index._table.index_stats("text_idx")
    assert stats.num_unindexed_rows == 0
    assert any("vector" in found.columns for found in index._table.list_indices())
    hits = index.search(query="word123", vector=vectors[123], top_k=3)
    assert hits[0].chunk_id == "r123"
    assert hits[0].vector_rank == 1 and hits[0].text_rank == 1
    assert hits[0].vector_score == pytest.approx(1.0, abs=1e-4)
    reopened = KnowledgeIndex.open(tmp_path / "big")
    assert reopened.search(query="", vector=vectors[7], mode="vector", top_k=1)[0].chunk_id == "r7"
