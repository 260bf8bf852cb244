"""Embedding models: text to unit vectors, by a local sentence-transformers folder or by an
OpenAI-compatible `/v1/embeddings` endpoint (what Ollama, vLLM and hosted providers offer).

Every embedder gives float32 rows of L2 norm 1, so a dot product is the cosine similarity, and
says how many tokens it embeds fully (`max_tokens`) and how many a text has (`count_tokens`),
so the chunker cuts chunks the model reads whole.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Protocol

import numpy
from sqlalchemy.orm import Session

from tuneyard import modelref
from tuneyard.auth.service import Principal
from tuneyard.errors import AppError, Conflict, Invalid, Unavailable
from tuneyard.knowledge.chunking import approx_tokens
from tuneyard.knowledge.endpoint import bearer_client, with_retries
from tuneyard.modelref import Capability, ModelKind
from tuneyard.storage import Layout

# Texts a local model embeds at once. Measured here (2 cores, all-MiniLM-L6-v2, 256-token
# chunks): see benchmarks/knowledge.py.
BATCH_SIZE = 64
# Loaded local models kept per process, least recently used dropped first.
CACHED_MODELS = 2
MAX_TEXTS_PER_CALL = 20_000
# Inputs an endpoint gets per request (OpenAI accepts 2048; local servers tire sooner).
ENDPOINT_BATCH = 64
ENDPOINT_TIMEOUT_SECONDS = 120.0
ENDPOINT_RETRIES = 4
BACKOFF_SECONDS = 0.5
BACKOFF_MAX_SECONDS = 30.0
# What an endpoint embeds fully when nothing says otherwise (most embedding models read 512).
ENDPOINT_MAX_TOKENS = 512
PROBE_TEXT = "Tuneyard measures the dimensions of this model."


class Embedder(Protocol):
    name: str  # what the index records: the model's canonical `kind:id` from embedder_for
    max_tokens: int  # the longest input, in count_tokens' tokens, that it embeds whole

    @property
    def dimensions(self) -> int: ...

    def count_tokens(self, text: str) -> int: ...

    def embed(self, texts: list[str]) -> numpy.ndarray: ...


def _check_texts(texts: list[str]) -> list[str]:
    if not isinstance(texts, list | tuple):
        raise Invalid("Embed a list of texts.")
    if len(texts) > MAX_TEXTS_PER_CALL:
        raise Invalid(f"Embed at most {MAX_TEXTS_PER_CALL} texts at once; got {len(texts)}.")
    for text in texts:
        if not isinstance(text, str):
            raise Invalid(f"Only text can be embedded; got {type(text).__name__}.")
    return list(texts)


def normalized(vectors: numpy.ndarray, source: str) -> numpy.ndarray:
    """`vectors` as float32 rows of length 1; Unavailable naming `source` when one cannot be."""
    array = numpy.asarray(vectors, dtype=numpy.float32)
    if not numpy.isfinite(array).all():
        raise Unavailable(f"{source} returned a vector with NaN or infinite numbers.")
    norms = numpy.linalg.norm(array, axis=1, keepdims=True)
    if (norms == 0).any():
        raise Unavailable(f"{source} returned an all-zero vector.")
    return array / norms


# -- local sentence-transformers models -----------------------------------------------------

_models: OrderedDict[str, Any] = OrderedDict()
_models_lock = threading.Lock()


def _load(folder: Path) -> tuple[Any, threading.Lock]:
    """The loaded model of `folder` and the lock its users take, from the per-process cache."""
    key = str(folder)
    with _models_lock:
        if key in _models:
            _models.move_to_end(key)
            return _models[key]
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError:
            raise Unavailable(
                "Local embedding models need sentence-transformers: pip install 'tuneyard[embed]'."
            ) from None
        try:
            # The folder is all there is: local_files_only never asks a hub for a file it lacks
            # (and leaves the process-wide HF_HUB_OFFLINE to the operator).
            model = SentenceTransformer(key, device="cpu", local_files_only=True)
        except (OSError, ValueError) as exc:
            raise Invalid(
                f"{folder} is not a sentence-transformers model folder it can load: {exc}"
            ) from None
        model.eval()
        _models[key] = (model, threading.Lock())
        while len(_models) > CACHED_MODELS:
            _models.popitem(last=False)
        return _models[key]


class LocalEmbedder:
    """A sentence-transformers model folder, run on the CPU in this process."""

    def __init__(self, path: Path, name: str | None = None):
        self.path = Path(path).resolve()
        if not (self.path / "config.json").is_file():
            raise Invalid(f"{self.path} is not a model folder: it has no config.json.")
        self._model, self._lock = _load(self.path)
        self.name = name or self.path.name
        self.dimensions = int(self._model.get_embedding_dimension())
        tokenizer = self._model.tokenizer
        backend = getattr(tokenizer, "backend_tokenizer", None)
        # A copy that counts: the model's own pads and truncates (to 128 for MiniLM) when a batch
        # is encoded, and a padded count would make every piece look full.
        self._fast = None
        if backend is not None:
            from tokenizers import Tokenizer

            self._fast = Tokenizer.from_str(backend.to_str())
            self._fast.no_padding()
            self._fast.no_truncation()
        # The model reads max_seq_length tokens, its own markers ([CLS], [SEP]) among them.
        specials = tokenizer.num_special_tokens_to_add(pair=False)
        self.max_tokens = int(self._model.max_seq_length) - specials
        # A token is at most this many characters (WordPiece's longest word), so cutting a
        # text here never changes what the model reads, and a huge text costs no more.
        self._max_chars = (self.max_tokens + specials) * 100

    def count_tokens(self, text: str) -> int:
        with self._lock:
            if self._fast is not None:
                # The Rust tokenizer itself: no warning for a text longer than the model reads.
                return len(self._fast.encode(text, add_special_tokens=False).ids)
            return len(self._model.tokenizer.encode(text, add_special_tokens=False, verbose=False))

    def embed(self, texts: list[str]) -> numpy.ndarray:
        texts = [text[: self._max_chars] for text in _check_texts(texts)]
        if not texts:
            return numpy.zeros((0, self.dimensions), dtype=numpy.float32)
        # One caller at a time: a fast tokenizer shared by threads fails ("Already borrowed"),
        # and two batches at once on these cores are no faster than one after the other.
        with self._lock:
            vectors = self._model.encode(
                texts,
                batch_size=BATCH_SIZE,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        return normalized(vectors, f"The embedding model {self.name}")


# -- OpenAI-compatible endpoints ------------------------------------------------------------


class EndpointEmbedder:
    """An OpenAI-compatible embeddings endpoint: POST {base_url}/embeddings."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        model_name: str,
        name: str | None = None,
        max_tokens: int = ENDPOINT_MAX_TOKENS,
        timeout: float = ENDPOINT_TIMEOUT_SECONDS,
    ):
        from tuneyard.outbound import url_problem

        problem = url_problem(base_url)
        if problem:
            raise Invalid(f"The embedding endpoint {base_url!r} cannot be called: {problem}.")
        # Stored base URLs already end where the API's paths begin (often /v1, not always).
        self.base_url = base_url.rstrip("/")
        self.url = f"{self.base_url}/embeddings"
        self.model_name = model_name
        self.name = name or model_name
        self.max_tokens = max_tokens
        self._api_key = api_key
        self._timeout = timeout
        self._dimensions: int | None = None
        self._client: Any = None
        self._client_lock = threading.Lock()

    @property
    def dimensions(self) -> int:
        """The model's dimensions, from one probe embedding the first time they are asked."""
        if self._dimensions is None:
            self._dimensions = int(self._request([PROBE_TEXT]).shape[1])
        return self._dimensions

    def count_tokens(self, text: str) -> int:
        return approx_tokens(text)

    def embed(self, texts: list[str]) -> numpy.ndarray:
        texts = _check_texts(texts)
        if not texts:
            return numpy.zeros((0, self.dimensions), dtype=numpy.float32)
        parts = [
            self._request(texts[start : start + ENDPOINT_BATCH])
            for start in range(0, len(texts), ENDPOINT_BATCH)
        ]
        return numpy.concatenate(parts)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def _http(self):
        with self._client_lock:
            if self._client is None:
                self._client = bearer_client(self._timeout, self._api_key)
            return self._client

    def _request(self, texts: list[str]) -> numpy.ndarray:
        """The vectors of one batch, retried while the endpoint answers 429 or 5xx."""
        return with_retries(
            lambda: self._request_once(texts),
            ENDPOINT_RETRIES,
            BACKOFF_SECONDS,
            BACKOFF_MAX_SECONDS,
        )

    def _request_once(self, texts: list[str]) -> numpy.ndarray:
        import httpx

        from tuneyard.chat.backends import EndpointFailed, _error_text, _retry_after

        # OpenAI refuses an empty string; a space embeds as the same nothing.
        body = {"model": self.model_name, "input": [text or " " for text in texts]}
        try:
            response = self._http().post(self.url, json=body)
        except httpx.TimeoutException:
            raise Unavailable(
                f"The embedding endpoint {self.url} did not answer within {self._timeout:g} s: "
                "the server is busy or hung; try again later."
            ) from None
        except httpx.TransportError as exc:
            raise Unavailable(
                f"Cannot reach the embedding endpoint {self.url}: {exc}. Check that the server "
                "runs and that the base URL is right."
            ) from None
        status = response.status_code
        if status >= 400:
            words = self._without_key(_error_text(response))
            if status in (401, 403):
                raise Unavailable(
                    f"The embedding endpoint {self.url} refused the API key ({status}); "
                    "update the model's key."
                )
            message = f"The embedding endpoint {self.url} failed ({status}): {words}"
            if status == 429 or status >= 500:
                raise EndpointFailed(message, status, _retry_after(response))
            raise Invalid(
                f"The embedding endpoint {self.url} refused the request ({status}) "
                f"for model {self.model_name}: {words}"
            )
        return self._vectors(response, len(texts))

    def _vectors(self, response, count: int) -> numpy.ndarray:
        where = f"The embedding endpoint {self.url}"
        try:
            items = response.json()["data"]
            if not isinstance(items, list):
                raise TypeError("data is not a list")
            if all(isinstance(item.get("index"), int) for item in items):
                items = sorted(items, key=lambda item: item["index"])
            rows = [item["embedding"] for item in items]
        except (ValueError, KeyError, TypeError, AttributeError):
            raise Unavailable(
                f"{where} answered, but not with embeddings: check that it is "
                f"OpenAI-compatible and that {self.model_name} is an embedding model."
            ) from None
        if len(rows) != count:
            raise Unavailable(f"{where} returned {len(rows)} vectors for {count} texts.")
        sizes = {len(row) if isinstance(row, list) else -1 for row in rows}
        if len(sizes) != 1 or -1 in sizes or 0 in sizes:
            raise Unavailable(f"{where} returned vectors of different or no dimensions.")
        size = sizes.pop()
        if self._dimensions is not None and size != self._dimensions:
            raise Unavailable(
                f"{where} returned {size}-dimensional vectors; {self.model_name} gave "
                f"{self._dimensions} before. Was the model behind it changed?"
            )
        try:
            with numpy.errstate(over="ignore"):  # a number too big for float32: infinite
                array = numpy.array(rows, dtype=numpy.float32)
        except (ValueError, TypeError):
            raise Unavailable(f"{where} returned a vector that is not all numbers.") from None
        return normalized(array, where)

    def _without_key(self, text: str) -> str:
        # A server may echo what it was sent; the key must not reach the user through it.
        return text.replace(self._api_key, "***") if self._api_key else text


