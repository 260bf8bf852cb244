"""Every table, in one place. Services read and write these; nothing else touches SQL."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from tuneyard.db import Base

# The longest training method name that a training or a profile records.
METHOD_NAME_MAX = 40


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return str(uuid.uuid4())


class UTCDateTime(TypeDecorator):
    """Stores UTC without a zone (portable across SQLite and PostgreSQL), returns aware UTC."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given; use an aware UTC datetime")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:
        return value.replace(tzinfo=UTC) if value is not None else None


def id_column() -> Mapped[str]:
    return mapped_column(String(36), primary_key=True, default=new_id)


def created_column() -> Mapped[datetime]:
    return mapped_column(UTCDateTime(), default=utcnow, nullable=False)


class Project(Base):
    __tablename__ = "projects"

    id: Mapped[str] = id_column()
    code: Mapped[str] = mapped_column(String(32), unique=True, nullable=False)
    name: Mapped[str] = mapped_column(String(200), nullable=False)
    created_at: Mapped[datetime] = created_column()


class User(Base):
    __tablename__ = "users"
    __table_args__ = (UniqueConstraint("project_id", "username"),)

    id: Mapped[str] = id_column()
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    username: Mapped[str] = mapped_column(String(64), nullable=False)
    password_hash: Mapped[str] = mapped_column(String(200), nullable=False)
    role: Mapped[str] = mapped_column(String(16), nullable=False)
    # The server's operator, beyond any project role: may upload code that the server runs.
    operator: Mapped[bool] = mapped_column(
        Boolean, nullable=False, default=False, server_default=false()
    )
    created_at: Mapped[datetime] = created_column()

    project: Mapped[Project] = relationship(lazy="joined")


class ApiToken(Base):
    __tablename__ = "api_tokens"

    id: Mapped[str] = id_column()
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(100), nullable=False)
    kind: Mapped[str] = mapped_column(String(16), nullable=False)  # "api" or "session"
    token_hash: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)
    prefix: Mapped[str] = mapped_column(String(16), nullable=False)
    created_at: Mapped[datetime] = created_column()
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    user: Mapped[User] = relationship(lazy="joined")


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[str] = id_column()
    project_id: Mapped[str] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), index=True
    )
    kind: Mapped[str] = mapped_column(String(64), nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False, default="queued", index=True)
    progress: Mapped[float] = mapped_column(Float, nullable=False, default=0.0)
    message: Mapped[str] = mapped_column(Text, nullable=False, default="")
    error: Mapped[str | None] = mapped_column(Text)
    params: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False, default=dict)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # Resources the job reads or writes, as "kind:id" keys; deleting one of them is refused
    # while the job is active.
    uses: Mapped[list[str]] = mapped_column(JSON, nullable=False, default=list)
    created_by: Mapped[str | None] = mapped_column(String(36))
    created_at: Mapped[datetime] = created_column()
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    attempt: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    pid: Mapped[int | None] = mapped_column(Integer)
    worker_id: Mapped[str | None] = mapped_column(String(200))
    cancel_requested: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    # Where the last attempt ran (a Ray node: its host name and node id) and what it was given
    # there ({"num_cpus", "num_gpus", "memory"}); unset for jobs of the local executor.
    node: Mapped[str | None] = mapped_column(String(200))
    resources: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # Workers claim queued jobs by priority (higher first), then by age.
    priority: Mapped[int] = mapped_column(Integer, nullable=False, default=0, server_default="0")


class Worker(Base):
    """A job executor that runs (in `tuneyard worker`, or in `tuneyard serve` with its worker),
    seen at its last heartbeat: readiness and the dashboard tell the live ones by it."""

    __tablename__ = "workers"

    id: Mapped[str] = mapped_column(String(200), primary_key=True)  # the jobs' worker_id
    host: Mapped[str] = mapped_column(String(200), nullable=False)
    started_at: Mapped[datetime] = created_column()
    seen_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False, index=True)
    running_jobs: Mapped[int] = mapped_column(Integer, nullable=False, default=0)


