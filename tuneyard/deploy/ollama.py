"""Ollama's HTTP API for deploying: preflight rules, blob uploads, create, models and chat."""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from tuneyard.errors import AppError, Invalid, NotFound, Unavailable

# Ollama releases before this one fail to load a GGUF LoRA on the architectures its newer
# engine runs (the create succeeds; the first chat fails).
ADAPTER_LOAD_FIXED = (0, 24, 0)
NEW_ENGINE_ARCHITECTURES = frozenset({"qwen3", "gemma3", "mistral3", "llama4"})
# From this release Ollama renders the GGUF's own chat template (through llama.cpp) instead of
# the Go TEMPLATE when that template offers tools or thinking.
GGUF_TEMPLATE_RELEASE = (0, 30, 0)
# Ollama's words for what some releases refuse, and what to do about it. Matched on every
# failed create whatever the version said, since development builds report 0.0.0.
REFUSALS: tuple[tuple[str, str], ...] = (
    (
        "LoRA adapters are no longer supported",
        "This Ollama takes no LoRA adapters: save the customized model as a complete model "
        "and deploy that.",
    ),
    (
        "supplied file was not in GGUF format",
        "This Ollama imports GGUF only: deploy again with a current Tuneyard, which uploads "
        "GGUF, or save the customized model as a complete model and deploy that.",
    ),
    (
        "create-time quantization is only supported for safetensors imports",
        "This Ollama quantizes no GGUF: deploy again with a current Tuneyard, which quantizes "
        "before uploading.",
    ),
    (
        "unsupported architecture",
        "Ollama cannot import this architecture: deploy the model to a llama.cpp environment.",
    ),
)
VERSION_PATTERN = re.compile(r"v?(\d+)\.(\d+)(?:\.(\d+))?")
DIGEST_PATTERN = re.compile(r"sha256:[0-9a-f]{64}")
UPLOAD_CHUNK_BYTES = 1 << 20
# Progress is reported at most this often (as a fraction of all the work) while uploading,
# so a 15 GB upload does not make 30,000 progress calls.
PROGRESS_STEP = 0.005
RUNNING_TEXT = "Ollama is running"


class OllamaError(AppError):
    """A request Ollama answered with a failure; the message carries Ollama's own words."""

    status = 502

    def __init__(self, message: str, ollama_status: int | None = None):
        super().__init__(message)
        self.ollama_status = ollama_status


