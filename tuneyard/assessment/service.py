"""Assessments: check a request (dataset, sample, models, placeholders, metrics), preview its
prompts, run it as a job, read its rows and summary, export them, and turn its verdicts into a
preference dataset.

Everything an assessment needs is checked here, before a job exists; the job (tasks.py, runner.py)
only calls the models and records what they said.
"""

from __future__ import annotations

import csv
import io
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from tuneyard.assessment import prompts
from tuneyard.assessment.metrics import default_metrics, get_metric
from tuneyard.assessment.schemas import (
    PREVIEW_RECORDS,
    AssessmentCreate,
    CandidateIn,
    FidelityIn,
    GenerationParams,
    JudgeIn,
    PreferenceDatasetIn,
    Sample,
)
from tuneyard.assessment.summary import label
from tuneyard.auth.service import Principal
from tuneyard.chat.backends import resolve_model
from tuneyard.datasets import service as datasets
from tuneyard.db import session_scope
from tuneyard.errors import Conflict, Invalid, NotFound
from tuneyard.jobs import service as jobs
from tuneyard.jobs.keys import Resource, UseKey, model_key
from tuneyard.modelref import parse_reference
from tuneyard.models import Assessment, AssessmentRow, Dataset, Job, new_id
from tuneyard.pagination import paginate

RUN_JOB = "assessment.run"
FIDELITY = "fidelity"
ACTIVE = ("queued", "running")
ROW_STATUSES = ("pending", "done", "error")
JUDGE_DEFAULTS = {"max_tokens": 512}
PAIR = ("A", "B")
WINNERS = ("A", "B", "tie", "unparsed")
EXPORT_PAGE = 200


@dataclass(frozen=True)
class Plan:
    """A checked request: the dataset and the configuration the job runs."""

    dataset: Dataset
    config: dict[str, Any]


# -- checking a request -------------------------------------------------------------------------


def _params(params: GenerationParams | None, defaults: dict[str, Any] | None = None) -> dict:
    if params is None:
        return GenerationParams(**(defaults or {})).model_dump()
    return params.model_dump()


def _model(session: Session, principal: Principal, text: str, where: str) -> dict[str, str]:
    """The model `text` names, checked to chat now; its canonical reference and name."""
    try:
        model = resolve_model(session, principal, text)
    except (NotFound, Invalid, Conflict) as exc:
        raise type(exc)(f"{where}: {exc.message}") from None
    return {"model": model.ref, "name": model.name}


def check_request(session: Session, principal: Principal, request: AssessmentCreate) -> Plan:
    """Everything the run needs, checked in the order a person fixes it: the dataset and its
    sample, the columns, every placeholder, the judge, the metrics, then the models."""
    dataset = datasets.find_dataset(session, principal, request.dataset_id)
    return _plan(
        session,
        principal,
        dataset,
        request.sample,
        request.candidates,
        request.judge,
        request.reference_column,
        request.metrics,
    )


def _plan(
    session: Session,
    principal: Principal,
    dataset: Dataset,
    sample: Sample,
    candidates_in: list[CandidateIn],
    judge: JudgeIn | None,
    reference: str | None,
    metric_names: list[str] | None,
) -> Plan:
    datasets.ensure_ready(dataset)
    columns = list(dataset.fields or [])
    if sample.size > dataset.record_count:
        raise Invalid(
            f"Dataset '{dataset.name}' has {dataset.record_count:,} records; sample at most "
            "that many."
        )
    if reference is not None and reference not in columns:
        raise Invalid(
            f"reference_column '{reference}' is not a column of dataset '{dataset.name}'; "
            f"its columns: {', '.join(columns)}."
        )
    for index, candidate in enumerate(candidates_in):
        prompts.check_template(f"candidates[{index}].system", candidate.system, columns)
        prompts.check_template(f"candidates[{index}].prompt", candidate.prompt, columns)
    if judge is not None:
        pairwise = judge.kind == prompts.PAIRWISE
        if pairwise and len(candidates_in) != 2:
            raise Invalid("A pairwise judge compares two answers: give two candidates.")
        allowed = {
            prompts.RESPONSE_A: True,
            prompts.RESPONSE_B: pairwise,
            prompts.REF_ANSWER: reference is not None,
            prompts.QUESTION: True,
        }
        prompts.check_template("judge.system", judge.system, columns, allowed)
        prompts.check_template("judge.prompt", judge.prompt, columns, allowed)
        shown = set(prompts.placeholders(judge.system)) | set(prompts.placeholders(judge.prompt))
        needed = [prompts.RESPONSE_A, prompts.RESPONSE_B] if pairwise else [prompts.RESPONSE_A]
        missing = [name for name in needed if name not in shown]
        if missing:
            raise Invalid(
                "The judge prompt never shows "
                + " or ".join(f"{{{{{name}}}}}" for name in missing)
                + ": a judge must see the answers it judges."
            )
    metrics = _metrics(metric_names, reference)
    candidates = [
        {
            **_model(session, principal, candidate.model, f"candidates[{index}].model"),
            "system": candidate.system,
            "prompt": candidate.prompt,
            "params": _params(candidate.params),
        }
        for index, candidate in enumerate(candidates_in)
    ]
    judge_config = None
    if judge is not None:
        judge_config = {
            **_model(session, principal, judge.model, "judge.model"),
            "system": judge.system,
            "prompt": judge.prompt,
            "kind": judge.kind,
            "params": _params(judge.params, JUDGE_DEFAULTS),
        }
    config = {
        "sample": {"size": sample.size, "seed": sample.seed},
        "candidates": candidates,
        "judge": judge_config,
        "reference_column": reference,
        "metrics": metrics,
    }
    return Plan(dataset, config)


