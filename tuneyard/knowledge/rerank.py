"""Reranking search results: after fusion, a cross-encoder reads the query beside each candidate
passage and scores how well it answers, which orders passages better than vector similarity or
BM25 alone. The server's settings name one reranker, or none (the default, and then search
orders by the fused score):

- a sentence-transformers CrossEncoder model folder on the server, run on the CPU here;
- the URL of a rerank endpoint in the shape Cohere, Jina, vLLM, Infinity and llama.cpp's server
  share: `POST {url}` with `{"model", "query", "documents", "top_n"}`, answered with
  `{"results": [{"index", "relevance_score"}, ...]}`.

A reranker that fails is an error naming it, never a silent fallback to the fused order: a user
who configured one must know when results come without it.
"""

from __future__ import annotations

import math
import threading
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

from tuneyard.errors import Invalid, Unavailable
from tuneyard.knowledge.endpoint import bearer_client, with_retries
from tuneyard.knowledge.rerank_settings import cross_encoder_problem, is_url

# Passages one call reranks at most: search asks for 3 * top_k, top_k is at most 50.
MAX_TEXTS = 200
# Characters of a passage or query a reranker is given: far more than the 512 tokens a
# cross-encoder reads, so nothing it would read is cut, and a huge text costs no more.
MAX_CHARS = 20_000
BATCH_SIZE = 32
# A search waits for the endpoint: shorter limits than a background embedding job's.
ENDPOINT_TIMEOUT_SECONDS = 30.0
ENDPOINT_RETRIES = 2
BACKOFF_SECONDS = 0.5
BACKOFF_MAX_SECONDS = 5.0


class Reranker(Protocol):
    name: str  # what search results say ordered them: the folder's or the model's name

    def rerank(self, query: str, texts: list[str]) -> list[float]:
        """One relevance score per text, in the texts' order; higher is more relevant."""
        ...


def _check(query: str, texts: list[str]) -> tuple[str, list[str]]:
    if len(texts) > MAX_TEXTS:
        raise Invalid(f"Rerank at most {MAX_TEXTS} passages at once; got {len(texts)}.")
    return query[:MAX_CHARS], [text[:MAX_CHARS] for text in texts]


def _finite(scores: list[Any], count: int, name: str) -> list[float]:
    if len(scores) != count:
        raise Unavailable(f"The reranker {name} returned {len(scores)} scores for {count} texts.")
    try:
        values = [float(score) for score in scores]
    except (TypeError, ValueError):
        raise Unavailable(f"The reranker {name} returned a score that is not a number.") from None
    if not all(math.isfinite(value) for value in values):
        raise Unavailable(f"The reranker {name} returned a NaN or infinite score.")
    return values


# -- a local cross-encoder ------------------------------------------------------------------


class CrossEncoderReranker:
    """A sentence-transformers CrossEncoder folder, loaded once and run on the CPU here."""

    def __init__(self, folder: Path):
        self.folder = Path(folder).expanduser().resolve()
        self.name = self.folder.name
        self._model: Any = None
        # One caller at a time: a fast tokenizer shared by threads fails ("Already borrowed").
        self._lock = threading.Lock()

    def _loaded(self) -> Any:
        if self._model is None:
            problem = cross_encoder_problem(self.folder)
            if problem:
                raise Unavailable(f"The reranker cannot be loaded: {problem}.")
            try:
                from sentence_transformers import CrossEncoder
            except ImportError:
                raise Unavailable(
                    "A cross-encoder reranker needs sentence-transformers: "
                    "pip install 'tuneyard[embed]'."
                ) from None
            try:
                # The folder is all there is: local_files_only never asks a hub for a file it lacks
                # (and leaves the process-wide HF_HUB_OFFLINE to the operator).
                model = CrossEncoder(str(self.folder), device="cpu", local_files_only=True)
            except (OSError, ValueError) as exc:
                raise Unavailable(
                    f"The reranker {self.folder} is not a cross-encoder folder it can load: {exc}"
                ) from None
            model.eval()
            self._model = model
        return self._model

    def rerank(self, query: str, texts: list[str]) -> list[float]:
        query, texts = _check(query, texts)
        if not texts:
            return []
        with self._lock:
            model = self._loaded()
            try:
                scores = model.predict(
                    [(query, text) for text in texts],
                    batch_size=BATCH_SIZE,
                    show_progress_bar=False,
                    convert_to_numpy=True,
                )
            except (RuntimeError, ValueError) as exc:
                raise Unavailable(f"The reranker {self.folder} failed: {exc}") from None
        # One label: one score per pair; a model with more labels is not a relevance scorer.
        if getattr(scores, "ndim", 1) != 1:
            raise Unavailable(
                f"The reranker {self.folder} gives {scores.shape[-1]} scores per passage; a "
                "reranker gives one (a cross-encoder with num_labels=1)."
            )
        return _finite(scores.tolist(), len(texts), str(self.folder))