class JobEvent(Base):
    __tablename__ = "job_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = created_column()
    kind: Mapped[str] = mapped_column(String(32), nullable=False)
    data: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False, default=dict)


class BaseModel(Base):
    __tablename__ = "base_models"
    __table_args__ = (UniqueConstraint("project_id", "technical_name"),)

    id: Mapped[str] = id_column()
    project_id: Mapped[str] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), index=True
    )
    technical_name: Mapped[str] = mapped_column(String(200), nullable=False)
    model_name: Mapped[str] = mapped_column(String(200), nullable=False)
    model_type: Mapped[str] = mapped_column(String(16), nullable=False, default="chat")
    source: Mapped[str] = mapped_column(String(16), nullable=False)  # path, gguf, hub, demo
    source_ref: Mapped[str] = mapped_column(Text, nullable=False)  # the path, file or hub id given
    path: Mapped[str | None] = mapped_column(Text)  # the HF folder once ready
    # True when Tuneyard made the folder (import, download): deleting the model deletes it.
    managed: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False, default="ready")
    error: Mapped[str | None] = mapped_column(Text)
    model_card: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False, default=dict)
    deployment_template: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = created_column()
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)


class Dataset(Base):
    __tablename__ = "datasets"
    __table_args__ = (UniqueConstraint("project_id", "name"),)

    id: Mapped[str] = id_column()
    project_id: Mapped[str] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(200), nullable=False)
    description: Mapped[str] = mapped_column(Text, nullable=False, default="")
    status: Mapped[str] = mapped_column(String(16), nullable=False, default="parsing")
    file_type: Mapped[str] = mapped_column(String(16), nullable=False)
    original_filename: Mapped[str] = mapped_column(String(500), nullable=False)
    size_bytes: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    column_mapping: Mapped[dict[str, str]] = mapped_column(JSON, nullable=False, default=dict)
    format: Mapped[str | None] = mapped_column(String(32))
    fields: Mapped[list[str]] = mapped_column(JSON, nullable=False, default=list)
    record_count: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    digest: Mapped[str | None] = mapped_column(String(64))
    errors: Mapped[list[str]] = mapped_column(JSON, nullable=False, default=list)
    # The latest parse job, so a client can follow it from the dataset.
    job_id: Mapped[str | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = created_column()


class TrainingProfile(Base):
    """A named preset of training parameters, applied at start (the request's values win)."""

    __tablename__ = "training_profiles"
    __table_args__ = (UniqueConstraint("project_id", "name"),)

    id: Mapped[str] = id_column()
    project_id: Mapped[str] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(100), nullable=False)
    description: Mapped[str] = mapped_column(Text, nullable=False, default="")
    method: Mapped[str | None] = mapped_column(String(METHOD_NAME_MAX))  # None: any method
    params: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False, default=dict)
    created_at: Mapped[datetime] = created_column()


class TrainingMethodScript(Base):
    """A custom training method: an admin's Python script and what it declared at upload."""

    __tablename__ = "training_method_scripts"
    __table_args__ = (UniqueConstraint("project_id", "name"),)

    id: Mapped[str] = id_column()
    project_id: Mapped[str] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(40), nullable=False)
    description: Mapped[str] = mapped_column(Text, nullable=False)
    formats: Mapped[list[str]] = mapped_column(JSON, nullable=False)  # dataset formats
    result: Mapped[str] = mapped_column(String(16), nullable=False)  # adapter, full
    # name -> {"type": "int", "default": 8, "description": "..."}
    parameters: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False, default=dict)
    path: Mapped[str] = mapped_column(Text, nullable=False)
    digest: Mapped[str] = mapped_column(String(64), nullable=False)  # sha256 of the script
    created_by: Mapped[str | None] = mapped_column(String(36))
    created_at: Mapped[datetime] = created_column()