def _metrics(names: list[str] | None, reference: str | None) -> list[str]:
    if names is None:
        return default_metrics() if reference is not None else []
    if names and reference is None:
        raise Invalid("Reference metrics compare answers with a reference: set reference_column.")
    return [get_metric(name).name for name in dict.fromkeys(names)]


# -- the sample -----------------------------------------------------------------------------------


def sample_indices(record_count: int, size: int, seed: int | None) -> list[int]:
    """The dataset positions of the sample, in dataset order: the first `size`, or `size` drawn
    at random with `seed` (the same seed draws the same records)."""
    if seed is None:
        return list(range(min(size, record_count)))
    return sorted(random.Random(seed).sample(range(record_count), min(size, record_count)))


def sampled_records(
    dataset: Dataset, size: int, seed: int | None, limit: int | None = None
) -> list[tuple[int, dict[str, Any]]]:
    """(index, record) of the sample (its first `limit`), read in one pass over the records."""
    indices = sample_indices(dataset.record_count, size, seed)
    if limit is not None:
        indices = indices[:limit]
    wanted = set(indices)
    found: list[tuple[int, dict[str, Any]]] = []
    if not indices:
        return found
    last = indices[-1]
    records = datasets.iter_records(dataset)
    try:
        for index, record in enumerate(records):
            if index in wanted:
                found.append((index, record))
            if index >= last:
                break
    finally:
        records.close()
    return found


# -- what each model is asked -----------------------------------------------------------------


def candidate_messages(candidate: dict[str, Any], record: dict[str, Any]) -> list[dict[str, str]]:
    """What a candidate is sent for a record. A prompt that is `{{messages}}` alone, on a chat
    record, sends the conversation up to its last answer (that answer is the reference)."""
    messages = []
    if candidate.get("system"):
        messages.append({"role": "system", "content": prompts.render(candidate["system"], record)})
    conversation = prompts.conversation(candidate["prompt"], record)
    if conversation is not None:
        if candidate.get("system"):
            conversation = [m for m in conversation if m["role"] != "system"]
        return messages + conversation
    messages.append({"role": "user", "content": prompts.render(candidate["prompt"], record)})
    return messages


def judge_values(
    config: dict[str, Any], record: dict[str, Any], question: str, answers: list[str]
) -> dict[str, Any]:
    """What a judge prompt's placeholders stand for: the record's columns, the reference, the
    question the first candidate was asked, and the answers in the order given."""
    values = dict(record)
    values[prompts.QUESTION] = question
    reference = config.get("reference_column")
    if reference is not None:
        values[prompts.REF_ANSWER] = prompts.reference_text(record, reference)
    for name, answer in zip((prompts.RESPONSE_A, prompts.RESPONSE_B), answers, strict=False):
        values[name] = answer
    return values


def judge_messages(judge: dict[str, Any], values: dict[str, Any], keep=()) -> list[dict]:
    messages = []
    if judge.get("system"):
        messages.append(
            {"role": "system", "content": prompts.render(judge["system"], values, keep)}
        )
    messages.append({"role": "user", "content": prompts.render(judge["prompt"], values, keep)})
    return messages


