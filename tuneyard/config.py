"""Settings, read from the environment (prefix TUNEYARD_) and an optional .env file."""

from __future__ import annotations

import hashlib
import importlib.util
import json
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

TRAINING_PACKAGES = ("torch", "transformers", "peft", "trl")


class Settings(BaseSettings):
    # An error names the variable, never echoes the values: they hold API keys and passwords.
    model_config = SettingsConfigDict(
        env_prefix="TUNEYARD_", env_file=".env", extra="ignore", hide_input_in_errors=True
    )

    data_dir: Path = Field(
        Path("./tuneyard-data"), description="Where models, datasets, logs live."
    )
    database_url: str | None = Field(
        None, description="SQLAlchemy URL; default is SQLite in the data dir."
    )
    auto_migrate: bool = Field(
        False,
        description="Let `tuneyard serve` and `tuneyard worker` migrate a PostgreSQL database "
        "whose schema is behind the code; without it they refuse and name `tuneyard db "
        "upgrade`. SQLite databases are always migrated on start.",
    )
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    job_concurrency: int = Field(1, ge=1, le=64, description="Jobs run at once by one worker.")
    training_enabled: bool = Field(True, description="False runs in training-free mode.")
    job_heartbeat_seconds: float = Field(2.0, gt=0)
    job_stale_after_seconds: float = Field(
        30.0, gt=0, description="A running job whose heartbeat is older is taken as dead."
    )
    job_cancel_grace_seconds: float = Field(10.0, ge=0)
    executor: Literal["local", "ray"] = Field(
        "local",
        description="Where jobs run: 'local' (a process per job on the worker's machine) or "
        "'ray' (a Ray actor per job on the cluster at ray_address; needs the cluster extra).",
    )
    ray_address: str = Field(
        "auto",
        description="The Ray cluster of the ray executor: 'auto' (the cluster this machine "
        "belongs to), 'host:port' of its head (GCS), or 'ray://host:10001' (Ray Client).",
    )
    artifact_store: str = Field(
        "",
        description="With the ray executor: an fsspec URL (s3://bucket/prefix, or file:///path "
        "for a mount) through which jobs' files travel between the API's data dir and the "
        "cluster's nodes, which then share no disk with it; empty: the nodes see the data dir "
        "at the same path.",
    )
    artifact_store_options: SecretStr = Field(
        SecretStr("{}"),
        description="JSON object of the artifact store's fsspec options (endpoint_url, key, "
        "secret, ...); a secret, never shown.",
    )
    node_data_dir: Path | None = Field(
        None,
        description="The data dir a job uses on a cluster node when an artifact store is set; "
        "default /tmp/tuneyard-node-<hash of the store URL>.",
    )
    api_data_dir: Path | None = Field(
        None,
        description="Set by the ray executor for a job's process on a node with an artifact "
        "store: the API's data dir, which the paths kept in the database name.",
    )
    worker_stop_grace_seconds: float = Field(
        60.0,
        ge=0,
        description="On SIGTERM a worker (and `tuneyard serve`'s own) claims nothing more, and "
        "waits this long for its jobs to stop at a checkpoint (or finish) and go back to the "
        "queue before it exits; jobs still running then are left to the usual handling.",
    )
    server_stop_grace_seconds: int = Field(
        30, ge=0, description="On SIGTERM `tuneyard serve` waits this long for requests."
    )
    job_lost_resumes: int = Field(
        1,
        ge=0,
        description="Times a job that can resume (a training with a checkpoint) goes back to the "
        "queue after its worker or machine died; the next loss fails it.",
    )
    dataset_max_line_chars: int = Field(
        4000, ge=1, description="Longest accepted record: a JSONL line, a JSON array item."
    )
    dataset_max_file_bytes: int = Field(200 * 1024 * 1024, ge=1)
    knowledge_max_file_bytes: int = Field(
        100 * 1024 * 1024, ge=1, description="Largest document a knowledge base accepts."
    )
    dataset_max_records: int = Field(
        1_000_000, ge=1, description="Most records a dataset file may hold."
    )
    max_request_bytes: int = Field(
        16 * 1024 * 1024, ge=1, description="Largest API request body but an upload's."
    )
    dataset_max_errors: int = Field(20, ge=1, description="Errors reported for a failed parse.")
    hub_timeout_seconds: float = Field(5.0, gt=0)
    token_ttl_hours: int = Field(24 * 7, ge=1, description="Lifetime of a login token.")
    inference_memory_gb: float = Field(
        8.0, gt=0, description="Memory the inference process may fill with loaded models."
    )
    plugins: str = Field(
        "", description="Comma-separated modules imported at start; they register extensions."
    )
    model_roots: str = Field(
        "",
        description="Comma-separated folders that models may be registered or imported from "
        "by server path; empty means the data dir's import folder alone.",
    )
    assessment_local_concurrency: int = Field(
        1, ge=1, le=64, description="Calls an assessment makes at once to local models."
    )
    assessment_live_concurrency: int = Field(
        4, ge=1, le=64, description="Calls an assessment makes at once to each live server."
    )
    assessment_remote_concurrency: int = Field(
        8,
        ge=1,
        le=64,
        description="Calls an assessment makes at once to each third-party endpoint.",
    )
    assessment_retries: int = Field(
        4, ge=0, le=10, description="Retries of a model call answered 429 or 5xx, with backoff."
    )
    deploy_fidelity_prompts: int = Field(
        16,
        ge=0,
        le=200,
        description="Prompts of the fidelity check each deploy runs on its new live model "
        "against its source; 0 turns the check off.",
    )
    allow_code_uploads: bool = Field(
        False,
        description="Let the operator upload Python (custom training methods, GRPO reward "
        "files), which runs as code on the machine that trains.",
    )
    image_adapter_max_file_bytes: int = Field(
        2 * 1024**3, ge=1, description="Largest image LoRA file an upload may be."
    )
    image_train_max_archive_bytes: int = Field(
        1024**3,
        ge=1,
        description="Largest zip archive of images and captions an image LoRA training takes.",
    )
    image_process_idle_seconds: float = Field(
        600.0,
        gt=0,
        description="The image process (which keeps the last pipeline loaded) ends after "
        "this long without work.",
    )
    image_gateway_timeout_seconds: float = Field(
        600.0,
        gt=0,
        description="How long the OpenAI-compatible /v1/images routes wait for their "
        "generation job before answering that it is still running.",
    )
    reranker: str | None = Field(
        None,
        description="What reorders knowledge-base search results after fusion: a cross-encoder "
        "model folder on the server, or the http(s) URL of a rerank endpoint (Cohere, Jina, "
        "vLLM, Infinity, llama.cpp); none by default.",
    )
    reranker_model: str | None = Field(
        None, description="The model name sent to the rerank endpoint."
    )
    reranker_api_key: str | None = Field(
        None, description="The bearer token the rerank endpoint wants, if any."
    )

    @property
    def plugin_modules(self) -> list[str]:
        return [name.strip() for name in self.plugins.split(",") if name.strip()]

    @property
    def import_dir(self) -> Path:
        """Where files go to be registered from a server path, when no roots are set."""
        return self.data_dir / "import"

    @property
    def model_root_paths(self) -> list[Path]:
        """The folders server paths of models must lie in, symlinks resolved."""
        given = [part.strip() for part in self.model_roots.split(",") if part.strip()]
        roots = [Path(part).expanduser() for part in given] or [self.import_dir]
        return [root.resolve() for root in roots]

    @field_validator("data_dir")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @field_validator("artifact_store")
    @classmethod
    def _store_url(cls, value: str) -> str:
        value = value.strip()
        if value and "://" not in value:
            raise ValueError(
                f"TUNEYARD_ARTIFACT_STORE '{value}' is not a URL: give one such as "
                "s3://bucket/prefix or file:///shared/path, or leave it empty."
            )
        return value.rstrip("/")

    @field_validator("artifact_store_options")
    @classmethod
    def _store_options(cls, value: SecretStr) -> SecretStr:
        try:
            parsed = json.loads(value.get_secret_value() or "{}")
        except ValueError:
            parsed = None
        if not isinstance(parsed, dict):
            raise ValueError(
                "TUNEYARD_ARTIFACT_STORE_OPTIONS must be a JSON object of fsspec options, such "
                'as {"endpoint_url": "http://minio:9000", "key": "...", "secret": "..."}.'
            )
        return value

    @property
    def store_options(self) -> dict:
        """The artifact store's fsspec options (credentials included: never log them)."""
        return json.loads(self.artifact_store_options.get_secret_value() or "{}")

    @property
    def node_data_path(self) -> Path:
        """Where a job's files live on a cluster node when an artifact store is set."""
        if self.node_data_dir is not None:
            return self.node_data_dir.expanduser()
        digest = hashlib.sha256(self.artifact_store.encode()).hexdigest()[:12]
        return Path("/tmp") / f"tuneyard-node-{digest}"

    @field_validator("reranker", "reranker_model", "reranker_api_key", mode="before")
    @classmethod
    def _blank_is_none(cls, value: object) -> object:
        if isinstance(value, str):
            return value.strip() or None
        return value

    @model_validator(mode="after")
    def _reranker_usable(self) -> Settings:
        from tuneyard.knowledge.rerank_settings import reranker_setting_problem

        problem = reranker_setting_problem(
            self.reranker, self.reranker_model, self.reranker_api_key
        )
        if problem:
            raise ValueError(problem)
        return self

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'tuneyard.db'}"

    @property
    def training_available(self) -> bool:
        """Training needs both the setting and the `train` extras installed."""
        return self.training_enabled and all(
            importlib.util.find_spec(name) is not None for name in TRAINING_PACKAGES
        )

    @property
    def mode(self) -> str:
        return "full" if self.training_available else "training-free"


@lru_cache
def get_settings() -> Settings:
    return Settings()


def reset_settings() -> None:
    """Forget cached settings (tests change the environment between cases)."""
    get_settings.cache_clear()