class Training(Base):
    """One run of a training method on (base model, dataset, parameters)."""

    __tablename__ = "trainings"

    id: Mapped[str] = id_column()
    project_id: Mapped[str] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(100), nullable=False)
    method: Mapped[str] = mapped_column(String(METHOD_NAME_MAX), nullable=False)
    base_model_id: Mapped[str | None] = mapped_column(
        ForeignKey("base_models.id", ondelete="SET NULL")
    )
    base_model_name: Mapped[str] = mapped_column(String(200), nullable=False)
    dataset_id: Mapped[str | None] = mapped_column(ForeignKey("datasets.id", ondelete="SET NULL"))
    dataset_name: Mapped[str] = mapped_column(String(200), nullable=False)
    dataset_digest: Mapped[str | None] = mapped_column(String(64))
    profile_id: Mapped[str | None] = mapped_column(
        ForeignKey("training_profiles.id", ondelete="SET NULL")
    )
    # Every parameter, defaults filled in: what the runner uses, and what the card shows.
    params: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False, default=dict)
    status: Mapped[str] = mapped_column(String(16), nullable=False, default="queued")
    progress: Mapped[float] = mapped_column(Float, nullable=False, default=0.0)
    eta_seconds: Mapped[float | None] = mapped_column(Float)
    error: Mapped[str | None] = mapped_column(Text)
    job_id: Mapped[str | None] = mapped_column(String(36))
    customized_model_id: Mapped[str | None] = mapped_column(String(36))
    summary: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False, default=dict)
    created_by: Mapped[str | None] = mapped_column(String(36))
    created_at: Mapped[datetime] = created_column()
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class TrainingMetric(Base):
    """The metrics of one logged step of a training (loss, lr, grad norm, rewards...)."""

    __tablename__ = "training_metrics"
    __table_args__ = (UniqueConstraint("training_id", "step", "kind"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    training_id: Mapped[str] = mapped_column(
        ForeignKey("trainings.id", ondelete="CASCADE"), index=True
    )
    step: Mapped[int] = mapped_column(Integer, nullable=False)
    kind: Mapped[str] = mapped_column(String(8), nullable=False, default="train")  # train, eval
    data: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False, default=dict)
    created_at: Mapped[datetime] = created_column()


class CustomizedModel(Base):
    """The adapter a training produced, tied to its base model."""

    __tablename__ = "customized_models"
    __table_args__ = (UniqueConstraint("project_id", "name"),)

    id: Mapped[str] = id_column()
    project_id: Mapped[str] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(400), nullable=False)
    training_id: Mapped[str | None] = mapped_column(ForeignKey("trainings.id", ondelete="SET NULL"))
    base_model_id: Mapped[str | None] = mapped_column(
        ForeignKey("base_models.id", ondelete="SET NULL")
    )
    train_name: Mapped[str] = mapped_column(String(100), nullable=False)
    checkpoint_step: Mapped[int | None] = mapped_column(Integer)  # set when promoted
    path: Mapped[str] = mapped_column(Text, nullable=False)
    size_bytes: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    model_card: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False, default=dict)
    created_at: Mapped[datetime] = created_column()


class CompleteModel(Base):
    """A standalone model: an adapter merged into its base, or a full fine-tune."""

    __tablename__ = "complete_models"
    __table_args__ = (UniqueConstraint("project_id", "name"),)

    id: Mapped[str] = id_column()
    project_id: Mapped[str] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(400), nullable=False)
    source: Mapped[str] = mapped_column(String(16), nullable=False)  # saved, full_training
    # Lineage ids stay after their rows are deleted: the card keeps names and digests too.
    customized_model_id: Mapped[str | None] = mapped_column(String(36))
    training_id: Mapped[str | None] = mapped_column(String(36))
    base_model_id: Mapped[str | None] = mapped_column(String(36))
    path: Mapped[str] = mapped_column(Text, nullable=False)
    dtype: Mapped[str] = mapped_column(String(8), nullable=False)
    # saving (its job runs), ready (the folder is complete), failed (no folder; see error).
    status: Mapped[str] = mapped_column(String(16), nullable=False, default="ready")
    error: Mapped[str | None] = mapped_column(Text)
    # The save job that writes the folder, so a client can follow it from the model.
    job_id: Mapped[str | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"))
    size_bytes: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    model_card: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False, default=dict)
    created_at: Mapped[datetime] = created_column()


