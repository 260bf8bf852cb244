"""API shapes for datasets, their records and their statistics."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, RootModel


class DatasetOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    description: str
    status: str = Field(description="parsing, ready or failed.")
    format: str | None = Field(
        description="chat, preference, alpaca, prompt_completion or prompt_only, once ready."
    )
    fields: list[str] = Field(description="The records' fields, after the column mapping.")
    record_count: int
    errors: list[str] = Field(description="Why the parse failed: the first problems found.")
    digest: str | None = Field(description="sha256 of the normalised records file.")
    file_type: str
    original_filename: str
    size_bytes: int
    column_mapping: dict[str, str]
    created_at: datetime
    job_id: str | None = Field(description="The latest parse job.")


class DatasetRecord(RootModel[dict[str, Any]]):
    """One normalised record: the canonical fields of its format, and any extra fields."""


class FieldLengths(BaseModel):
    """Characters per record in one field (for messages: all contents together)."""

    min: int
    mean: float
    max: int


class TokenBucket(BaseModel):
    start: int = Field(description="Fewest tokens in the bucket.")
    end: int = Field(description="Bucket holds records with start <= tokens < end.")
    count: int


class TokenLengths(BaseModel):
    base_model_id: str
    method: str = Field(
        description="chat_template: chat records rendered with the model's template; "
        "joined_text: the record's texts joined by newlines."
    )
    count: int
    min: int
    mean: float
    p50: int
    p95: int
    max: int
    buckets: list[TokenBucket]
    max_seq_length: int | None
    over_max_seq_length: int | None = Field(
        description="Records with more tokens than max_seq_length (they would be truncated)."
    )


class DatasetStats(BaseModel):
    record_count: int
    fields: dict[str, FieldLengths]
    tokens: TokenLengths | None = Field(description="Only when base_model_id is given.")
