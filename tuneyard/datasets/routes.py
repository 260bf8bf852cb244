"""Datasets: upload, list, show, preview records, statistics, delete."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, Query, UploadFile, status

from tuneyard.bounds import INT32_MAX
from tuneyard.datasets import service
from tuneyard.datasets.schemas import DatasetOut, DatasetRecord, DatasetStats
from tuneyard.deps import CurrentPrincipal, DbSession, Paging
from tuneyard.gate import body_limit
from tuneyard.jobs.schemas import JobAccepted
from tuneyard.pagination import Page

router = APIRouter(prefix="/datasets", tags=["datasets"])


@router.post("", response_model=JobAccepted, status_code=status.HTTP_202_ACCEPTED)
@body_limit(lambda settings: settings.dataset_max_file_bytes, service.TOO_LARGE)
def upload_dataset(
    principal: CurrentPrincipal,
    session: DbSession,
    name: Annotated[
        str,
        Form(
            description="Unique in the project, 1-200 characters.",
            json_schema_extra={"pattern": r"\S", "maxLength": service.NAME_MAX},
        ),
    ],
    file: Annotated[UploadFile, File(description="A .jsonl, .json, .csv or .parquet file.")],
    description: Annotated[str, Form()] = "",
    column_mapping: Annotated[
        str | None,
        Form(
            description="A JSON object of source field -> canonical field, e.g. "
            '{"question": "prompt", "answer": "completion"}.'
        ),
    ] = None,
):
    """Store the file and start parsing it; follow the job, then read the dataset."""
    dataset, job = service.create_dataset(
        session,
        principal,
        name=name,
        filename=file.filename or "",
        content=file.file,
        description=description,
        column_mapping=service.parse_column_mapping(column_mapping),
    )
    return JobAccepted(id=dataset.id, job_id=job.id)


@router.get("", response_model=Page[DatasetOut])
def list_datasets(principal: CurrentPrincipal, session: DbSession, page: Paging):
    items, total = service.list_datasets(session, principal, page.limit, page.offset)
    return {"items": items, "total": total}


@router.get("/{dataset_id}", response_model=DatasetOut)
def get_dataset(dataset_id: str, principal: CurrentPrincipal, session: DbSession):
    return service.get_dataset(session, principal, dataset_id)


@router.get("/{dataset_id}/preview", response_model=Page[DatasetRecord])
def preview_dataset(dataset_id: str, principal: CurrentPrincipal, session: DbSession, page: Paging):
    items, total = service.preview(session, principal, dataset_id, page.limit, page.offset)
    return {"items": items, "total": total}


@router.get("/{dataset_id}/stats", response_model=DatasetStats)
def dataset_stats(
    dataset_id: str,
    principal: CurrentPrincipal,
    session: DbSession,
    base_model_id: Annotated[
        str | None, Query(description="Count tokens with this base model's tokenizer.")
    ] = None,
    max_seq_length: Annotated[
        int | None,
        Query(ge=1, le=INT32_MAX, description="Report how many records have more tokens."),
    ] = None,
):
    return service.dataset_stats(session, principal, dataset_id, base_model_id, max_seq_length)


@router.delete("/{dataset_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_dataset(dataset_id: str, principal: CurrentPrincipal, session: DbSession):
    service.delete_dataset(session, principal, dataset_id)