class DeployEnvironment(Base):
    """A configured serving tool that deploys go to: Ollama, llama.cpp or OpenAI-compatible."""

    __tablename__ = "deploy_environments"
    __table_args__ = (UniqueConstraint("project_id", "name"),)

    id: Mapped[str] = id_column()
    project_id: Mapped[str] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(100), nullable=False)
    kind: Mapped[str] = mapped_column(String(16), nullable=False)  # ollama, llama.cpp, openai
    # The tool's address; None for a llama.cpp server that Tuneyard starts itself.
    url: Mapped[str | None] = mapped_column(Text)
    # Port of the llama.cpp server Tuneyard starts; 0 picks a free one on first start.
    port: Mapped[int | None] = mapped_column(Integer)
    api_key_encrypted: Mapped[str | None] = mapped_column(Text)
    description: Mapped[str] = mapped_column(Text, nullable=False, default="")
    last_checked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_check_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = created_column()
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)


class LiveModel(Base):
    """A model deployed on a serving tool."""

    __tablename__ = "live_models"
    __table_args__ = (UniqueConstraint("project_id", "name"),)

    id: Mapped[str] = id_column()  # the deploy uuid
    project_id: Mapped[str] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(500), nullable=False)
    # The tool-side name (a sanitised form of `name` where the tool restricts names).
    tag: Mapped[str] = mapped_column(String(200), nullable=False)
    environment_id: Mapped[str] = mapped_column(
        ForeignKey("deploy_environments.id", ondelete="RESTRICT"), index=True
    )
    source_kind: Mapped[str] = mapped_column(String(16), nullable=False)  # base, customized, ...
    # Lineage ids stay after their rows are deleted: the card keeps names too.
    source_id: Mapped[str] = mapped_column(String(36), nullable=False)
    source_name: Mapped[str] = mapped_column(String(400), nullable=False)
    quantization: Mapped[str] = mapped_column(String(16), nullable=False)
    # deploying (its job runs), live, failed (see error), stopped (the tool no longer has it).
    status: Mapped[str] = mapped_column(String(16), nullable=False, default="deploying")
    error: Mapped[str | None] = mapped_column(Text)
    job_id: Mapped[str | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"))
    endpoint_url: Mapped[str | None] = mapped_column(Text)  # OpenAI-compatible base URL
    model_id: Mapped[str | None] = mapped_column(String(500))  # the id to send there
    system: Mapped[str | None] = mapped_column(Text)
    parameters: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False, default=dict)
    size_bytes: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    model_card: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False, default=dict)
    last_checked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = created_column()
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)


class ThirdPartyModel(Base):
    """An external model endpoint (OpenAI-compatible or a known provider), chat or embedding."""

    __tablename__ = "third_party_models"
    __table_args__ = (UniqueConstraint("project_id", "name"),)

    id: Mapped[str] = id_column()
    project_id: Mapped[str] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(500), nullable=False)
    provider: Mapped[str] = mapped_column(String(32), nullable=False)
    model_type: Mapped[str] = mapped_column(String(16), nullable=False, default="chat")
    model_name: Mapped[str] = mapped_column(String(500), nullable=False)
    base_url: Mapped[str] = mapped_column(Text, nullable=False)
    api_key_encrypted: Mapped[str | None] = mapped_column(Text)
    description: Mapped[str] = mapped_column(Text, nullable=False, default="")
    private: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    created_by: Mapped[str | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    # Set when registered from a live model; the entry outlives it.
    live_model_id: Mapped[str | None] = mapped_column(String(36))
    created_at: Mapped[datetime] = created_column()
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)