def _as_prompt(messages: list[dict[str, str]]) -> dict[str, str | None]:
    system = next((m["content"] for m in messages if m["role"] == "system"), None)
    return {"system": system, "prompt": messages[-1]["content"]}


def preview(session: Session, principal: Principal, request: AssessmentCreate) -> dict[str, Any]:
    """The prompts of the sample's first records (up to 5), as each model will get them; in
    the judge's, the answers' placeholders stay as written."""
    principal.require("viewer")
    plan = check_request(session, principal, request)
    config = plan.config
    records = []
    for index, record in sampled_records(
        plan.dataset, config["sample"]["size"], config["sample"]["seed"], PREVIEW_RECORDS
    ):
        asked = [candidate_messages(c, record) for c in config["candidates"]]
        judge = config["judge"]
        judged = []
        if judge is not None:
            values = judge_values(config, record, asked[0][-1]["content"], [])
            keep = (prompts.RESPONSE_A, prompts.RESPONSE_B)
            judged.append(_as_prompt(judge_messages(judge, values, keep)))
        records.append(
            {
                "record_index": index,
                "record": record,
                "candidates": [_as_prompt(messages) for messages in asked],
                "judge": judged,
            }
        )
    return {"sample_size": config["sample"]["size"], "records": records}


# -- creating, following, stopping ------------------------------------------------------------


def _by_name(session: Session, principal: Principal, name: str) -> Assessment | None:
    return session.scalar(
        select(Assessment).where(
            Assessment.project_id == principal.project_id, Assessment.name == name
        )
    )


def create_assessment(
    session: Session, principal: Principal, request: AssessmentCreate
) -> Assessment:
    """Check the request and queue the job that runs it."""
    principal.require("member")
    name = request.name.strip()
    if _by_name(session, principal, name) is not None:
        raise Conflict(
            f"An assessment named '{name}' already exists; choose another name, or delete it "
            f"with DELETE /api/v1/assessments/{{id}}."
        )
    plan = check_request(session, principal, request)
    assessment = Assessment(
        project_id=principal.project_id,
        name=name,
        dataset_id=plan.dataset.id,
        dataset_name=plan.dataset.name,
        dataset_digest=plan.dataset.digest,
        config=plan.config,
        row_count=plan.config["sample"]["size"],
        created_by=principal.user_id,
    )
    session.add(assessment)
    try:
        session.flush()
    except IntegrityError:
        raise Conflict(
            f"An assessment named '{name}' was created at the same time; choose another name."
        ) from None
    _enqueue(session, principal, assessment)
    return assessment


def _models_of(config: dict[str, Any]) -> list[str]:
    refs = [candidate["model"] for candidate in config["candidates"]]
    if config.get("judge"):
        refs.append(config["judge"]["model"])
    return list(dict.fromkeys(refs))


def _enqueue(session: Session, principal: Principal, assessment: Assessment) -> Job:
    uses = [UseKey(Resource.ASSESSMENT, assessment.id)]
    if assessment.dataset_id is not None:
        uses.append(UseKey(Resource.DATASET, assessment.dataset_id))
    for ref in _models_of(assessment.config):
        kind, model_id = parse_reference(ref)
        assert kind is not None, "an assessment stores its models as kind:id"
        uses.append(model_key(kind, model_id))
    job = jobs.enqueue(
        session,
        principal,
        RUN_JOB,
        {"assessment_id": assessment.id},
        uses=uses,
        message=f"Assessment {assessment.name} waits for a worker",
    )
    assessment.job_id = job.id
    assessment.status = "queued"
    assessment.error = None
    assessment.finished_at = None
    session.flush()
    return job


def get_assessment(session: Session, principal: Principal, assessment_id: str) -> Assessment:
    row = session.get(Assessment, assessment_id)
    if row is None or row.project_id != principal.project_id:
        raise NotFound(f"No assessment '{assessment_id}'. List them with GET /api/v1/assessments.")
    return row


def find_assessment(session: Session, principal: Principal, id_or_name: str) -> Assessment:
    """An assessment by id or, failing that, by name."""
    row = session.get(Assessment, id_or_name)
    if row is not None and row.project_id == principal.project_id:
        return row
    row = _by_name(session, principal, id_or_name)
    if row is None:
        raise NotFound(f"No assessment '{id_or_name}'. List them with `tuneyard assess list`.")
    return row


