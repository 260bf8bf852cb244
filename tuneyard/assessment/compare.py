"""Two finished assessments of the same dataset side by side: their rows matched by the dataset
record, each row marked better, worse or the same where a score or a verdict says so, and the
difference between the two runs with its 95% interval.

The second assessment is read against the first ("before" and "after" a training): `better`
means the second run's candidate did better on that record, and a difference is second - first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from tuneyard.assessment import prompts
from tuneyard.assessment.service import PAIR, get_assessment
from tuneyard.assessment.stats import bootstrap_mean, paired_difference
from tuneyard.assessment.summary import label
from tuneyard.auth.service import Principal
from tuneyard.errors import Invalid
from tuneyard.models import Assessment, AssessmentRow

CHANGES = ("better", "worse", "same")
SCORE, WIN_RATE = "score", "win_rate"
JUDGED = {SCORE: "scored by a judge", WIN_RATE: "judged pairwise", None: "not judged"}
# How many finished assessments of a dataset the console offers to compare with.
COMPARABLE_LIMIT = 200


@dataclass(frozen=True)
class Side:
    """One assessment of the two, and the candidate of it that is followed."""

    assessment: Assessment
    candidate: int

    @property
    def measure(self) -> str | None:
        judge = self.assessment.config.get("judge")
        if judge is None:
            return None
        return WIN_RATE if judge["kind"] == prompts.PAIRWISE else SCORE

    def value(self, verdict: dict[str, Any] | None) -> float | None:
        """The followed candidate's figure on one row: its score (1-10), or, judged pairwise,
        1 for a win, 0.5 for a tie and 0 for a loss; None where the judge's answer was not
        read."""
        verdict = verdict or {}
        if self.measure == SCORE:
            scores = verdict.get("scores") or []
            score = scores[self.candidate] if self.candidate < len(scores) else None
            return float(score) if isinstance(score, int | float) else None
        if self.measure == WIN_RATE:
            winner = verdict.get("winner")
            if winner is None:
                return None
            return 0.5 if winner == "tie" else float(winner == PAIR[self.candidate])
        return None

    def metric(self, metrics: list[dict[str, Any]] | None, name: str) -> float | None:
        metrics = metrics or []
        found = metrics[self.candidate].get(name) if self.candidate < len(metrics) else None
        return float(found) if isinstance(found, int | float) else None

    def describe(self) -> dict[str, Any]:
        candidate = self.assessment.config["candidates"][self.candidate]
        return {
            "id": self.assessment.id,
            "name": self.assessment.name,
            "candidate": self.candidate,
            "label": label(self.candidate),
            "model": candidate["name"],
            "measure": self.measure,
        }


def _same_dataset(first: Assessment, second: Assessment) -> bool:
    if first.dataset_digest and second.dataset_digest:
        return first.dataset_digest == second.dataset_digest
    return first.dataset_id is not None and first.dataset_id == second.dataset_id


def _side(assessment: Assessment, candidate: int, which: str) -> Side:
    if assessment.status != "succeeded":
        raise Invalid(
            f"Assessment {assessment.name} is {assessment.status}; compare finished assessments "
            "(resume it, or wait until it has succeeded)."
        )
    count = len(assessment.config["candidates"])
    if candidate >= count:
        raise Invalid(
            f"{which}: assessment {assessment.name} has {count} candidate"
            f"{'s' if count > 1 else ''}; choose 0" + (f" to {count - 1}." if count > 1 else ".")
        )
    return Side(assessment, candidate)


def _sides(
    session: Session,
    principal: Principal,
    first_id: str,
    second_id: str,
    candidate: int,
    other_candidate: int,
) -> tuple[Side, Side]:
    first = get_assessment(session, principal, first_id)
    second = get_assessment(session, principal, second_id)
    if first.id == second.id:
        raise Invalid(f"Compare assessment {first.name} with another assessment, not itself.")
    if not _same_dataset(first, second):
        raise Invalid(
            f"Assessment {first.name} ran on dataset '{first.dataset_name}' and {second.name} "
            f"on '{second.dataset_name}' (other records); rows are matched by the dataset's "
            "records, so compare two assessments of the same dataset."
        )
    return _side(first, candidate, "candidate"), _side(second, other_candidate, "other_candidate")


def _light_rows(session: Session, assessment_id: str) -> dict[int, Any]:
    """{record index: (position, status, verdict, metrics)} of an assessment's rows."""
    found: dict[int, Any] = {}
    for row in session.execute(
        select(
            AssessmentRow.record_index,
            AssessmentRow.position,
            AssessmentRow.status,
            AssessmentRow.verdict,
            AssessmentRow.metrics,
        )
        .where(AssessmentRow.assessment_id == assessment_id)
        .order_by(AssessmentRow.position)
    ):
        found.setdefault(row.record_index, row)
    return found