class ChatSession(Base):
    """A stored conversation with one or more models (side by side keeps one per model)."""

    __tablename__ = "chat_sessions"

    id: Mapped[str] = id_column()
    project_id: Mapped[str] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), index=True
    )
    user_id: Mapped[str | None] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    title: Mapped[str] = mapped_column(String(200), nullable=False)
    model: Mapped[str] = mapped_column(String(600), nullable=False)  # the model reference
    params: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False, default=dict)
    created_at: Mapped[datetime] = created_column()
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)


class ChatMessage(Base):
    __tablename__ = "chat_messages"

    id: Mapped[str] = id_column()
    session_id: Mapped[str] = mapped_column(
        ForeignKey("chat_sessions.id", ondelete="CASCADE"), index=True
    )
    position: Mapped[int] = mapped_column(Integer, nullable=False)
    role: Mapped[str] = mapped_column(String(16), nullable=False)  # system, user, assistant
    content: Mapped[str] = mapped_column(Text, nullable=False)
    # For answers: which model said it, with what, and how fast.
    model: Mapped[str | None] = mapped_column(String(600))
    usage: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False, default=dict)
    # A grounded answer's sources: the passages retrieved for it, numbered as it cites them.
    citations: Mapped[list[Any] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = created_column()


class Assessment(Base):
    """A run comparing one or two candidate models on a sample of a dataset, optionally with a
    judge model; its rows hold the answers and verdicts, its summary the figures."""

    __tablename__ = "assessments"
    __table_args__ = (UniqueConstraint("project_id", "name"),)

    id: Mapped[str] = id_column()
    project_id: Mapped[str] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(200), nullable=False)
    dataset_id: Mapped[str | None] = mapped_column(ForeignKey("datasets.id", ondelete="SET NULL"))
    # Kept after the dataset is deleted: the rows carry their records.
    dataset_name: Mapped[str] = mapped_column(String(200), nullable=False)
    dataset_digest: Mapped[str | None] = mapped_column(String(64))
    # The checked request: sample, candidates (canonical model references), judge, metrics.
    config: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False, default=dict)
    # queued, running, succeeded, failed, cancelled: in step with its latest job.
    status: Mapped[str] = mapped_column(String(16), nullable=False, default="queued")
    error: Mapped[str | None] = mapped_column(Text)
    job_id: Mapped[str | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"))
    row_count: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    summary: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_by: Mapped[str | None] = mapped_column(String(36))
    created_at: Mapped[datetime] = created_column()
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class AssessmentRow(Base):
    """One sampled record of an assessment: what each candidate was asked and answered, what the
    judge said, and the reference metrics."""

    __tablename__ = "assessment_rows"
    __table_args__ = (UniqueConstraint("assessment_id", "position"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    assessment_id: Mapped[str] = mapped_column(
        ForeignKey("assessments.id", ondelete="CASCADE"), index=True
    )
    position: Mapped[int] = mapped_column(Integer, nullable=False)  # order in the sample
    record_index: Mapped[int] = mapped_column(Integer, nullable=False)  # in the dataset
    record: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False, default=dict)
    # pending (not run yet), done (every call answered), error (a call failed; resume retries).
    status: Mapped[str] = mapped_column(String(8), nullable=False, default="pending")
    # One entry per candidate: the prompt sent, the answer, latency, tokens, error.
    answers: Mapped[list[Any]] = mapped_column(JSON, nullable=False, default=list)
    # One entry per judge call: raw output, parsed verdict, latency, tokens, error.
    judgments: Mapped[list[Any]] = mapped_column(JSON, nullable=False, default=list)
    # The row's verdict once the judge calls are read (pairwise: the swap rule applied).
    verdict: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # Per candidate: reference metric -> value.
    metrics: Mapped[list[Any]] = mapped_column(JSON, nullable=False, default=list)
    # Two candidates: identical answers and token overlap.
    agreement: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class KnowledgeBase(Base):
    """Documents, chunked and embedded for retrieval. Its index settings live in its index
    versions, never on the base itself: a change builds a new version."""

    __tablename__ = "knowledge_bases"
    __table_args__ = (UniqueConstraint("project_id", "name"),)

    id: Mapped[str] = id_column()
    project_id: Mapped[str] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(200), nullable=False)
    description: Mapped[str] = mapped_column(Text, nullable=False, default="")
    created_by: Mapped[str | None] = mapped_column(String(36))
    created_at: Mapped[datetime] = created_column()
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)


