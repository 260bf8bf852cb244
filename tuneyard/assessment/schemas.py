"""API shapes for assessments: the request, its preview, the assessment with its summary, and
its rows."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from tuneyard.bounds import INT64_MAX, INT64_MIN, SEED_MAX
from tuneyard.chat.schemas import MAX_STOP, MAX_TOKENS, MAX_TOP_K, Grounding
from tuneyard.datasets.schemas import DatasetOut

NAME_MAX = 200
MAX_SAMPLE = 10_000
MAX_PROMPT_CHARS = 20_000
MAX_COLUMN_CHARS = 200
MAX_METRICS = 20
PREVIEW_RECORDS = 5


class GenerationParams(BaseModel):
    """Sampling for one model; greedy by default, so a rerun answers the same."""

    model_config = ConfigDict(extra="forbid")

    temperature: float = Field(0.0, ge=0, le=2, description="0 answers greedily.")
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=1, le=MAX_TOP_K, description="Ignored by OpenAI's own API.")
    max_tokens: int = Field(256, ge=1, le=MAX_TOKENS)
    stop: list[str] | None = Field(None, max_length=MAX_STOP)
    seed: int | None = Field(None, ge=INT64_MIN, le=INT64_MAX)

    @field_validator("stop")
    @classmethod
    def _no_empty_stop(cls, value: list[str] | None) -> list[str] | None:
        if value and any(not item for item in value):
            raise ValueError("stop strings must not be empty")
        return value


class Sample(BaseModel):
    model_config = ConfigDict(extra="forbid")

    size: int = Field(ge=1, le=MAX_SAMPLE, description="How many records to assess.")
    seed: int | None = Field(
        None,
        ge=0,
        le=SEED_MAX,
        description="Draw the records at random with this seed; without it, the first `size`.",
    )


class CandidateIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(
        min_length=1,
        max_length=500,
        description="base:<id>, customized:<id>, complete:<id>, live:<id>, third-party:<id>, "
        "or a model's name.",
    )
    system: str | None = Field(None, max_length=MAX_PROMPT_CHARS)
    prompt: str = Field(
        min_length=1,
        max_length=MAX_PROMPT_CHARS,
        description="The user message, with {{column}} placeholders.",
    )
    params: GenerationParams | None = None
    knowledge_bases: list[str] | None = Field(
        None,
        max_length=5,
        description="Ground each answer in these knowledge bases (ids or names): retrieval-"
        "augmented candidates, to compare retrieval setups on the same questions.",
    )
    grounding: Grounding | None = Field(None, description="top_k and mode of the retrieval.")


class JudgeIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=500)
    system: str | None = Field(None, max_length=MAX_PROMPT_CHARS)
    prompt: str = Field(
        min_length=1,
        max_length=MAX_PROMPT_CHARS,
        description="With {{ResponseA}}, {{ResponseB}} (pairwise), {{ref_answer}}, {{Question}} "
        "and {{column}}; GET /api/v1/assessments/judge-prompts has built-ins to start from.",
    )
    kind: Literal["score", "pairwise"]
    params: GenerationParams | None = Field(None, description="Default: greedy, up to 512 tokens.")


class AssessmentCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=NAME_MAX, pattern=r"\S")
    dataset_id: str = Field(min_length=1, max_length=200, description="A dataset's id or name.")
    sample: Sample
    candidates: list[CandidateIn] = Field(min_length=1, max_length=2)
    judge: JudgeIn | None = None
    reference_column: str | None = Field(
        None, min_length=1, max_length=MAX_COLUMN_CHARS, description="The column of references."
    )
    metrics: list[str] | None = Field(
        None,
        max_length=MAX_METRICS,
        description="Reference metrics (GET /api/v1/assessments/metrics); default: every "
        "default metric when reference_column is set.",
    )


class PromptOut(BaseModel):
    system: str | None
    prompt: str


class PreviewRecord(BaseModel):
    record_index: int
    record: dict[str, Any]
    candidates: list[PromptOut]
    judge: list[PromptOut] = Field(
        description="What the judge is asked; the answers' placeholders stay as written "
        "(pairwise: both orders)."
    )


class PreviewOut(BaseModel):
    sample_size: int
    records: list[PreviewRecord]


class AssessmentOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    dataset_id: str | None
    dataset_name: str
    status: str = Field(description="queued, running, succeeded, failed or cancelled.")
    error: str | None
    job_id: str | None
    progress: float = Field(description="0-100, from its latest job.")
    message: str = Field(description="Its latest job's message.")
    row_count: int
    config: dict[str, Any] = Field(description="The checked request; models as kind:id.")
    summary: dict[str, Any] | None = Field(description="Once the run has ended.")
    created_at: datetime
    finished_at: datetime | None


class RowOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    position: int
    record_index: int
    record: dict[str, Any]
    status: str = Field(description="pending, done, or error (a call failed).")
    answers: list[dict[str, Any]]
    judgments: list[dict[str, Any]]
    verdict: dict[str, Any] | None
    metrics: list[dict[str, Any]]
    agreement: dict[str, Any] | None
    finished_at: datetime | None


class JudgePromptOut(BaseModel):
    kind: str
    system: str
    prompt: str
    description: str


class MetricOut(BaseModel):
    name: str
    description: str
    scale: str
    default: bool


class PreferenceDatasetIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=NAME_MAX, pattern=r"\S")
    description: str = Field("", max_length=10_000)
    candidate: int = Field(
        0, ge=0, le=1, description="Scored runs: whose low-scored answers become `rejected`."
    )
    max_score: float = Field(
        5, ge=1, le=10, description="Scored runs: rows scored this or lower are exported."
    )


class FidelityIn(BaseModel):
    """A fidelity check of a customized model against its complete and live models; every
    field has a default, so an empty body checks it on the dataset it was trained on."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, min_length=1, max_length=NAME_MAX, pattern=r"\S")
    dataset_id: str | None = Field(
        None,
        min_length=1,
        max_length=200,
        description="Default: the dataset the customized model was trained on.",
    )
    size: int = Field(50, ge=1, le=MAX_SAMPLE, description="Records (fewer if it has fewer).")
    seed: int | None = Field(None, ge=0, le=SEED_MAX)
    system: str | None = Field(None, max_length=MAX_PROMPT_CHARS)
    prompt: str | None = Field(
        None,
        min_length=1,
        max_length=MAX_PROMPT_CHARS,
        description="Default by the dataset's format: its prompt (chat: the conversation).",
    )
    max_tokens: int = Field(128, ge=1, le=MAX_TOKENS)