def list_assessments(session: Session, principal: Principal, limit: int = 50, offset: int = 0):
    stmt = (
        select(Assessment)
        .where(Assessment.project_id == principal.project_id)
        .order_by(Assessment.created_at.desc(), Assessment.id)
    )
    return paginate(session, stmt, limit, offset)


def describe(session: Session, assessment: Assessment) -> dict[str, Any]:
    """The assessment as the API shows it, with its latest job's progress and message."""
    job = session.get(Job, assessment.job_id) if assessment.job_id else None
    fields = {
        name: getattr(assessment, name)
        for name in (
            "id",
            "name",
            "dataset_id",
            "dataset_name",
            "status",
            "error",
            "job_id",
            "row_count",
            "config",
            "summary",
            "created_at",
            "finished_at",
        )
    }
    return {
        **fields,
        "progress": job.progress if job is not None else 0.0,
        "message": job.message if job is not None else "",
    }


def cancel_assessment(session: Session, principal: Principal, assessment_id: str) -> Assessment:
    """Stop a run; the rows it finished are kept, and resume runs the rest."""
    principal.require("member")
    assessment = get_assessment(session, principal, assessment_id)
    if assessment.status not in ACTIVE or not assessment.job_id:
        raise Conflict(f"Assessment {assessment.name} is {assessment.status}; nothing to cancel.")
    jobs.cancel_job(session, principal, assessment.job_id)
    session.refresh(assessment)
    return assessment


def row_counts(session: Session, assessment_id: str) -> dict[str, int]:
    counts = dict.fromkeys(ROW_STATUSES, 0)
    for status, count in session.execute(
        select(AssessmentRow.status, func.count())
        .where(AssessmentRow.assessment_id == assessment_id)
        .group_by(AssessmentRow.status)
    ):
        counts[status] = count
    return counts


def resume_assessment(session: Session, principal: Principal, assessment_id: str) -> Assessment:
    """Run a stopped assessment again: rows already answered are kept; the rest, and those
    where a call failed, run now."""
    principal.require("member")
    assessment = get_assessment(session, principal, assessment_id)
    if assessment.status in ACTIVE:
        raise Conflict(f"Assessment {assessment.name} is already {assessment.status}.")
    counts = row_counts(session, assessment.id)
    if assessment.status == "succeeded" and not counts["pending"] and not counts["error"]:
        raise Conflict(
            f"Assessment {assessment.name} has answered every row; start a new one to run again."
        )
    if not any(counts.values()) and assessment.dataset_id is None:
        raise Conflict(
            f"The dataset of assessment {assessment.name} was deleted before its sample was "
            "drawn; it cannot resume."
        )
    for index, ref in enumerate(_models_of(assessment.config)):
        _model(session, principal, ref, f"model {index + 1}")
    _enqueue(session, principal, assessment)
    return assessment


def delete_assessment(session: Session, principal: Principal, assessment_id: str) -> None:
    principal.require("member")
    assessment = get_assessment(session, principal, assessment_id)
    jobs.ensure_not_in_use(
        session, UseKey(Resource.ASSESSMENT, assessment.id), f"Assessment {assessment.name}"
    )
    session.delete(assessment)
    session.flush()


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
) -> tuple[Dataset, Job]:
    """A new dataset (preference format, parsed as any upload is) from a judged run."""
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
    content = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records)
    description = request.description or (
        f"Preference pairs from assessment {assessment.name} ({len(records)} rows)."
    )
    return datasets.create_dataset(
        session,
        principal,
        name=request.name,
        filename=f"{_file_stem(request.name)}.jsonl",
        content=io.BytesIO(content.encode("utf-8")),
        description=description,
    )


# -- fidelity across the lifecycle -------------------------------------------------------------

MAX_STAGES = 8
# What a record asks and answers, by the dataset's format: (prompt template, reference column).
_FORMAT_PROMPTS = {
    "chat": ("{{messages}}", "messages"),
    "prompt_completion": ("{{prompt}}", "completion"),
    "preference": ("{{prompt}}", "chosen"),
    "prompt_only": ("{{prompt}}", "answer"),
    "alpaca": ("{{instruction}}", "output"),
}


def _format_prompt(dataset: Dataset) -> tuple[str, str | None]:
    fields = dataset.fields or []
    template, reference = _FORMAT_PROMPTS.get(dataset.format or "", ("{{prompt}}", None))
    if dataset.format == "alpaca" and "input" in fields:
        template = "{{instruction}}\n\n{{input}}"
    return template, reference if reference in fields else None