def _change(first: float | None, second: float | None) -> str | None:
    if first is None or second is None:
        return None
    if second > first:
        return "better"
    if second < first:
        return "worse"
    return "same"


def _noise(estimate: dict[str, Any]) -> str:
    return {True: "within noise", False: "beyond noise", None: "too few rows to tell"}[
        estimate["within_noise"]
    ]


def _figure(value: float, measure: str | None) -> str:
    return f"{100 * value:.0f}%" if measure == WIN_RATE else f"{value:.3g}"


def _difference_line(
    what: str, first: Side, second: Side, paired: dict[str, Any], measure: str | None
) -> str | None:
    """ "score: before 3.5, after 5 over 7 rows; after - before +1.5 (95% CI ...), beyond
    noise"."""
    if paired["first"]["mean"] is None:
        return None
    difference = paired["difference"]
    scale = 100 if measure == WIN_RATE else 1
    unit = " points" if measure == WIN_RATE else ""
    line = (
        f"{what}: {first.assessment.name} {_figure(paired['first']['mean'], measure)}, "
        f"{second.assessment.name} {_figure(paired['second']['mean'], measure)} over "
        f"{difference['n']} rows in both; difference {scale * difference['mean']:+.3g}{unit}"
    )
    if difference["ci"] is not None:
        low, high = difference["ci"]
        line += f" (95% CI {scale * low:+.3g} to {scale * high:+.3g})"
    return f"{line}, {_noise(difference)}"


def _paired(first: list[float | None], second: list[float | None]) -> dict[str, Any]:
    """Each run's mean and the difference, all over the rows where both have a value."""
    both = [(a, b) for a, b in zip(first, second, strict=True) if a is not None and b is not None]
    return {
        "first": bootstrap_mean([a for a, _b in both]),
        "second": bootstrap_mean([b for _a, b in both]),
        "difference": paired_difference(first, second),
    }


def compare(
    session: Session,
    principal: Principal,
    first_id: str,
    second_id: str,
    *,
    candidate: int = 0,
    other_candidate: int = 0,
    changed: str | None = None,
    limit: int = 50,
    offset: int = 0,
) -> dict[str, Any]:
    """The summary of the two runs, and a page of their rows in dataset order (`changed`
    keeps the rows marked so)."""
    if changed is not None and changed not in CHANGES:
        raise Invalid(f"changed is one of: {', '.join(CHANGES)}.")
    first, second = _sides(session, principal, first_id, second_id, candidate, other_candidate)
    first_rows = _light_rows(session, first.assessment.id)
    second_rows = _light_rows(session, second.assessment.id)
    indices = sorted(first_rows.keys() | second_rows.keys())
    shared = [index for index in indices if index in first_rows and index in second_rows]

    measure = first.measure if first.measure == second.measure else None
    changes: dict[int, str | None] = {}
    first_values: list[float | None] = []
    second_values: list[float | None] = []
    for index in shared:
        a = first.value(first_rows[index].verdict) if measure else None
        b = second.value(second_rows[index].verdict) if measure else None
        first_values.append(a)
        second_values.append(b)
        changes[index] = _change(a, b)

    summary = _summary(
        first, second, measure, first_rows, second_rows, shared, first_values, second_values
    )
    summary["changed"] = {change: 0 for change in (*CHANGES, "unknown")}
    for change in changes.values():
        summary["changed"][change or "unknown"] += 1
    if measure is not None:
        counts = summary["changed"]
        summary["lines"].append(
            f"per record, {second.assessment.name} against {first.assessment.name}: "
            f"{counts['better']} better, {counts['worse']} worse, {counts['same']} the same"
            + (f", {counts['unknown']} not judged in both" if counts["unknown"] else "")
        )

    if changed is not None:
        indices = [index for index in shared if changes[index] == changed]
    page = indices[offset : offset + limit]
    return {
        "summary": summary,
        "items": _page_rows(session, first, second, page, changes),
        "total": len(indices),
    }