class CompareSideRow(BaseModel):
    """One assessment's row of a record: as the results show it, and the followed candidate's
    figure (`value`: its score, or 1/0.5/0 for a pairwise win/tie/loss)."""

    position: int
    status: str
    answers: list[dict[str, Any]]
    judgments: list[dict[str, Any]]
    verdict: dict[str, Any] | None
    metrics: list[dict[str, Any]]
    value: float | None


class CompareRow(BaseModel):
    record_index: int = Field(description="The record's position in the dataset.")
    record: dict[str, Any]
    first: CompareSideRow | None = Field(description="None: not in the first's sample.")
    second: CompareSideRow | None = Field(description="None: not in the second's sample.")
    changed: Literal["better", "worse", "same"] | None = Field(
        description="How the second did against the first on this record, where both were "
        "judged the same way and both verdicts were read."
    )


class CompareOut(BaseModel):
    summary: dict[str, Any] = Field(
        description="Rows in both and in one only; each run's mean score or win rate and the "
        "difference (second - first) with its 95% interval and whether it is within noise, "
        "over the records judged in both; the same for each reference metric both used; "
        "`lines` says it in words."
    )
    items: list[CompareRow]
    total: int


class PreferenceDatasetOut(DatasetOut):
    pairs: int = Field(description="Preference pairs written to the new dataset.")
    left_out: int = Field(
        description="Pairs left out: longer than the dataset line limit "
        "(TUNEYARD_DATASET_MAX_LINE_CHARS)."
    )
