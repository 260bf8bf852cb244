"""Prompt templates of an assessment: `{{name}}` placeholders, checked before anything runs and
filled for each record, and the built-in judge prompts to start from.

A candidate prompt names the dataset's columns. A judge prompt may also name the answers
(`{{ResponseA}}`, `{{ResponseB}}`), the reference (`{{ref_answer}}`, the chosen reference
column) and the question the first candidate was asked (`{{Question}}`); these names win over
a column of the same name.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Iterable, Mapping
from typing import Any, TypeGuard

from tuneyard.errors import Invalid

PLACEHOLDER = re.compile(r"\{\{\s*([^{}]*?)\s*\}\}")

RESPONSE_A = "ResponseA"
RESPONSE_B = "ResponseB"
REF_ANSWER = "ref_answer"
QUESTION = "Question"
JUDGE_NAMES = (RESPONSE_A, RESPONSE_B, REF_ANSWER, QUESTION)

SCORE = "score"
PAIRWISE = "pairwise"
JUDGE_KINDS = (SCORE, PAIRWISE)

JUDGE_SYSTEM = "You are a careful, impartial judge of answers written by AI assistants."

# Grading one answer against the reference (single-answer grading, 1-10).
SCORE_PROMPT = """\
[Question]
{{Question}}

[Reference answer]
{{ref_answer}}

[Answer to grade]
{{ResponseA}}

Grade the answer against the reference answer on a scale of 1 to 10: 10 when it is as correct \
and complete as the reference, 1 when it is wrong or off the subject. Judge correctness first, \
then completeness; do not reward length or style.
Reply with one JSON object and nothing after it: {"score": <1-10>, "reason": "<one sentence>"}"""

# Picking the better of two answers; asked twice, the answers swapped the second time.
PAIRWISE_PROMPT = """\
[Question]
{{Question}}

[Answer A]
{{ResponseA}}

[Answer B]
{{ResponseB}}

Which answer serves the question better? Judge correctness, helpfulness and relevance. Do not \
let the order of the answers, their length or their names sway you; say "tie" when neither is \
better.
Reply with one JSON object and nothing after it: {"winner": "A" | "B" | "tie", \
"reason": "<one sentence>"}"""

BUILTIN_JUDGE_PROMPTS = {
    SCORE: {
        "kind": SCORE,
        "system": JUDGE_SYSTEM,
        "prompt": SCORE_PROMPT,
        "description": "Score one answer from 1 to 10 against the reference answer "
        "(needs reference_column); with two candidates each is scored on its own.",
    },
    PAIRWISE: {
        "kind": PAIRWISE,
        "system": JUDGE_SYSTEM,
        "prompt": PAIRWISE_PROMPT,
        "description": "Pick the better of two answers (needs two candidates); asked twice "
        "with A and B swapped.",
    },
}


def placeholders(template: str | None) -> list[str]:
    """The names a template uses, in order of first use."""
    return list(dict.fromkeys(PLACEHOLDER.findall(template or "")))


def _suggestion(name: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    if not close and name.lower() in {k.lower() for k in known}:
        close = [k for k in known if k.lower() == name.lower()]
    return f" (did you mean {{{{{close[0]}}}}}?)" if close else ""


def check_template(
    where: str, template: str | None, columns: list[str], judge: Mapping[str, bool] | None = None
) -> None:
    """Refuse a template naming anything but the dataset's columns (and, for a judge, the names
    that `judge` allows: name -> usable here). Every unknown name is listed."""
    allowed = set(columns)
    judge = judge or {}
    unknown, unusable = [], []
    for name in placeholders(template):
        if name in judge:
            if not judge[name]:
                unusable.append(name)
        elif name not in allowed:
            unknown.append(name)
    if unknown:
        names = ", ".join(
            f"{{{{{name}}}}}{_suggestion(name, [*columns, *judge])}" for name in unknown
        )
        choices = ", ".join(f"{{{{{c}}}}}" for c in columns) or "none"
        extra = ""
        if judge:
            extra = "; a judge prompt also " + ", ".join(
                f"{{{{{name}}}}}" for name, usable in judge.items() if usable
            )
        raise Invalid(
            f"Unknown placeholder{'s' if len(unknown) > 1 else ''} in {where}: {names}. "
            f"Use the dataset's columns: {choices}{extra}."
        )
    if unusable:
        raise Invalid(f"{where} cannot use {', '.join(_why(name) for name in unusable)}.")


def _why(name: str) -> str:
    reasons = {
        RESPONSE_B: "{{ResponseB}} here: only a pairwise judge of two candidates sees a second "
        "answer (a score judge sees each answer as {{ResponseA}})",
        REF_ANSWER: "{{ref_answer}} without a reference_column: choose the column that holds "
        "the reference answers",
        RESPONSE_A: "{{ResponseA}} here",
        QUESTION: "{{Question}} here",
    }
    return reasons[name]


def value_text(value: Any) -> str:
    """A record's value as it reads in a prompt."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


def render(template: str | None, values: Mapping[str, Any], keep: Iterable[str] = ()) -> str:
    """The template with each placeholder replaced by its value; names in `keep` stay as
    written (a preview shows where the answers will go)."""
    kept = set(keep)

    def fill(match: re.Match) -> str:
        name = match.group(1)
        if name in kept or name not in values:
            return match.group(0)
        return value_text(values[name])

    return PLACEHOLDER.sub(fill, template or "")


def _is_conversation(value: Any) -> TypeGuard[list[dict[str, Any]]]:
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(m, dict) and "role" in m and "content" in m for m in value)
    )


def conversation(template: str | None, record: Mapping[str, Any]) -> list[dict[str, str]] | None:
    """The conversation a template of one placeholder naming a chat record's messages stands
    for: its messages up to (not including) the last answer. None for any other template."""
    names = placeholders(template)
    if len(names) != 1 or PLACEHOLDER.fullmatch((template or "").strip()) is None:
        return None
    value = record.get(names[0])
    if not _is_conversation(value):
        return None
    messages = [{"role": str(m["role"]), "content": value_text(m["content"])} for m in value]
    if len(messages) > 1 and messages[-1]["role"] == "assistant":
        messages.pop()
    return messages


def reference_text(record: Mapping[str, Any], column: str) -> str:
    """The reference answer in a record's column; for a conversation, its last answer."""
    value = record.get(column)
    if _is_conversation(value):
        answers = [m for m in value if m.get("role") == "assistant"]
        return value_text(answers[-1]["content"]) if answers else ""
    return value_text(value)
