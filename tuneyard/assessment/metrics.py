"""Reference metrics: an answer compared with the record's reference, without a judge, and the
agreement between two candidates' answers.

Metrics are a registry keyed by name; the built-ins register through `register_metric`, as a
plugin module (TUNEYARD_PLUGINS) would. Each takes (answer, reference) and returns a number,
higher is better, or raises MetricError for a record it cannot score (a bad pattern). None
needs a download at run time: BLEU is sacrebleu's, ROUGE-L is rouge-score's (its tokenizer and
stemmer are plain code).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

from tuneyard.errors import Invalid

REGEX_TIMEOUT_SECONDS = 1.0
NUMERIC_TOLERANCE = 1e-6
_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?|[-+]?\.\d+")
_TOKEN = re.compile(r"\w+", re.UNICODE)


class MetricError(Exception):
    """The metric cannot score this record (said in the row, not averaged)."""


@dataclass(frozen=True)
class Metric:
    name: str
    score: Callable[[str, str], float]
    description: str
    scale: str = "0-1"
    default: bool = True  # computed when a reference column is chosen and no list is given


_METRICS: dict[str, Metric] = {}


def register_metric(
    name: str,
    score: Callable[[str, str], float],
    description: str | None,
    *,
    scale: str = "0-1",
    default: bool = True,
) -> None:
    """Add a reference metric under `name` (a plugin calls this at import)."""
    if name in _METRICS and _METRICS[name].score is not score:
        raise ValueError(f"Assessment metric '{name}' is registered twice.")
    _METRICS[name] = Metric(name, score, description or "", scale, default)


def get_metric(name: str) -> Metric:
    _load_plugins()
    try:
        return _METRICS[name]
    except KeyError:
        raise Invalid(
            f"Unknown metric '{name}'; use one of: {', '.join(sorted(_METRICS))}."
        ) from None


def list_metrics() -> list[Metric]:
    _load_plugins()
    return list(_METRICS.values())


def default_metrics() -> list[str]:
    return [metric.name for metric in list_metrics() if metric.default]


@lru_cache(maxsize=1)
def _load_plugins() -> None:
    import importlib

    from tuneyard.config import get_settings

    for module in get_settings().plugin_modules:
        importlib.import_module(module)


# -- the built-ins ----------------------------------------------------------------------------


def _normalise(text: str) -> str:
    return " ".join(text.split()).casefold()


def exact_match(answer: str, reference: str) -> float:
    """1 when the answer is the reference, ignoring case and runs of white space."""
    return float(_normalise(answer) == _normalise(reference))


def contains(answer: str, reference: str) -> float:
    """1 when the reference appears in the answer (case and white space ignored)."""
    return float(_normalise(reference) in _normalise(answer))


def regex_match(answer: str, reference: str) -> float:
    """1 when the reference, read as a regular expression, is found in the answer."""
    import regex

    try:
        pattern = regex.compile(reference)
    except regex.error as exc:
        raise MetricError(f"the reference is not a regular expression: {exc}") from None
    try:
        return float(pattern.search(answer, timeout=REGEX_TIMEOUT_SECONDS) is not None)
    except TimeoutError:
        raise MetricError(
            f"the reference pattern took over {REGEX_TIMEOUT_SECONDS:g} s on this answer"
        ) from None


def _numbers(text: str) -> list[float]:
    found = []
    for match in _NUMBER.findall(text):
        try:
            value = float(match.replace(",", ""))
        except ValueError:
            continue
        if math.isfinite(value):
            found.append(value)
    return found


def numeric_match(answer: str, reference: str) -> float:
    """1 when the last number in the answer equals the reference's number."""
    expected = _numbers(reference)
    if len(expected) != 1:
        raise MetricError(
            f"the reference holds {len(expected) or 'no'} numbers; numeric match needs one"
        )
    given = _numbers(answer)
    if not given:
        return 0.0
    return float(math.isclose(given[-1], expected[0], rel_tol=NUMERIC_TOLERANCE, abs_tol=1e-9))


def bleu(answer: str, reference: str) -> float:
    """Sentence BLEU of the answer against the reference (sacrebleu, 0-100)."""
    import sacrebleu

    return float(sacrebleu.sentence_bleu(answer, [reference]).score)


@lru_cache(maxsize=1)
def _rouge_scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l(answer: str, reference: str) -> float:
    """ROUGE-L F-measure: the longest common subsequence of words (rouge-score, stemmed)."""
    return float(_rouge_scorer().score(reference, answer)["rougeL"].fmeasure)


register_metric("exact", exact_match, exact_match.__doc__)
register_metric("contains", contains, contains.__doc__)
register_metric("regex", regex_match, regex_match.__doc__, default=False)
register_metric("numeric", numeric_match, numeric_match.__doc__, default=False)
register_metric("bleu", bleu, bleu.__doc__, scale="0-100")
register_metric("rouge_l", rouge_l, rouge_l.__doc__)


def score_answer(names: list[str], answer: str, reference: str) -> dict[str, float | None]:
    """Each metric's value for one answer; None (with the reason under `errors`) where the
    metric cannot score the record."""
    values: dict[str, float | None] = {}
    errors: dict[str, str] = {}
    for name in names:
        try:
            values[name] = get_metric(name).score(answer, reference)
        except MetricError as exc:
            values[name], errors[name] = None, str(exc)
    if errors:
        values["errors"] = errors  # type: ignore[assignment]
    return values


# -- agreement between two candidates -----------------------------------------------------------


def tokens(text: str) -> list[str]:
    return [token.casefold() for token in _TOKEN.findall(text)]


def token_overlap(first: str, second: str) -> float:
    """F1 of the two answers' words (as bags): 1 for the same words, 0 for none in common."""
    a, b = Counter(tokens(first)), Counter(tokens(second))
    if not a and not b:
        return 1.0
    common = sum((a & b).values())
    if common == 0:
        return 0.0
    precision, recall = common / sum(a.values()), common / sum(b.values())
    return 2 * precision * recall / (precision + recall)


def token_agreement(first: str, second: str) -> float:
    """How far two greedy answers run word for word: the words they share from the start,
    over the longer answer's words (1 for the same words, 0 when the first word differs)."""
    a, b = tokens(first), tokens(second)
    if not a and not b:
        return 1.0
    shared = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        shared += 1
    return shared / max(len(a), len(b))


def agreement(first: str, second: str) -> dict[str, float | bool]:
    return {
        "identical": first.strip() == second.strip(),
        "token_overlap": round(token_overlap(first, second), 6),
        "token_agreement": round(token_agreement(first, second), 6),
    }
