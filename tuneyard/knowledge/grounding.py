"""Grounding a chat turn: the passages retrieved for the question go into the prompt as numbered
sources, the answer is asked to cite them as [n], and the turn keeps them as its citations.

The sources must fit the model's context beside the conversation and the answer: what does not
fit is cut, lowest-ranked first, and the last one kept may be shortened. Token counts here are
estimates (four characters a token), which is what a budget needs and works for every model.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session

from tuneyard.auth.service import Principal
from tuneyard.knowledge.retrieval import retrieve
from tuneyard.knowledge.schemas import SearchMode

# The context Tuneyard can count on: llama.cpp servers it starts get 2048 tokens.
CONTEXT_TOKENS = 2048
RESERVED_TOKENS = 96  # the instructions, the sources' headers, the chat template
MIN_SOURCE_TOKENS = 64  # below this, a source is left out rather than cut
CHARS_PER_TOKEN = 4
INSTRUCTIONS = (
    "Answer the question using the numbered sources below. Cite each source you use as [n] "
    "right after what it supports. If the sources do not contain the answer, say so."
)
CITATION = re.compile(r"\[(\d{1,3})\]")


def estimate_tokens(text: str) -> int:
    return -(-len(text) // CHARS_PER_TOKEN)


@dataclass
class Grounding:
    """What grounds one turn: the system text with the sources, and the sources themselves."""

    system: str
    citations: list[dict[str, Any]] = field(default_factory=list)


def source_budget(conversation: Sequence[dict[str, str]], max_tokens: int) -> int:
    """Tokens left for sources once the conversation and the answer have theirs."""
    used = sum(estimate_tokens(message["content"]) + 4 for message in conversation)
    return CONTEXT_TOKENS - used - max_tokens - RESERVED_TOKENS


def _fit(passages: list[dict[str, Any]], budget: int) -> list[dict[str, Any]]:
    """The passages in rank order while they fit; the first that does not is cut to the rest
    of the budget (if that leaves enough to read), the others are left out."""
    kept = []
    for passage in passages:
        cost = estimate_tokens(passage["text"]) + 12
        if cost <= budget:
            kept.append(passage)
            budget -= cost
            continue
        if budget - 12 >= MIN_SOURCE_TOKENS:
            chars = (budget - 12) * CHARS_PER_TOKEN
            kept.append({**passage, "text": passage["text"][:chars], "truncated": True})
        break
    return kept


def ground(
    session: Session,
    principal: Principal,
    knowledge_bases: Sequence[str],
    question: str,
    conversation: Sequence[dict[str, str]],
    *,
    max_tokens: int,
    top_k: int = 5,
    mode: SearchMode = "hybrid",
) -> Grounding:
    """Retrieve for `question` from the knowledge bases (one top-k for all of them), and build
    the sources that fit beside `conversation` and an answer of `max_tokens`."""
    passages = retrieve(session, principal, knowledge_bases, question, top_k=top_k, mode=mode)
    kept = _fit(passages, source_budget(conversation, max_tokens))
    citations = [{"n": n, **passage} for n, passage in enumerate(kept, 1)]
    if not citations:
        return Grounding(
            INSTRUCTIONS + "\n\nNo source matched the question: say that you found nothing.", []
        )
    sources = "\n\n".join(
        f"[{c['n']}] {c['filename']}, {c['page_label']}\n{c['text']}" for c in citations
    )
    return Grounding(f"{INSTRUCTIONS}\n\nSources:\n\n{sources}", citations)


def mark_cited(answer: str, citations: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The citations, each saying whether the answer cites it."""
    cited = {int(n) for n in CITATION.findall(answer)}
    return [{**citation, "cited": citation["n"] in cited} for citation in citations]
