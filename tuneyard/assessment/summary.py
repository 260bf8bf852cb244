"""An assessment's summary from its rows: answers and errors per candidate, reference metrics,
the judge's verdicts with how many were read, win rates and mean scores with 95% intervals,
and whether a difference is within noise.

Nothing is averaged over rows that were silently dropped: each figure says over how many rows
it was taken (`n`), and the judge's part counts what it could not read.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from tuneyard.assessment import prompts
from tuneyard.assessment.stats import bootstrap_mean, paired_difference, within_noise

PAIR = ("A", "B")
FIDELITY = "fidelity"


def label(index: int) -> str:
    """How the summary names a candidate: A, B, C..."""
    return chr(ord("A") + index)


def _answered(row, index: int) -> bool:
    answers = row.answers or []
    return index < len(answers) and answers[index].get("error") is None


def _metric_values(rows, index: int, metric: str) -> list[float | None]:
    values = []
    for row in rows:
        metrics = row.metrics or []
        value = metrics[index].get(metric) if index < len(metrics) else None
        values.append(value if isinstance(value, int | float) else None)
    return values


def _present(values: list[float | None]) -> list[float]:
    return [value for value in values if value is not None]


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.0f}%"


def _interval(estimate: dict[str, Any], scale=lambda v: f"{v:.2f}") -> str:
    if estimate.get("ci") is None:
        return ""
    low, high = estimate["ci"]
    return f" (95% CI {scale(low)} to {scale(high)})"


def summarize(config: dict[str, Any], rows: list) -> dict[str, Any]:
    """The figures of an assessment over its finished rows (pending ones are counted, not
    used)."""
    status = Counter(row.status for row in rows)
    finished = [row for row in rows if row.status != "pending"]
    candidates = config["candidates"]
    metrics = config.get("metrics") or []
    judge = config.get("judge")
    lines: list[str] = []
    summary: dict[str, Any] = {
        "rows": {
            "total": len(rows),
            "done": status["done"],
            "error": status["error"],
            "pending": status["pending"],
        },
        "candidates": [],
    }
    for index, candidate in enumerate(candidates):
        answers = [row.answers[index] for row in finished if _answered(row, index)]
        errors = sum(1 for row in finished if not _answered(row, index))
        seconds = [answer.get("seconds") or 0.0 for answer in answers]
        entry: dict[str, Any] = {
            "label": label(index),
            "model": candidate["model"],
            "name": candidate["name"],
            "answered": len(answers),
            "errors": errors,
            "mean_seconds": round(sum(seconds) / len(seconds), 4) if seconds else None,
            "prompt_tokens": sum(answer.get("prompt_tokens") or 0 for answer in answers),
            "completion_tokens": sum(answer.get("completion_tokens") or 0 for answer in answers),
            "metrics": {},
        }
        for metric in metrics:
            values = _metric_values(finished, index, metric)
            estimate = bootstrap_mean(_present(values))
            estimate["unscored"] = sum(
                1
                for row, value in zip(finished, values, strict=True)
                if value is None and _answered(row, index)
            )
            entry["metrics"][metric] = estimate
        summary["candidates"].append(entry)
        lines.append(
            f"{label(index)} ({candidate['name']}): answered {len(answers)} of "
            f"{len(finished)} rows" + (f", {errors} failed" if errors else "")
        )
    if config.get("kind") == FIDELITY:
        summary["fidelity"] = _fidelity(finished, config)
        lines.extend(summary["fidelity"]["lines"])
    elif len(candidates) == 2:
        summary["differences"] = {
            metric: paired_difference(
                _metric_values(finished, 0, metric), _metric_values(finished, 1, metric)
            )
            for metric in metrics
        }
        summary["agreement"] = _agreement(finished)
        agreement = summary["agreement"]
        if agreement["compared"]:
            lines.append(
                f"identical answers: {agreement['identical']} of {agreement['compared']}; "
                f"token overlap {agreement['token_overlap']['mean']:.2f}"
            )
    for metric in metrics:
        parts = []
        for entry in summary["candidates"]:
            estimate = entry["metrics"][metric]
            if estimate["mean"] is not None:
                parts.append(f"{entry['label']} {estimate['mean']:.3g}{_interval(estimate)}")
        if parts:
            lines.append(f"{metric}: " + "; ".join(parts))
    if judge is not None:
        summary["judge"] = (
            _pairwise(finished) if judge["kind"] == prompts.PAIRWISE else _scores(finished, config)
        )
        lines.extend(summary["judge"]["lines"])
    summary["lines"] = lines
    return summary


def _agreement(rows, stage: int | None = None) -> dict[str, Any]:
    """Identical answers and overlap between two candidates, or (`stage`) between a stage of
    a fidelity check and its source, over the rows where both answered."""
    pairs = []
    for row in rows:
        found = row.agreement or None
        if stage is not None and found is not None:
            stages = found.get("stages") or []
            found = stages[stage] if stage < len(stages) else None
        if found:
            pairs.append(found)
    identical = sum(1 for found in pairs if found.get("identical"))
    return {
        "compared": len(pairs),
        "identical": identical,
        "identical_rate": identical / len(pairs) if pairs else None,
        "token_overlap": bootstrap_mean([found["token_overlap"] for found in pairs]),
        "token_agreement": bootstrap_mean(
            [found["token_agreement"] for found in pairs if "token_agreement" in found]
        ),
    }


def _fidelity(rows, config: dict[str, Any]) -> dict[str, Any]:
    """Per stage of the lifecycle (complete models, live models at each quantization), how
    often its greedy answer is its source's, and how far the two run word for word."""
    source = config["candidates"][0]
    stages, lines = [], []
    for index, candidate in enumerate(config["candidates"][1:], start=1):
        found = _agreement(rows, index)
        stages.append(
            {
                "label": label(index),
                "stage": candidate.get("stage"),
                "model": candidate["model"],
                "name": candidate["name"],
                **found,
            }
        )
        agreement = found["token_agreement"]["mean"]
        lines.append(
            f"{candidate.get('stage') or candidate['name']} agrees with its source on "
            f"{found['identical']} of {found['compared']} prompts"
            + (f" (word agreement {agreement:.2f})" if agreement is not None else "")
        )
    return {"source": source["name"], "stages": stages, "lines": lines}


