"""Assessments: check a request (dataset, sample, models, placeholders, metrics), preview its
prompts, and create, follow, cancel, resume and delete runs. Reading the rows, exports and
preference datasets are in results.py; the fidelity check in fidelity.py.

Everything an assessment needs is checked here, before a job exists; the job (tasks.py, runner.py)
only calls the models and records what they said.
"""

from __future__ import annotations

import random
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
    GenerationParams,
    JudgeIn,
    Sample,
)
from tuneyard.auth.service import Principal
from tuneyard.chat.backends import resolve_model
from tuneyard.chat.schemas import Grounding
from tuneyard.datasets import service as datasets
from tuneyard.errors import Conflict, Invalid, NotFound
from tuneyard.jobs import service as jobs
from tuneyard.jobs.keys import Resource, UseKey, model_key
from tuneyard.modelref import parse_reference
from tuneyard.models import Assessment, AssessmentRow, Dataset, Job
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
            **_grounding(session, principal, candidate, f"candidates[{index}]"),
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


def _grounding(
    session: Session, principal: Principal, candidate: CandidateIn, where: str
) -> dict[str, Any]:
    """A retrieval-augmented candidate's knowledge bases (by id) and retrieval settings."""
    if not candidate.knowledge_bases:
        return {}
    from tuneyard.knowledge.service import find_knowledge_bases

    try:
        bases = find_knowledge_bases(session, principal, candidate.knowledge_bases)
    except (NotFound, Invalid) as exc:
        raise type(exc)(f"{where}.knowledge_bases: {exc.message}") from None
    options = candidate.grounding or Grounding()
    return {
        "knowledge_bases": [kb.id for kb in bases],
        "knowledge_base_names": [kb.name for kb in bases],
        "grounding": options.model_dump(),
    }


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
    grounded = [
        kb_id for c in assessment.config["candidates"] for kb_id in c.get("knowledge_bases", [])
    ]
    if grounded:
        from tuneyard.knowledge.service import job_keys

        uses += [key for key in job_keys(session, grounded) if key not in uses]
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