def file_sha256(
    path: Path, chunk_size: int = 1 << 20, progress: Callable[[int], None] | None = None
) -> str:
    """The digest Ollama names a blob by ("sha256:<hex>"), read in chunks, never whole."""
    digest = hashlib.sha256()
    done = 0
    with path.open("rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
            done += len(chunk)
            if progress is not None:
                progress(done)
    return f"sha256:{digest.hexdigest()}"


def parse_version(text: str) -> tuple[int, int, int] | None:
    """(major, minor, patch) of an Ollama version ("0.12.6", "v0.30.0-rc2"); None for a
    development build (0.0.0) or anything else, whose behaviour cannot be told from it."""
    found = VERSION_PATTERN.match(text.strip())
    if found is None:
        return None
    version = (int(found[1]), int(found[2]), int(found[3] or 0))
    return None if version == (0, 0, 0) else version


def adapter_merge_reason(version: tuple[int, int, int] | None, architecture: str) -> str | None:
    """None when Ollama `version` loads a GGUF LoRA on `architecture`; else why the adapter
    must be merged into its base and uploaded whole."""
    if version is None:
        return (
            "Ollama did not tell a release number, so whether it loads a LoRA adapter is "
            "unknown; a merged model loads on every release"
        )
    if version < ADAPTER_LOAD_FIXED and architecture in NEW_ENGINE_ARCHITECTURES:
        shown = ".".join(map(str, version))
        return (
            f"Ollama {shown} fails to load a LoRA adapter on {architecture} models (fixed in 0.24)"
        )
    return None


def with_advice(words: str) -> str:
    """Ollama's words, and what to do when they are a refusal Tuneyard knows."""
    for fragment, advice in REFUSALS:
        if fragment.lower() in words.lower():
            return f"{words}. {advice}"
    return f"{words}."


def redact_url(url: str) -> str:
    """The address without user, password, query or fragment: safe to show and to log."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def _file_chunks(path: Path, progress: Callable[[int], None] | None) -> Iterator[bytes]:
    sent = 0
    with path.open("rb") as handle:
        while chunk := handle.read(UPLOAD_CHUNK_BYTES):
            yield chunk
            sent += len(chunk)
            if progress is not None:
                progress(sent)


def _error_words(response: httpx.Response) -> str:
    """What Ollama said went wrong: its native {"error": "..."} or OpenAI {"error": {...}}."""
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:500] or response.reason_phrase
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        error = error.get("message")
    return str(error) if error else response.text.strip()[:500]


class OllamaClient:
    """One Ollama server: every failure becomes Unavailable, Invalid, NotFound or OllamaError.

    Short requests use `timeout`. Blob uploads, create (converting and quantizing a large
    model takes minutes without a byte of output) and chat (loading a model) wait
    `upload_timeout` for reads and writes, None meaning as long as it takes; connecting is
    still bounded by `timeout`.
    """

    def __init__(self, base_url: str, timeout: float = 10.0, upload_timeout: float | None = None):
        self.address = redact_url(base_url.rstrip("/"))
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise Invalid(
                f"{self.address!r} is not an Ollama address: give one like http://localhost:11434."
            )
        self.timeout = timeout
        self.long_timeout = httpx.Timeout(timeout, read=upload_timeout, write=upload_timeout)
        self._http = httpx.Client(base_url=base_url.rstrip("/"), timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> OllamaClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def ping(self) -> str:
        """Ollama's greeting; Unavailable when nothing answers or what answers is not Ollama."""
        response = self._send("GET", "/")
        text = response.text.strip()
        if response.status_code != 200 or RUNNING_TEXT not in text:
            raise Unavailable(
                f"{self.address} answered, but not as Ollama does (HTTP {response.status_code}: "
                f"{text[:80]!r}). Check the environment's address; Ollama listens on port "
                "11434 unless told otherwise."
            )
        return text

    def version(self) -> str:
        response = self._send("GET", "/api/version")
        return str(self._json(response, "tell its version")["version"])

    def has_blob(self, digest: str) -> bool:
        _check_digest(digest)
        response = self._send("HEAD", f"/api/blobs/{digest}")
        if response.status_code == 404:
            return False
        self._raise_for_status(response, f"look up blob {digest}")
        return True

    def push_blob(
        self, path: Path, digest: str, progress: Callable[[int], None] | None = None
    ) -> None:
        """Upload a file streamed from disk; `progress` gets the bytes sent so far."""
        _check_digest(digest)
        size = _file_size(path)
        response = self._send(
            "POST",
            f"/api/blobs/{digest}",
            content=_file_chunks(path, progress),
            headers={"Content-Length": str(size), "Content-Type": "application/octet-stream"},
            timeout=self.long_timeout,
        )
        if response.status_code not in (200, 201):
            raise OllamaError(
                f"Ollama at {self.address} refused {path.name}: {_error_words(response)}.",
                response.status_code,
            )

    def push_files(
        self, files: dict[str, Path], progress: Callable[[float, str], None] | None = None
    ) -> dict[str, str]:
        """Upload the files Ollama lacks; each name's digest, for create's files or adapters.

        Each file is read twice at most: once to hash it and once to upload it, and not
        at all for upload when Ollama already has its blob. `progress` gets the fraction
        of that reading done (hashing and uploading count alike) and what is happening.
        """
        sizes = {name: _file_size(path) for name, path in files.items()}
        reporter = _ProgressReporter(progress, 2 * sum(sizes.values()))
        digests: dict[str, str] = {}
        for name, path in files.items():
            digests[name] = file_sha256(
                path, progress=functools.partial(reporter.at, message=f"Hashing {name}")
            )
            reporter.advance(sizes[name], f"Hashed {name}")
        sent: set[str] = set()
        for name, path in files.items():
            digest = digests[name]
            if digest in sent or self.has_blob(digest):
                reporter.advance(sizes[name], f"Ollama already has {name}")
                continue
            self.push_blob(
                path, digest, functools.partial(reporter.at, message=f"Uploading {name}")
            )
            sent.add(digest)
            reporter.advance(sizes[name], f"Uploaded {name}")
        return digests

    def create(
        self,
        model: str,
        *,
        files: dict[str, str] | None = None,
        adapters: dict[str, str] | None = None,
        from_: str | None = None,
        template: str | None = None,
        system: str | None = None,
        parameters: dict | None = None,
        quantize: str | None = None,
        on_status: Callable[[dict], None] | None = None,
    ) -> None:
        """Create `model` and follow Ollama's streamed statuses until it says "success"."""
        fields = {
            "files": files,
            "adapters": adapters,
            "from": from_,
            "template": template,
            "system": system,
            "parameters": parameters,
            "quantize": quantize,
        }
        payload = {"model": model, "stream": True}
        payload.update({key: value for key, value in fields.items() if value is not None})
        last_status = None
        what = f"Ollama at {self.address} could not create {model!r}"
        try:
            with self._http.stream(
                "POST", "/api/create", json=payload, timeout=self.long_timeout
            ) as response:
                if response.status_code >= 400:
                    # Since 0.12.6 an error before any output is the answer's HTTP status.
                    response.read()
                    raise OllamaError(
                        f"{what}: {with_advice(_error_words(response))}", response.status_code
                    )
                for line in response.iter_lines():
                    event = _status_line(line, what)
                    if event is None:
                        continue
                    last_status = event.get("status")
                    if on_status is not None:
                        on_status(event)
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from None
        if last_status != "success":
            raise OllamaError(
                f"{what}: its answer ended without success (last status: {last_status!r})."
            )

    def delete(self, model: str) -> bool:
        """Remove `model` from Ollama; False when Ollama has no such model."""
        response = self._send("DELETE", "/api/delete", json={"model": model})
        if response.status_code == 404:
            return False
        self._raise_for_status(response, f"delete {model!r}")
        return True

    def list_models(self) -> list[dict]:
        response = self._send("GET", "/api/tags")
        return list(self._json(response, "list its models").get("models") or [])

    def show(self, model: str) -> dict:
        response = self._send("POST", "/api/show", json={"model": model})
        self._raise_if_unknown(response, model)
        return self._json(response, f"show {model!r}")

    def chat(self, model: str, messages: list[dict], **options: Any) -> str:
        """The assistant's answer from Ollama's OpenAI-compatible endpoint (not streamed).

        `options` go into the request as they are (temperature, max_tokens, seed ...).
        """
        payload = {**options, "model": model, "messages": messages, "stream": False}
        response = self._send(
            "POST", "/v1/chat/completions", json=payload, timeout=self.long_timeout
        )
        self._raise_if_unknown(response, model)
        body = self._json(response, f"answer with {model!r}")
        try:
            return str(body["choices"][0]["message"]["content"] or "")
        except (KeyError, IndexError, TypeError):
            raise OllamaError(
                f"Ollama at {self.address} answered a chat with {model!r} without a message: "
                f"{json.dumps(body)[:300]}"
            ) from None

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from None

    def _unreachable(self, exc: httpx.TransportError) -> Unavailable:
        reason = str(exc) or type(exc).__name__
        if isinstance(exc, httpx.TimeoutException):
            reason = f"timed out ({reason})"
        return Unavailable(
            f"Cannot reach Ollama at {self.address}: {reason}. Is it running? Start it with "
            "`ollama serve` on that machine, or correct the environment's address."
        )

    def _raise_for_status(self, response: httpx.Response, action: str) -> None:
        if response.is_success:
            return
        raise OllamaError(
            f"Ollama at {self.address} could not {action}: {_error_words(response)}.",
            response.status_code,
        )

    def _raise_if_unknown(self, response: httpx.Response, model: str) -> None:
        if response.status_code == 404:
            raise NotFound(
                f"Ollama at {self.address} has no model {model!r} ({_error_words(response)}). "
                "Deploy it again, or list the models Ollama has."
            )
        self._raise_for_status(response, f"use {model!r}")

    def _json(self, response: httpx.Response, action: str) -> dict:
        self._raise_for_status(response, action)
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise OllamaError(
                f"{self.address} did not answer as Ollama does when asked to {action}: "
                f"{response.text[:200]!r}"
            )
        return body


class _ProgressReporter:
    """Turns bytes hashed and sent into fractions, skipping steps too small to show."""

    def __init__(self, progress: Callable[[float, str], None] | None, total: int):
        self.progress = progress
        self.total = max(total, 1)
        self.done = 0
        self.last_fraction = -1.0
        self.last_message = ""

    def at(self, within_current: int, message: str) -> None:
        fraction = (self.done + within_current) / self.total
        if self.progress is None:
            return
        if message == self.last_message and fraction - self.last_fraction < PROGRESS_STEP:
            return
        self.last_fraction, self.last_message = fraction, message
        self.progress(fraction, message)

    def advance(self, finished: int, message: str) -> None:
        self.done += finished
        self.at(0, message)


def _status_line(line: str, what: str) -> dict | None:
    """One line of a streamed create; OllamaError when Ollama reports a failure in it."""
    if not line.strip():
        return None
    try:
        event = json.loads(line)
    except ValueError:
        raise OllamaError(f"{what}: it streamed a line that is not JSON: {line[:200]!r}") from None
    if not isinstance(event, dict):
        raise OllamaError(f"{what}: it streamed {line[:200]!r} instead of a status.")
    if event.get("error"):
        # Before 0.12.6 every error is such a line, with the HTTP status it stands for; since,
        # only an error after some output is, and without a status.
        status = event.get("status")
        raise OllamaError(
            f"{what}: {with_advice(str(event['error']))}",
            status if isinstance(status, int) else None,
        )
    return event


def _check_digest(digest: str) -> None:
    if not DIGEST_PATTERN.fullmatch(digest):
        raise Invalid(
            f"{digest!r} is not a blob digest: Ollama names blobs sha256:<64 lowercase hex "
            "digits>, as file_sha256 gives."
        )


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError as exc:
        raise Invalid(f"{path} cannot be read ({exc.strerror}).") from None
