"""Retrieval-only evaluation: does search find what a question needs? On a dataset of questions
with the expected document (its file name) or passage (its text), the hit rate at k (a question
is a hit when an expected match is among the top k) and MRR@k (the mean of 1/rank of the first
match, 0 without one), with each question's ranks, so two retrieval setups can be compared on
the same questions before any model answers.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from sqlalchemy.orm import Session

from tuneyard.auth.service import Principal
from tuneyard.datasets import service as datasets
from tuneyard.errors import Invalid
from tuneyard.knowledge import retrieval, service
from tuneyard.knowledge.schemas import QUERY_MAX_CHARS, SearchMode

MAX_QUESTIONS = 500  # searched in the request: each takes one embedding and one index search
PASSAGE_WORDS_MATCH = 0.6  # share of the expected passage's words a retrieved one must hold
WORD = re.compile(r"\w+")

Expected = Literal["document", "passage"]


def _words(text: str) -> set[str]:
    return {word.casefold() for word in WORD.findall(text)}


def matches(passage: dict[str, Any], expected: str, kind: Expected) -> bool:
    """Whether a retrieved passage is what the question expected."""
    expected = expected.strip()
    if kind == "document":
        return expected in (passage["filename"], passage["document_id"])
    wanted = " ".join(expected.split()).casefold()
    found = " ".join(passage["text"].split()).casefold()
    if wanted and (wanted in found or found in wanted):
        return True
    words = _words(expected)
    return bool(words) and len(words & _words(passage["text"])) / len(words) >= PASSAGE_WORDS_MATCH


def evaluate(
    session: Session,
    principal: Principal,
    id_or_name: str,
    *,
    dataset: str,
    question_column: str,
    expected_column: str,
    expected: Expected = "document",
    top_k: int = 5,
    mode: SearchMode = "hybrid",
    size: int = 100,
    seed: int | None = None,
    rerank: bool = True,
) -> dict[str, Any]:
    """Search every sampled question and score where the expected document or passage ranks."""
    from tuneyard.assessment.service import sampled_records

    principal.require("viewer")
    kb = service.get_knowledge_base(session, principal, id_or_name)
    rows = datasets.find_dataset(session, principal, dataset)
    datasets.ensure_ready(rows)
    columns = list(rows.fields or [])
    for name, column in (
        ("question_column", question_column),
        ("expected_column", expected_column),
    ):
        if column not in columns:
            raise Invalid(
                f"{name} '{column}' is not a column of dataset '{rows.name}'; its columns: "
                f"{', '.join(columns)}."
            )
    if not 1 <= size <= MAX_QUESTIONS:
        raise Invalid(f"Evaluate 1-{MAX_QUESTIONS} questions at a time (size).")
    results: list[dict[str, Any]] = []
    used: str | None = None
    for record_index, record in sampled_records(rows, size, seed):
        question = str(record.get(question_column) or "").strip()
        target = str(record.get(expected_column) or "").strip()
        if not question or not target:
            results.append(
                {
                    "record_index": record_index,
                    "question": question,
                    "expected": target,
                    "rank": None,
                    "skipped": "empty question or expected value",
                }
            )
            continue
        searched = retrieval.search(
            session,
            principal,
            kb.id,
            question[:QUERY_MAX_CHARS],
            top_k=top_k,
            mode=mode,
            rerank=rerank,
        )
        found = searched["passages"]
        used = used or searched["reranker"]
        rank = next(
            (n for n, passage in enumerate(found, 1) if matches(passage, target, expected)), None
        )
        results.append(
            {
                "record_index": record_index,
                "question": question,
                "expected": target,
                "rank": rank,
                "retrieved": [
                    {
                        "filename": p["filename"],
                        "page_label": p["page_label"],
                        "score": p["score"],
                        "rerank_score": p["rerank_score"],
                    }
                    for p in found
                ],
            }
        )
    scored = [row for row in results if "skipped" not in row]
    hits = [row for row in scored if row["rank"] is not None]
    return {
        "knowledge_base": kb.name,
        "dataset": rows.name,
        "k": top_k,
        "mode": mode,
        "reranker": used,
        "expected": expected,
        "questions": len(scored),
        "skipped": len(results) - len(scored),
        "hit_rate": len(hits) / len(scored) if scored else None,
        "mrr": sum(1 / row["rank"] for row in hits) / len(scored) if scored else None,
        "rows": results,
    }