# -- from a model reference -----------------------------------------------------------------


def embedder_name(session: Session, principal: Principal, model_ref: str) -> str:
    """The canonical `kind:id` of the embedding model `model_ref` names, as an index records
    it (a name may be reused later; the id never is)."""
    return str(modelref.resolve(session, principal, model_ref, Capability.EMBED).ref)


def embedder_for(session: Session, principal: Principal, model_ref: str) -> Embedder:
    """The embedder of the model `model_ref` names: a base model of type embedding (its folder,
    loaded here) or a third-party embedding entry (its endpoint)."""
    found = modelref.resolve(session, principal, model_ref, Capability.EMBED)
    row, ref = found.row, str(found.ref)
    if found.kind is ModelKind.BASE:
        if row.status != "ready":
            raise Conflict(f"Base model '{row.technical_name}' is {row.status}; it cannot embed.")
        # Where this process finds the recorded folder (a job on a cluster node has a copy).
        folder = Layout().local(row.path) if row.path else None
        if folder is None or not folder.is_dir():
            raise Conflict(
                f"The folder of base model '{row.technical_name}' ({row.path}) is gone; "
                "register the model again."
            )
        return LocalEmbedder(folder, name=ref)
    if found.kind is ModelKind.THIRD_PARTY:
        from tuneyard.thirdparty.service import third_party_api_key

        return EndpointEmbedder(
            row.base_url, third_party_api_key(session, row), row.model_name, name=ref
        )
    raise AppError(f"{found.describe()} cannot embed text.")  # modelref allows no other kind
