"""Whether the reranker settings can work: checked when the settings load, so this module
depends on nothing of Tuneyard's but its outbound URL rules (the settings import it)."""

from __future__ import annotations

import json
from pathlib import Path

CONFIG_MAX_BYTES = 1_000_000  # a model's config.json, read to tell a cross-encoder


def is_url(value: str) -> bool:
    return value.lower().startswith(("http://", "https://"))


def cross_encoder_problem(folder: Path) -> str | None:
    """Why `folder` cannot be a cross-encoder model folder, or None."""
    if not folder.is_dir():
        return f"{folder} is not a folder on this server"
    config = folder / "config.json"
    if not config.is_file():
        return f"{folder} is not a model folder: it has no config.json"
    try:
        if config.stat().st_size > CONFIG_MAX_BYTES:
            raise ValueError("too large")
        architectures = json.loads(config.read_text(encoding="utf-8")).get("architectures")
    except (OSError, ValueError, AttributeError):
        return f"{config} cannot be read as a model's JSON configuration"
    names = [str(name) for name in architectures] if isinstance(architectures, list) else []
    if names and not any(name.endswith("ForSequenceClassification") for name in names):
        return (
            f"{folder} holds a {', '.join(names)}, not a cross-encoder (a sequence "
            "classification model that scores a query and a passage together)"
        )
    return None


def reranker_setting_problem(
    reranker: str | None, model: str | None, api_key: str | None
) -> str | None:
    """Why the reranker settings cannot work, saying which variable to change; None if they can."""
    from tuneyard.outbound import api_key_problem, url_problem

    if reranker is None:
        if model is not None or api_key is not None:
            return (
                "TUNEYARD_RERANKER_MODEL and TUNEYARD_RERANKER_API_KEY go with a rerank endpoint; "
                "set TUNEYARD_RERANKER to its URL, or unset them."
            )
        return None
    if is_url(reranker):
        problem = url_problem(reranker)
        if problem:
            return f"TUNEYARD_RERANKER {reranker!r} cannot be called: {problem}."
        if not model:
            return (
                "TUNEYARD_RERANKER is a rerank endpoint; set TUNEYARD_RERANKER_MODEL to the "
                "model it should rerank with (e.g. rerank-v3.5, BAAI/bge-reranker-v2-m3)."
            )
        if api_key is not None:
            problem = api_key_problem(api_key)
            if problem:
                return f"TUNEYARD_RERANKER_API_KEY cannot be sent: {problem}."
        return None
    if "://" in reranker:
        return (
            f"TUNEYARD_RERANKER {reranker!r} is neither an http(s) URL of a rerank endpoint nor "
            "a folder on this server."
        )
    if model is not None or api_key is not None:
        return (
            "TUNEYARD_RERANKER is a model folder, which has no model name or API key: unset "
            "TUNEYARD_RERANKER_MODEL and TUNEYARD_RERANKER_API_KEY."
        )
    problem = cross_encoder_problem(Path(reranker).expanduser())
    if problem:
        return f"TUNEYARD_RERANKER cannot be used: {problem}."
    return None
