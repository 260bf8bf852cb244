"""Reading a judge's answer: the last JSON object that holds the verdict, else a plain pattern
("Score: 7", "[[A]]", "winner: tie"); what neither finds is counted as unparsed, never guessed.

Pairwise verdicts are asked twice with the answers swapped; `combine_pairwise` applies the swap
rule: a verdict that changes with the order counts as a tie.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

SCORE_MIN, SCORE_MAX = 1.0, 10.0
WINNERS = ("A", "B", "tie")

# Fallbacks, last match wins: "score: 7", "Rating: [[7]]", "7/10".
_SCORE_PATTERNS = (
    re.compile(r"\[\[\s*(\d+(?:\.\d+)?)\s*\]\]"),
    re.compile(r"\b(?:score|rating|grade)\b\W{0,4}(\d+(?:\.\d+)?)", re.IGNORECASE),
    re.compile(r"\b(\d+(?:\.\d+)?)\s*/\s*10\b"),
)
# "[[A]]" (MT-Bench's form, [[C]] a tie), "winner: B", "Winner is tie".
_WINNER_PATTERNS = (
    re.compile(r"\[\[\s*(A|B|C|tie)\s*\]\]", re.IGNORECASE),
    re.compile(
        r"\bwinner\b\W{0,4}(?:is\W{0,3})?(?:answer\s+|response\s+)?(A|B|tie)\b", re.IGNORECASE
    ),
)


@dataclass(frozen=True)
class Verdict:
    """What one judge answer said: a score or a winner, the reason, and how it was read
    (`json`, `pattern`); `value` None means unparsed, `problem` says why."""

    value: float | str | None
    reason: str | None = None
    how: str | None = None
    problem: str | None = None

    @property
    def parsed(self) -> bool:
        return self.value is not None

    def as_dict(self) -> dict[str, Any]:
        return {
            "value": self.value,
            "reason": self.reason,
            "how": self.how,
            "problem": self.problem,
        }


def json_objects(text: str) -> list[tuple[int, int, dict]]:
    """Every JSON object in `text` as (start, end, object), outermost ones only, in order."""
    decoder = json.JSONDecoder()
    found: list[tuple[int, int, dict]] = []
    position = text.find("{")
    while position != -1:
        try:
            value, end = decoder.raw_decode(text, position)
        except ValueError:
            position = text.find("{", position + 1)
            continue
        if isinstance(value, dict):
            found.append((position, end, value))
            position = text.find("{", end)
        else:
            position = text.find("{", position + 1)
    return found


def _key(obj: dict, name: str) -> Any:
    for key, value in obj.items():
        if isinstance(key, str) and key.strip().lower() == name:
            return value
    return None


def _reason(obj: dict) -> str | None:
    reason = _key(obj, "reason") or _key(obj, "explanation")
    return str(reason) if reason is not None else None


def _score(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(?:/\s*10)?\s*", value)
        if match is None:
            return None
        number = float(match.group(1))
    else:
        return None
    return number if math.isfinite(number) else None


def _winner(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    text = value.strip().lower()
    text = re.sub(r"^(?:answer|response|assistant)\s+", "", text)
    if text in ("a", "b"):
        return text.upper()
    if text in ("tie", "draw", "c", "neither", "both", "equal"):
        return "tie"
    return None


def parse_score(text: str) -> Verdict:
    """A 1-10 score from a judge's answer."""
    for _start, _end, obj in reversed(json_objects(text)):
        raw = _key(obj, "score")
        if raw is None:
            continue
        score = _score(raw)
        if score is None:
            return Verdict(None, _reason(obj), "json", f"the score {raw!r} is not a number")
        return _in_range(score, _reason(obj), "json")
    for pattern in _SCORE_PATTERNS:
        matches = pattern.findall(text)
        if matches:
            return _in_range(float(matches[-1]), None, "pattern")
    return Verdict(None, problem='no {"score": ...} object and no score pattern')


def _in_range(score: float, reason: str | None, how: str) -> Verdict:
    if not SCORE_MIN <= score <= SCORE_MAX:
        return Verdict(None, reason, how, f"the score {score:g} is outside 1-10")
    return Verdict(score, reason, how)


def parse_winner(text: str) -> Verdict:
    """ "A", "B" or "tie" from a judge's answer."""
    for _start, _end, obj in reversed(json_objects(text)):
        raw = _key(obj, "winner")
        if raw is None:
            continue
        winner = _winner(raw)
        if winner is None:
            return Verdict(None, _reason(obj), "json", f"the winner {raw!r} is not A, B or tie")
        return Verdict(winner, _reason(obj), "json")
    for pattern in _WINNER_PATTERNS:
        matches = pattern.findall(text)
        if matches:
            winner = _winner(matches[-1])
            if winner is not None:
                return Verdict(winner, None, "pattern")
    return Verdict(None, problem='no {"winner": ...} object and no winner pattern')


def combine_pairwise(first: Verdict, swapped: Verdict) -> dict[str, Any]:
    """The row's verdict from the judge asked twice: `first` saw candidate A's answer as A,
    `swapped` saw it as B. Both must be read; one that changes with the order is a tie.

    Returns {"winner": "A" | "B" | "tie" | None (a verdict unread), "consistent", "flip"}:
    a flip is the judge picking the same position both times (position bias).
    """
    if not (first.parsed and swapped.parsed):
        return {"winner": None, "consistent": None, "flip": None}
    # Map the swapped verdict back to the candidates: its "A" was candidate B.
    unswapped = {"A": "B", "B": "A", "tie": "tie"}[str(swapped.value)]
    if first.value == unswapped:
        return {"winner": first.value, "consistent": True, "flip": False}
    flip = first.value != "tie" and first.value == swapped.value
    return {"winner": "tie", "consistent": False, "flip": flip}