class KnowledgeIndex(Base):
    """One version of a knowledge base's index: one embedding model, one chunking. Built by
    jobs, searched once active; a new version replaces it only when complete."""

    __tablename__ = "knowledge_indexes"
    __table_args__ = (UniqueConstraint("knowledge_base_id", "version"),)

    id: Mapped[str] = id_column()
    knowledge_base_id: Mapped[str] = mapped_column(
        ForeignKey("knowledge_bases.id", ondelete="CASCADE"), index=True
    )
    version: Mapped[int] = mapped_column(Integer, nullable=False)
    # The embedding model as a canonical reference (`base:<id>`, `third-party:<id>`), and its
    # name when the version was made (the model may be renamed or deleted later).
    embedding_model: Mapped[str] = mapped_column(String(250), nullable=False)
    embedding_name: Mapped[str] = mapped_column(String(200), nullable=False)
    # Set by the first vectors written; every later write must match.
    dimensions: Mapped[int | None] = mapped_column(Integer)
    chunking: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False, default=dict)
    # building (a reindex is filling it), active (searched), failed (its build failed).
    state: Mapped[str] = mapped_column(String(16), nullable=False, default="building")
    error: Mapped[str | None] = mapped_column(Text)
    job_id: Mapped[str | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = created_column()
    activated_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class KnowledgeDocument(Base):
    """An uploaded document of a knowledge base: its file, and its text once converted."""

    __tablename__ = "knowledge_documents"
    __table_args__ = (UniqueConstraint("knowledge_base_id", "digest"),)

    id: Mapped[str] = id_column()
    knowledge_base_id: Mapped[str] = mapped_column(
        ForeignKey("knowledge_bases.id", ondelete="CASCADE"), index=True
    )
    filename: Mapped[str] = mapped_column(String(255), nullable=False)
    digest: Mapped[str] = mapped_column(String(64), nullable=False)  # sha256 of the file
    size_bytes: Mapped[int] = mapped_column(BigInteger, nullable=False)
    media_type: Mapped[str | None] = mapped_column(String(100))
    # queued, ingesting, ready, failed.
    status: Mapped[str] = mapped_column(String(16), nullable=False, default="queued")
    error: Mapped[str | None] = mapped_column(Text)
    # Page (sheet, slide) spans of the converted text: [{number, label, start, end}].
    pages: Mapped[list[Any]] = mapped_column(JSON, nullable=False, default=list)
    char_count: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    job_id: Mapped[str | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"))
    created_by: Mapped[str | None] = mapped_column(String(36))
    created_at: Mapped[datetime] = created_column()


class KnowledgeIndexDocument(Base):
    """A document's membership of an index version: claimed by the job that embeds it there
    (so two jobs never embed the same document twice), ready once its chunks are stored."""

    __tablename__ = "knowledge_index_documents"

    index_id: Mapped[str] = mapped_column(
        ForeignKey("knowledge_indexes.id", ondelete="CASCADE"), primary_key=True
    )
    document_id: Mapped[str] = mapped_column(
        ForeignKey("knowledge_documents.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    # building (a job is embedding it), ready.
    state: Mapped[str] = mapped_column(String(16), nullable=False, default="building")
    job_id: Mapped[str | None] = mapped_column(String(36))
    chunk_count: Mapped[int] = mapped_column(Integer, nullable=False, default=0)


class KnowledgeChunk(Base):
    """One passage of a document in one index version: the exact span of the document's text
    it covers, for citations. Its vector lives in the index folder under the same id."""

    __tablename__ = "knowledge_chunks"

    id: Mapped[str] = id_column()
    index_id: Mapped[str] = mapped_column(
        ForeignKey("knowledge_indexes.id", ondelete="CASCADE"), index=True
    )
    document_id: Mapped[str] = mapped_column(
        ForeignKey("knowledge_documents.id", ondelete="CASCADE"), index=True
    )
    ordinal: Mapped[int] = mapped_column(Integer, nullable=False)
    start: Mapped[int] = mapped_column(Integer, nullable=False)
    end: Mapped[int] = mapped_column(Integer, nullable=False)
    page: Mapped[int] = mapped_column(Integer, nullable=False)
    page_label: Mapped[str] = mapped_column(String(100), nullable=False)
    heading: Mapped[str | None] = mapped_column(Text)
    text: Mapped[str] = mapped_column(Text, nullable=False)


class ImageModel(Base):
    """A registered diffusion pipeline: a diffusers folder or a single checkpoint file, read
    where it is (Tuneyard never moves or deletes it)."""

    __tablename__ = "image_models"
    __table_args__ = (UniqueConstraint("project_id", "name"),)

    id: Mapped[str] = id_column()
    project_id: Mapped[str] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(200), nullable=False)
    source: Mapped[str] = mapped_column(String(16), nullable=False)  # folder, single_file
    path: Mapped[str] = mapped_column(Text, nullable=False)
    pipeline_class: Mapped[str] = mapped_column(String(100), nullable=False)
    # Pipeline family, native size, size multiple, parameter count, dtype, size on disk.
    card: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False, default=dict)
    created_by: Mapped[str | None] = mapped_column(String(36))
    created_at: Mapped[datetime] = created_column()


class ImageAdapter(Base):
    """An image LoRA (diffusers or kohya safetensors) of one image model, uploaded or trained
    here; its file is kept in the data dir."""

    __tablename__ = "image_adapters"
    __table_args__ = (UniqueConstraint("image_model_id", "name"),)

    id: Mapped[str] = id_column()
    project_id: Mapped[str] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), index=True
    )
    image_model_id: Mapped[str] = mapped_column(
        ForeignKey("image_models.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(200), nullable=False)
    digest: Mapped[str] = mapped_column(String(64), nullable=False)
    size_bytes: Mapped[int] = mapped_column(BigInteger, nullable=False)
    # What a trained adapter is (base model, method, parameters, final loss, training job);
    # None for an uploaded one.
    card: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_by: Mapped[str | None] = mapped_column(String(36))
    created_at: Mapped[datetime] = created_column()


class GeneratedImage(Base):
    """One generated PNG and the full recipe that reproduces it."""

    __tablename__ = "generated_images"

    id: Mapped[str] = id_column()
    project_id: Mapped[str] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), index=True
    )
    # The model may be deleted later; the recipe keeps its id and name.
    image_model_id: Mapped[str | None] = mapped_column(
        ForeignKey("image_models.id", ondelete="SET NULL"), index=True
    )
    job_id: Mapped[str | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"))
    recipe: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)
    width: Mapped[int] = mapped_column(Integer, nullable=False)
    height: Mapped[int] = mapped_column(Integer, nullable=False)
    digest: Mapped[str] = mapped_column(String(64), nullable=False)  # sha256 of the PNG
    size_bytes: Mapped[int] = mapped_column(BigInteger, nullable=False)
    created_by: Mapped[str | None] = mapped_column(String(36))
    created_at: Mapped[datetime] = created_column()
