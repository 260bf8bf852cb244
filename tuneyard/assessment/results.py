"""An assessment's rows: pages of them, exports (CSV, JSONL), and failures turned into a
preference dataset."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from tuneyard.assessment import prompts
from tuneyard.assessment.schemas import (
    PreferenceDatasetIn,
)
from tuneyard.assessment.service import (
    ACTIVE,
    EXPORT_PAGE,
    FIDELITY,
    PAIR,
    ROW_STATUSES,
    WINNERS,
    get_assessment,
)
from tuneyard.assessment.summary import label
from tuneyard.auth.service import Principal
from tuneyard.config import get_settings
from tuneyard.datasets import service as datasets
from tuneyard.datasets.schemas import DatasetOut
from tuneyard.db import session_scope
from tuneyard.errors import Conflict, Invalid
from tuneyard.models import Assessment, AssessmentRow
from tuneyard.pagination import paginate

# -- reading the rows -------------------------------------------------------------------------


def results(
    session: Session,
    principal: Principal,
    assessment_id: str,
    status: str | None = None,
    limit: int = 50,
    offset: int = 0,
    winner: str | None = None,
):
    """A page of rows in sample order; `status` keeps rows in that state, `winner` those of a
    pairwise run with that verdict (`unparsed`: judged, and unread)."""
    assessment = get_assessment(session, principal, assessment_id)
    stmt = select(AssessmentRow).where(AssessmentRow.assessment_id == assessment.id)
    if status is not None:
        if status not in ROW_STATUSES:
            raise Invalid(f"A row's status is one of: {', '.join(ROW_STATUSES)}.")
        stmt = stmt.where(AssessmentRow.status == status)
    stmt = stmt.order_by(AssessmentRow.position)
    if winner is None:
        return paginate(session, stmt, limit, offset)
    if winner not in WINNERS:
        raise Invalid(f"winner is one of: {', '.join(WINNERS)}.")
    # Verdicts are JSON: filtered here (a run has at most MAX_SAMPLE rows), then paged.
    wanted = None if winner == "unparsed" else winner
    positions = [
        position
        for position, verdict in session.execute(
            stmt.with_only_columns(AssessmentRow.position, AssessmentRow.verdict).where(
                AssessmentRow.status != "pending"
            )
        )
        if verdict is not None and "winner" in verdict and verdict["winner"] == wanted
    ]
    page = positions[offset : offset + limit]
    rows = session.scalars(
        select(AssessmentRow)
        .where(AssessmentRow.assessment_id == assessment.id, AssessmentRow.position.in_(page))
        .order_by(AssessmentRow.position)
    )
    return list(rows), len(positions)


def iter_rows(assessment_id: str, page: int = EXPORT_PAGE) -> Iterator[AssessmentRow]:
    """Every row in sample order, read a page at a time, each page in a short unit of work
    (an export streams after the request's own has ended)."""
    after = -1
    while True:
        with session_scope() as session:
            rows = list(
                session.scalars(
                    select(AssessmentRow)
                    .where(
                        AssessmentRow.assessment_id == assessment_id,
                        AssessmentRow.position > after,
                    )
                    .order_by(AssessmentRow.position)
                    .limit(page)
                )
            )
            session.expunge_all()
        yield from rows
        if len(rows) < page:
            return
        after = rows[-1].position


def row_dict(row: AssessmentRow) -> dict[str, Any]:
    return {
        "position": row.position,
        "record_index": row.record_index,
        "record": row.record,
        "status": row.status,
        "answers": row.answers,
        "judgments": row.judgments,
        "verdict": row.verdict,
        "metrics": row.metrics,
        "agreement": row.agreement,
        "finished_at": row.finished_at.isoformat() if row.finished_at else None,
    }


def export(
    session: Session, principal: Principal, assessment_id: str, fmt: str
) -> tuple[str, Iterator[str]]:
    """(file name, the text a chunk at a time) of the rows as CSV or JSONL."""
    if fmt not in ("csv", "jsonl"):
        raise Invalid("format is csv or jsonl.")
    assessment = get_assessment(session, principal, assessment_id)
    filename = f"{_file_stem(assessment.name)}.{fmt}"
    if fmt == "jsonl":
        lines = (
            json.dumps(row_dict(row), ensure_ascii=False) + "\n" for row in iter_rows(assessment.id)
        )
        return filename, lines
    return filename, _csv_lines(assessment.id, assessment.config)


def _file_stem(name: str) -> str:
    stem = "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in name).strip("._")
    return stem[:100] or "assessment"


def _csv_header(config: dict[str, Any], columns: list[str]) -> list[str]:
    header = ["position", "record_index", "status", *columns]
    judge = config.get("judge")
    for index, _candidate in enumerate(config["candidates"]):
        name = label(index)
        header += [
            f"{name}_answer",
            f"{name}_error",
            f"{name}_seconds",
            f"{name}_prompt_tokens",
            f"{name}_completion_tokens",
        ]
        header += [f"{name}_{metric}" for metric in config.get("metrics") or []]
        if judge is not None and judge["kind"] == prompts.SCORE:
            header += [f"{name}_score", f"{name}_judge_reason", f"{name}_judge_raw"]
        if config.get("kind") == FIDELITY and index > 0:
            header += [f"{name}_identical", f"{name}_token_agreement"]
    if judge is not None and judge["kind"] == prompts.PAIRWISE:
        header += ["winner", "flip", "judge_raw_AB", "judge_raw_BA"]
    if _compares_two(config):
        header += ["identical", "token_overlap", "token_agreement"]
    return header


def _compares_two(config: dict[str, Any]) -> bool:
    return len(config["candidates"]) == 2 and config.get("kind") != FIDELITY


def _csv_values(config: dict[str, Any], columns: list[str], row: AssessmentRow) -> list[Any]:
    values: list[Any] = [row.position, row.record_index, row.status]
    values += [prompts.value_text(row.record.get(column)) for column in columns]
    judge = config.get("judge")
    verdict = row.verdict or {}
    for index, _candidate in enumerate(config["candidates"]):
        answer = row.answers[index] if index < len(row.answers) else {}
        values += [
            answer.get("text"),
            answer.get("error"),
            answer.get("seconds"),
            answer.get("prompt_tokens"),
            answer.get("completion_tokens"),
        ]
        metrics = row.metrics[index] if index < len(row.metrics) else {}
        values += [metrics.get(metric) for metric in config.get("metrics") or []]
        if judge is not None and judge["kind"] == prompts.SCORE:
            judgment: dict[str, Any] = next(
                (j for j in row.judgments if j.get("candidate") == index), {}
            )
            scores = verdict.get("scores") or []
            values += [
                scores[index] if index < len(scores) else None,
                (judgment.get("verdict") or {}).get("reason"),
                judgment.get("raw"),
            ]
        if config.get("kind") == FIDELITY and index > 0:
            stages = (row.agreement or {}).get("stages") or []
            stage = (stages[index] if index < len(stages) else None) or {}
            values += [stage.get("identical"), stage.get("token_agreement")]
    if judge is not None and judge["kind"] == prompts.PAIRWISE:
        raw = {j.get("order"): j.get("raw") for j in row.judgments}
        values += [verdict.get("winner"), verdict.get("flip"), raw.get("AB"), raw.get("BA")]
    if _compares_two(config):
        agreement = row.agreement or {}
        values += [
            agreement.get("identical"),
            agreement.get("token_overlap"),
            agreement.get("token_agreement"),
        ]
    return ["" if value is None else value for value in values]


def _csv_lines(assessment_id: str, config: dict[str, Any]) -> Iterator[str]:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    columns: list[str] | None = None
    for row in iter_rows(assessment_id):
        if columns is None:
            columns = list(row.record)
            writer.writerow(_csv_header(config, columns))
        writer.writerow(_csv_values(config, columns, row))
        yield buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
    if columns is None:
        writer.writerow(_csv_header(config, []))
        yield buffer.getvalue()


# -- failures become training data ---------------------------------------------------------------


def preference_records(
    assessment: Assessment, rows: list[AssessmentRow], request: PreferenceDatasetIn
) -> list[dict[str, str]]:
    """Preference pairs from a judged run. Pairwise: the winner's answer is `chosen`, the
    loser's `rejected`; ties and unread verdicts are left out. Scored: the chosen candidate's
    answers scored `max_score` or lower are `rejected`, the reference answer `chosen`."""
    config = assessment.config
    judge = config.get("judge")
    if judge is None:
        raise Invalid(
            f"Assessment {assessment.name} had no judge; preference pairs come from verdicts."
        )
    records = []
    if judge["kind"] == prompts.PAIRWISE:
        for row in rows:
            winner = (row.verdict or {}).get("winner")
            if winner not in PAIR or len(row.answers) != 2:
                continue
            won = PAIR.index(winner)
            chosen, rejected = row.answers[won], row.answers[1 - won]
            records.append(
                {"prompt": chosen["prompt"], "chosen": chosen["text"], "rejected": rejected["text"]}
            )
        return records
    reference = config.get("reference_column")
    if reference is None:
        raise Invalid(
            f"Assessment {assessment.name} had no reference_column: a scored run's pairs take "
            "the reference answer as `chosen`."
        )
    if request.candidate >= len(config["candidates"]):
        raise Invalid(f"Assessment {assessment.name} has one candidate: use candidate 0.")
    for row in rows:
        scores = (row.verdict or {}).get("scores") or []
        score = scores[request.candidate] if request.candidate < len(scores) else None
        if score is None or score > request.max_score:
            continue
        answer = row.answers[request.candidate]
        chosen = prompts.reference_text(row.record, reference)
        if not chosen.strip() or chosen == answer["text"]:
            continue
        records.append({"prompt": answer["prompt"], "chosen": chosen, "rejected": answer["text"]})
    return records


def create_preference_dataset(
    session: Session, principal: Principal, assessment_id: str, request: PreferenceDatasetIn
) -> dict[str, Any]:
    """A new dataset (preference format, parsed as any upload is) from a judged run, as the
    API shows it with `pairs` (written) and `left_out` (pairs longer than a dataset line may
    be, TUNEYARD_DATASET_MAX_LINE_CHARS, which its parse would refuse)."""
    principal.require("member")
    assessment = get_assessment(session, principal, assessment_id)
    if assessment.status in ACTIVE:
        raise Conflict(
            f"Assessment {assessment.name} is {assessment.status}; export its verdicts once it "
            "has ended."
        )
    rows = list(
        session.scalars(
            select(AssessmentRow)
            .where(AssessmentRow.assessment_id == assessment.id, AssessmentRow.status == "done")
            .order_by(AssessmentRow.position)
        )
    )
    records = preference_records(assessment, rows, request)
    if not records:
        what = (
            "no row has a winner (ties and unread verdicts are left out)"
            if assessment.config["judge"]["kind"] == prompts.PAIRWISE
            else f"no answer of candidate {request.candidate} scored {request.max_score:g} or lower"
        )
        raise Conflict(f"Nothing to export from assessment {assessment.name}: {what}.")
    max_chars = get_settings().dataset_max_line_chars
    lines = [json.dumps(record, ensure_ascii=False) for record in records]
    kept = [line for line in lines if len(line) <= max_chars]
    left_out = len(lines) - len(kept)
    if not kept:
        raise Conflict(
            f"Nothing to export from assessment {assessment.name}: each of its {left_out} "
            f"pairs is longer than a dataset line may be ({max_chars:,} characters); raise "
            "TUNEYARD_DATASET_MAX_LINE_CHARS, or lower max_tokens so the answers are shorter."
        )
    description = request.description or (
        f"Preference pairs from assessment {assessment.name} ({len(kept)} rows"
        + (f"; {left_out} longer than {max_chars:,} characters left out" if left_out else "")
        + ")."
    )
    dataset, _job = datasets.create_dataset(
        session,
        principal,
        name=request.name,
        filename=f"{_file_stem(request.name)}.jsonl",
        content=io.BytesIO("".join(line + "\n" for line in kept).encode("utf-8")),
        description=description,
    )
    shown = DatasetOut.model_validate(dataset).model_dump()
    return {**shown, "pairs": len(kept), "left_out": left_out}
