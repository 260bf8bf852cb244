"""Assessments: create (a job), preview, list, show with the summary, rows, two runs side by
side, export, cancel, resume, delete, and preference datasets from the verdicts."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, status
from fastapi.responses import StreamingResponse

from tuneyard.assessment import compare, prompts, results, service
from tuneyard.assessment.fidelity import MAX_STAGES
from tuneyard.assessment.metrics import list_metrics
from tuneyard.assessment.schemas import (
    AssessmentCreate,
    AssessmentOut,
    CompareOut,
    JudgePromptOut,
    MetricOut,
    PreferenceDatasetIn,
    PreferenceDatasetOut,
    PreviewOut,
    RowOut,
)
from tuneyard.deps import CurrentPrincipal, DbSession, Paging
from tuneyard.jobs.schemas import JobAccepted
from tuneyard.pagination import Page

router = APIRouter(prefix="/assessments", tags=["assessments"])

# A fidelity check has the most candidates: its source and its stages.
MAX_CANDIDATE = MAX_STAGES - 1
EXPORT_TYPES = {"csv": "text/csv; charset=utf-8", "jsonl": "application/x-ndjson"}


@router.post("", response_model=JobAccepted, status_code=status.HTTP_202_ACCEPTED)
def create_assessment(body: AssessmentCreate, principal: CurrentPrincipal, session: DbSession):
    """Check the request (dataset, sample, models, every placeholder) and start the run."""
    assessment = service.create_assessment(session, principal, body)
    return JobAccepted(id=assessment.id, job_id=assessment.job_id)


@router.post("/preview", response_model=PreviewOut)
def preview_assessment(body: AssessmentCreate, principal: CurrentPrincipal, session: DbSession):
    """The prompts of up to 5 records of the sample, as each model will get them."""
    return service.preview(session, principal, body)


@router.get("/judge-prompts", response_model=list[JudgePromptOut])
def judge_prompts(principal: CurrentPrincipal):
    """Built-in judge prompts to start from: score against the reference, pick the better."""
    return list(prompts.BUILTIN_JUDGE_PROMPTS.values())


@router.get("/metrics", response_model=list[MetricOut])
def metrics(principal: CurrentPrincipal):
    """The reference metrics, by name."""
    return [
        MetricOut(name=m.name, description=m.description, scale=m.scale, default=m.default)
        for m in list_metrics()
    ]


@router.get("", response_model=Page[AssessmentOut])
def list_assessments(principal: CurrentPrincipal, session: DbSession, page: Paging):
    items, total = service.list_assessments(session, principal, page.limit, page.offset)
    return {"items": [service.describe(session, item) for item in items], "total": total}


@router.get("/{assessment_id}", response_model=AssessmentOut)
def get_assessment(assessment_id: str, principal: CurrentPrincipal, session: DbSession):
    return service.describe(session, service.get_assessment(session, principal, assessment_id))


@router.get("/{assessment_id}/results", response_model=Page[RowOut])
def assessment_results(
    assessment_id: str,
    principal: CurrentPrincipal,
    session: DbSession,
    page: Paging,
    row_status: Annotated[
        Literal["pending", "done", "error"] | None,
        Query(alias="status", description="Only rows in this state."),
    ] = None,
    winner: Annotated[
        Literal["A", "B", "tie", "unparsed"] | None,
        Query(description="Pairwise runs: only rows with this verdict."),
    ] = None,
):
    """The rows in sample order: prompts, answers, judge outputs, verdicts, metrics."""
    items, total = results.results(
        session, principal, assessment_id, row_status, page.limit, page.offset, winner
    )
    return {"items": items, "total": total}


@router.get("/{assessment_id}/compare/{other_id}", response_model=CompareOut)
def compare_assessments(
    assessment_id: str,
    other_id: str,
    principal: CurrentPrincipal,
    session: DbSession,
    page: Paging,
    candidate: Annotated[
        int, Query(ge=0, le=MAX_CANDIDATE, description="The first's candidate followed (0 is A).")
    ] = 0,
    other_candidate: Annotated[
        int, Query(ge=0, le=MAX_CANDIDATE, description="The second's candidate followed.")
    ] = 0,
    changed: Annotated[
        Literal["better", "worse", "same"] | None,
        Query(description="Only records where the second did better, worse or the same."),
    ] = None,
):
    """Two finished assessments of the same dataset side by side, matched by record (e.g.
    before and after a training): a page of records with both runs' answers, verdicts and
    metrics, each marked better/worse/same where a score or verdict allows it, and a summary
    with the difference (second - first) and its 95% bootstrap interval."""
    return compare.compare(
        session,
        principal,
        assessment_id,
        other_id,
        candidate=candidate,
        other_candidate=other_candidate,
        changed=changed,
        limit=page.limit,
        offset=page.offset,
    )


@router.get(
    "/{assessment_id}/export",
    responses={200: {"content": {"text/csv": {}, "application/x-ndjson": {}}}},
    response_class=StreamingResponse,
)
def export_assessment(
    assessment_id: str,
    principal: CurrentPrincipal,
    session: DbSession,
    format: Annotated[Literal["csv", "jsonl"], Query()] = "csv",
):
    """Every row as CSV (one column per field) or JSONL (the rows as the results show them)."""
    filename, chunks = results.export(session, principal, assessment_id, format)
    return StreamingResponse(
        chunks,
        media_type=EXPORT_TYPES[format],
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


@router.post(
    "/{assessment_id}/preference-dataset",
    response_model=PreferenceDatasetOut,
    status_code=status.HTTP_201_CREATED,
)
def preference_dataset(
    assessment_id: str, body: PreferenceDatasetIn, principal: CurrentPrincipal, session: DbSession
):
    """A new dataset of preference pairs (prompt, chosen, rejected) from the verdicts, parsed
    as any upload is; follow its job_id. Pairs longer than a dataset line may be are left out,
    and `left_out` counts them."""
    return results.create_preference_dataset(session, principal, assessment_id, body)


@router.post("/{assessment_id}/cancel", response_model=AssessmentOut)
def cancel_assessment(assessment_id: str, principal: CurrentPrincipal, session: DbSession):
    assessment = service.cancel_assessment(session, principal, assessment_id)
    return service.describe(session, assessment)


@router.post(
    "/{assessment_id}/resume", response_model=JobAccepted, status_code=status.HTTP_202_ACCEPTED
)
def resume_assessment(assessment_id: str, principal: CurrentPrincipal, session: DbSession):
    """Run the rows not yet answered (and those where a call failed); answered rows are kept."""
    assessment = service.resume_assessment(session, principal, assessment_id)
    return JobAccepted(id=assessment.id, job_id=assessment.job_id)


@router.delete("/{assessment_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_assessment(assessment_id: str, principal: CurrentPrincipal, session: DbSession):
    service.delete_assessment(session, principal, assessment_id)
