"""Settings, read from the environment (prefix TUNEYARD_) and an optional .env file."""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path

from pydantic import Field, field_validator, model_validator
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
