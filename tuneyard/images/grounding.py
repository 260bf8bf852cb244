"""Grounding an image prompt in knowledge bases: the passages retrieved for the prompt are
appended to it, in rank order, as far as a token budget allows.

A diffusion pipeline's CLIP text encoder reads 77 tokens (75 and the start and end marks); what
goes past is cut. Counting with the pipeline's own tokenizer would load transformers in the
server, so the count is an estimate that follows CLIP's pre-tokenizer: each run of letters is
one token per six letters (common words are one token; rarer long words split in pieces), each
digit is one token, and each run of other marks is one token. The appended text is cut at a
word so that its estimate stays within the budget. Words of marks alone (a Markdown heading's
#, a list's -) say nothing to an image model and are left out.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

DEFAULT_GROUNDING_TOKENS = 60
MAX_GROUNDING_TOKENS = 75
# Passages asked of the knowledge bases: more than a short budget ever holds.
GROUNDING_TOP_K = 3
SEPARATOR = ", "

_PIECES = re.compile(r"[^\W\d_]+|\d|[^\w\s]+|_+")
LETTERS_PER_TOKEN = 6


def estimate_clip_tokens(text: str) -> int:
    """CLIP tokens `text` takes, estimated as the module says (start and end marks not
    counted)."""
    total = 0
    for piece in _PIECES.findall(text):
        if piece[0].isalpha():
            total += math.ceil(len(piece) / LETTERS_PER_TOKEN)
        else:
            total += 1
    return total


def grounding_text(passages: Sequence[dict[str, Any]], budget: int) -> tuple[str, int]:
    """The passages' text in rank order, words as long as the estimate stays within `budget`;
    and how many passages gave some of it."""
    kept: list[str] = []
    used = 0
    sources = 0
    for passage in passages:
        taken = 0
        for word in passage["text"].split():
            if not any(char.isalnum() for char in word):
                continue
            cost = estimate_clip_tokens(word)
            if used + cost > budget:
                return " ".join(kept), sources + (1 if taken else 0)
            kept.append(word)
            used += cost
            taken += 1
        sources += 1 if taken else 0
    return " ".join(kept), sources


def grounded_prompt(prompt: str, extra: str) -> str:
    return f"{prompt}{SEPARATOR}{extra}" if extra else prompt


def final_prompt(recipe: dict[str, Any]) -> str:
    """The prompt the pipeline gets: the grounded one when the recipe has knowledge bases."""
    grounding = recipe.get("grounding")
    return str(grounding["final_prompt"]) if grounding else str(recipe["prompt"])