def _summary(
    first: Side,
    second: Side,
    measure: str | None,
    first_rows: dict[int, Any],
    second_rows: dict[int, Any],
    shared: list[int],
    first_values: list[float | None],
    second_values: list[float | None],
) -> dict[str, Any]:
    rows = {
        "both": len(shared),
        "only_first": len(first_rows) - len(shared),
        "only_second": len(second_rows) - len(shared),
    }
    lines = [
        f"records in both: {rows['both']}; only in {first.assessment.name}: "
        f"{rows['only_first']}; only in {second.assessment.name}: {rows['only_second']}"
    ]
    summary: dict[str, Any] = {
        "first": first.describe(),
        "second": second.describe(),
        "rows": rows,
        "measure": measure,
        "note": None,
        "judge": None,
        "metrics": {},
        "lines": lines,
    }
    if measure is not None:
        judge = _paired(first_values, second_values)
        summary["judge"] = judge
        what = "win rate (ties count half)" if measure == WIN_RATE else "mean score"
        line = _difference_line(what, first, second, judge, measure)
        lines.append(line or f"{what}: no record was judged in both")
    elif first.measure or second.measure:
        summary["note"] = (
            f"{first.assessment.name} was {JUDGED[first.measure]} and {second.assessment.name} "
            f"{JUDGED[second.measure]}: no verdicts to compare."
        )
        lines.append(summary["note"])
    common = [
        name
        for name in first.assessment.config.get("metrics") or []
        if name in (second.assessment.config.get("metrics") or [])
    ]
    for name in common:
        paired = _paired(
            [first.metric(first_rows[index].metrics, name) for index in shared],
            [second.metric(second_rows[index].metrics, name) for index in shared],
        )
        summary["metrics"][name] = paired
        line = _difference_line(name, first, second, paired, None)
        if line is not None:
            lines.append(line)
    return summary


def _side_row(row: AssessmentRow | None, side: Side) -> dict[str, Any] | None:
    if row is None:
        return None
    return {
        "position": row.position,
        "status": row.status,
        "answers": row.answers,
        "judgments": row.judgments,
        "verdict": row.verdict,
        "metrics": row.metrics,
        "value": side.value(row.verdict),
    }


def _page_rows(
    session: Session, first: Side, second: Side, page: list[int], changes: dict[int, str | None]
) -> list[dict[str, Any]]:
    if not page:
        return []
    found: dict[tuple[str, int], AssessmentRow] = {}
    for row in session.scalars(
        select(AssessmentRow).where(
            AssessmentRow.assessment_id.in_([first.assessment.id, second.assessment.id]),
            AssessmentRow.record_index.in_(page),
        )
    ):
        found.setdefault((row.assessment_id, row.record_index), row)
    items = []
    for index in page:
        a = found.get((first.assessment.id, index))
        b = found.get((second.assessment.id, index))
        shown = a if a is not None else b
        assert shown is not None, "a page holds indices of rows that exist"
        items.append(
            {
                "record_index": index,
                "record": shown.record,
                "first": _side_row(a, first),
                "second": _side_row(b, second),
                "changed": changes.get(index),
            }
        )
    return items


def comparable(session: Session, principal: Principal, assessment_id: str) -> list[Assessment]:
    """The project's other finished assessments of the same dataset, newest first."""
    assessment = get_assessment(session, principal, assessment_id)
    stmt = select(Assessment).where(
        Assessment.project_id == principal.project_id,
        Assessment.status == "succeeded",
        Assessment.id != assessment.id,
    )
    if assessment.dataset_digest:
        stmt = stmt.where(Assessment.dataset_digest == assessment.dataset_digest)
    elif assessment.dataset_id is not None:
        stmt = stmt.where(Assessment.dataset_id == assessment.dataset_id)
    else:
        return []
    stmt = stmt.order_by(Assessment.finished_at.desc(), Assessment.id).limit(COMPARABLE_LIMIT)
    return list(session.scalars(stmt))