# -- a rerank endpoint ----------------------------------------------------------------------


class EndpointReranker:
    """A rerank endpoint: POST {url} with the query and documents, relevance scores back."""

    def __init__(
        self,
        url: str,
        model_name: str,
        api_key: str | None = None,
        timeout: float = ENDPOINT_TIMEOUT_SECONDS,
    ):
        from tuneyard.outbound import url_problem

        problem = url_problem(url)
        if problem:
            raise Invalid(f"The rerank endpoint {url!r} cannot be called: {problem}.")
        self.url = url
        self.model_name = model_name
        # Not the URL: a search result shows it to every viewer.
        self.name = model_name
        self._api_key = api_key
        self._timeout = timeout
        self._client: Any = None
        self._client_lock = threading.Lock()

    def rerank(self, query: str, texts: list[str]) -> list[float]:
        query, texts = _check(query, texts)
        if not texts:
            return []
        return with_retries(
            lambda: self._request(query, texts),
            ENDPOINT_RETRIES,
            BACKOFF_SECONDS,
            BACKOFF_MAX_SECONDS,
        )

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def _http(self) -> Any:
        with self._client_lock:
            if self._client is None:
                self._client = bearer_client(self._timeout, self._api_key)
            return self._client

    def _request(self, query: str, texts: list[str]) -> list[float]:
        import httpx

        from tuneyard.chat.backends import EndpointFailed, _error_text, _retry_after

        body = {"model": self.model_name, "query": query, "documents": texts, "top_n": len(texts)}
        try:
            response = self._http().post(self.url, json=body)
        except httpx.TimeoutException:
            raise Unavailable(
                f"The rerank endpoint {self.url} did not answer within {self._timeout:g} s: the "
                "server is busy or hung; try again later, or search with rerank off."
            ) from None
        except httpx.TransportError as exc:
            raise Unavailable(
                f"Cannot reach the rerank endpoint {self.url}: {exc}. Check that the server runs "
                "and that TUNEYARD_RERANKER is right, or search with rerank off."
            ) from None
        status = response.status_code
        if status >= 400:
            words = self._without_key(_error_text(response))[:500]
            if status in (401, 403):
                raise Unavailable(
                    f"The rerank endpoint {self.url} refused the API key ({status}); check "
                    "TUNEYARD_RERANKER_API_KEY."
                )
            message = f"The rerank endpoint {self.url} failed ({status}): {words}"
            if status == 429 or status >= 500:
                raise EndpointFailed(message, status, _retry_after(response))
            raise Unavailable(
                f"The rerank endpoint {self.url} refused the request ({status}) for model "
                f"{self.model_name}: {words}"
            )
        return self._scores(response, len(texts))

    def _scores(self, response: Any, count: int) -> list[float]:
        where = f"The rerank endpoint {self.url}"
        scores: list[Any] = [None] * count
        try:
            results = response.json()["results"]
            if not isinstance(results, list):
                raise TypeError("results is not a list")
            for result in results:
                index = result["index"]
                if not isinstance(index, int) or isinstance(index, bool):
                    raise TypeError("index is not a number")
                if not 0 <= index < count or scores[index] is not None:
                    raise Unavailable(
                        f"{where} returned a result for document {index}; it was sent {count}, "
                        "each scored once."
                    )
                scores[index] = result["relevance_score"]
        except (ValueError, KeyError, TypeError, AttributeError):
            raise Unavailable(
                f"{where} answered, but not with rerank results "
                '({"results": [{"index", "relevance_score"}]}): check that it is a rerank '
                f"endpoint and that {self.model_name} is a reranking model."
            ) from None
        missing = sum(score is None for score in scores)
        if missing:
            raise Unavailable(f"{where} scored {count - missing} of the {count} documents sent.")
        return _finite(scores, count, self.url)

    def _without_key(self, text: str) -> str:
        # A server may echo what it was sent; the key must not reach the user through it.
        return text.replace(self._api_key, "***") if self._api_key else text


# -- the configured one ---------------------------------------------------------------------


@lru_cache(maxsize=2)
def _built(setting: str, model_name: str | None, api_key: str | None) -> Reranker:
    if is_url(setting):
        return EndpointReranker(setting, model_name or "", api_key)
    return CrossEncoderReranker(Path(setting))


def reranker() -> Reranker | None:
    """The reranker the settings name (one per process: a model folder loads once), or None."""
    from tuneyard.config import get_settings

    settings = get_settings()
    if settings.reranker is None:
        return None
    return _built(settings.reranker, settings.reranker_model, settings.reranker_api_key)