def _judge_counts(rows, kind: str) -> dict[str, int]:
    """Judge answers made, read, unread and failed (over every judge call of the rows)."""
    counts: Counter[str] = Counter()
    for row in rows:
        for judgment in row.judgments or []:
            counts["answers_total"] += 1
            if judgment.get("error") is not None:
                counts["judge_errors"] += 1
            elif (judgment.get("verdict") or {}).get("value") is not None:
                counts["answers_parsed"] += 1
            else:
                counts["unparsed"] += 1
    return {
        key: counts[key] for key in ("answers_total", "answers_parsed", "unparsed", "judge_errors")
    }


def _scores(rows, config: dict[str, Any]) -> dict[str, Any]:
    candidates = config["candidates"]
    per_candidate: list[list[float | None]] = [[] for _ in candidates]
    for row in rows:
        scores = (row.verdict or {}).get("scores") or []
        for index in range(len(candidates)):
            per_candidate[index].append(scores[index] if index < len(scores) else None)
    total = len(rows) * len(candidates)
    parsed = sum(1 for values in per_candidate for value in values if value is not None)
    no_answer = sum(
        1 for row in rows for index in range(len(candidates)) if not _answered(row, index)
    )
    result: dict[str, Any] = {
        "kind": prompts.SCORE,
        "verdicts_total": total,
        "verdicts_parsed": parsed,
        "no_answer": no_answer,
        **_judge_counts(rows, prompts.SCORE),
        "scores": [],
    }
    lines = [f"verdicts parsed: {parsed} of {total}"]
    for index, values in enumerate(per_candidate):
        estimate = bootstrap_mean(_present(values))
        # How many answers got each whole score, 1 to 10 (a fraction rounds down).
        histogram = [0] * 10
        for value in _present(values):
            histogram[min(9, max(0, int(value) - 1))] += 1
        result["scores"].append({"label": label(index), **estimate, "histogram": histogram})
        if estimate["mean"] is not None:
            lines.append(
                f"{label(index)} mean score {estimate['mean']:.2f} over {estimate['n']} rows"
                f"{_interval(estimate)}"
            )
    if len(candidates) == 2:
        difference = paired_difference(per_candidate[0], per_candidate[1])
        result["difference"] = difference
        if difference["mean"] is not None:
            noise = (
                "within noise"
                if difference["within_noise"]
                else "beyond noise"
                if difference["within_noise"] is False
                else "too few rows to tell"
            )
            lines.append(
                f"B - A: {difference['mean']:+.2f} over {difference['n']} rows"
                f"{_interval(difference, lambda v: f'{v:+.2f}')}, {noise}"
            )
    result["lines"] = lines
    return result


def _pairwise(rows) -> dict[str, Any]:
    total = len(rows)
    verdicts = [(row.verdict or {}) for row in rows]
    decided = [verdict for verdict in verdicts if verdict.get("winner") is not None]
    wins = Counter(verdict["winner"] for verdict in decided)
    flips = sum(1 for verdict in decided if verdict.get("flip"))
    inconsistent = sum(1 for verdict in decided if verdict.get("consistent") is False)
    no_answer = sum(1 for row in rows if not (_answered(row, 0) and _answered(row, 1)))
    result: dict[str, Any] = {
        "kind": prompts.PAIRWISE,
        "verdicts_total": total,
        "verdicts_parsed": len(decided),
        "no_answer": no_answer,
        **_judge_counts(rows, prompts.PAIRWISE),
        "wins": {"A": wins["A"], "B": wins["B"], "tie": wins["tie"]},
        "inconsistent": inconsistent,
        "flips": flips,
        "position_bias_rate": flips / len(decided) if decided else None,
        "win_rate": {},
    }
    for side in PAIR:
        outcomes = [
            1.0 if v["winner"] == side else 0.5 if v["winner"] == "tie" else 0.0 for v in decided
        ]
        result["win_rate"][side] = bootstrap_mean(outcomes)
    rate_b = result["win_rate"]["B"]
    result["within_noise"] = within_noise(rate_b, 0.5)
    lines = [
        f"verdicts parsed: {len(decided)} of {total}",
        f"wins: A {wins['A']}, B {wins['B']}, ties {wins['tie']} "
        f"({inconsistent} changed with the order and count as ties)",
        f"position bias: {flips} of {len(decided)} verdicts picked the same position both "
        f"times ({_percent(result['position_bias_rate'])})",
    ]
    if rate_b["mean"] is not None:
        noise = {True: "within noise", False: "beyond noise", None: "too few rows to tell"}[
            result["within_noise"]
        ]
        lines.append(
            f"B win rate {_percent(rate_b['mean'])}"
            f"{_interval(rate_b, _percent)} (ties count half), {noise}"
        )
    result["lines"] = lines
    return result