def _stages(session: Session, principal: Principal, source) -> list[tuple[str, str]]:
    """(stage, reference) of the models made from a customized model that can answer now: its
    complete models, oldest first, then the live models of it or of them."""
    from tuneyard.complete.service import usable_complete
    from tuneyard.deploy.service import usable_live

    completes = [
        m for m in usable_complete(session, principal) if m.customized_model_id == source.id
    ]
    completes.sort(key=lambda m: m.created_at)
    origins = {("customized", source.id)} | {("complete", m.id) for m in completes}
    lives = [m for m in usable_live(session, principal) if (m.source_kind, m.source_id) in origins]
    lives.sort(key=lambda m: m.created_at)
    stages = [("complete", f"complete:{m.id}") for m in completes]
    stages += [(f"live {m.quantization}", f"live:{m.id}") for m in lives]
    return stages


def start_fidelity(
    session: Session, principal: Principal, customized_id: str, request: FidelityIn
) -> Assessment:
    """Compare a customized model with its complete models and live models (each
    quantization) on the same prompts, greedily: per stage, identical answers, word
    agreement and reference metrics. Each live model's card gets its figure."""
    principal.require("member")
    from tuneyard.customized.service import get_customized
    from tuneyard.training.service import get_training

    source = get_customized(session, principal, customized_id)
    stages = _stages(session, principal, source)
    if not stages:
        raise Conflict(
            f"Customized model {source.name} has no complete or live model that can answer; "
            "save it or deploy it first, then check that they answer as it does."
        )
    stages = stages[-(MAX_STAGES - 1) :]
    if request.dataset_id is not None:
        dataset = datasets.find_dataset(session, principal, request.dataset_id)
    else:
        training = (
            get_training(session, principal, source.training_id) if source.training_id else None
        )
        if training is None or training.dataset_id is None:
            raise Invalid(
                f"The dataset customized model {source.name} was trained on is gone; name a "
                "dataset_id to check it on."
            )
        dataset = datasets.get_dataset(session, principal, training.dataset_id)
    datasets.ensure_ready(dataset)
    template, reference = _format_prompt(dataset)
    params = GenerationParams(temperature=0, max_tokens=request.max_tokens)
    models = [("customized", f"customized:{source.id}"), *stages]
    plan = _plan(
        session,
        principal,
        dataset,
        Sample(size=min(request.size, dataset.record_count), seed=request.seed),
        [
            CandidateIn(
                model=ref, system=request.system, prompt=request.prompt or template, params=params
            )
            for _stage, ref in models
        ],
        None,
        reference,
        None,
    )
    config = plan.config
    for candidate, (stage, _ref) in zip(config["candidates"], models, strict=True):
        candidate["stage"] = stage
    config["kind"] = FIDELITY
    config["source"] = {"customized_id": source.id, "name": source.name}
    name = (request.name or f"fidelity {source.name[:150]} {new_id()[:4]}").strip()
    if _by_name(session, principal, name) is not None:
        raise Conflict(f"An assessment named '{name}' already exists; choose another name.")
    assessment = Assessment(
        project_id=principal.project_id,
        name=name,
        dataset_id=dataset.id,
        dataset_name=dataset.name,
        dataset_digest=dataset.digest,
        config=config,
        row_count=config["sample"]["size"],
        created_by=principal.user_id,
    )
    session.add(assessment)
    session.flush()
    _enqueue(session, principal, assessment)
    return assessment


def fidelity_figures(assessment: Assessment) -> dict[str, dict[str, Any]]:
    """{live model id: the figure its card shows} of a finished fidelity check."""
    summary = assessment.summary or {}
    figures = {}
    for stage in (summary.get("fidelity") or {}).get("stages", []):
        kind, model_id = parse_reference(stage["model"])
        if kind is None or kind.value != "live":
            continue
        figures[model_id] = {
            "assessment_id": assessment.id,
            "source": assessment.config["source"]["name"],
            "identical": stage["identical"],
            "compared": stage["compared"],
            "token_agreement": stage["token_agreement"]["mean"],
            "text": f"{stage['stage'].removeprefix('live ')} agrees with its source on "
            f"{stage['identical']} of {stage['compared']} prompts",
            "checked_at": assessment.finished_at.isoformat() if assessment.finished_at else None,
        }
    return figures
