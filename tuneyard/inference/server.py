"""The inference process: an OpenAI-compatible chat API over local models kept loaded.

Run as `python -m tuneyard.inference.server` (tuneyard.inference.process starts it). It listens
on 127.0.0.1 on a free port and records its pid, port and a random token in
`<data_dir>/inference/state.json`; every request must bring the token, because the process loads
whatever local folder a request names.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import secrets
import socket
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Literal

import anyio
import uvicorn
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from tuneyard.config import get_settings
from tuneyard.errors import AppError, Invalid, Unauthorized
from tuneyard.inference.engine import DEFAULT_MAX_TOKENS, ChatRequest, Generation, ModelCache
from tuneyard.inference.process import inference_state_file
from tuneyard.storage import atomic_file

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
# How often a non-streamed request checks whether its client is still there.
DISCONNECT_POLL_SECONDS = 0.5


class TextPart(BaseModel):
    type: Literal["text"] = "text"
    text: str


class ChatMessage(BaseModel):
    role: str
    content: str | list[TextPart] | None = None

    def plain(self) -> dict[str, str]:
        content = self.content
        if isinstance(content, list):
            content = "".join(part.text for part in content)
        return {"role": self.role, "content": content or ""}


class TuneyardModel(BaseModel):
    """Which local model a request runs: a model folder and, for a customized model, the
    adapter folder applied on it."""

    model_dir: str
    adapter_dir: str | None = None


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str = ""
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=0)
    max_tokens: int | None = Field(None, ge=1)
    # The newer name of max_tokens in OpenAI's API; either is accepted.
    max_completion_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    tuneyard_model: TuneyardModel | None = None

    def to_chat_request(self) -> ChatRequest:
        if self.tuneyard_model is None:
            raise Invalid(
                "Say which local model to run: add tuneyard_model "
                '{"model_dir": <model folder>, "adapter_dir": <adapter folder or null>}.'
            )
        stop = [self.stop] if isinstance(self.stop, str) else self.stop or []
        adapter = self.tuneyard_model.adapter_dir
        return ChatRequest(
            model_dir=Path(self.tuneyard_model.model_dir),
            adapter_dir=Path(adapter) if adapter else None,
            messages=[message.plain() for message in self.messages],
            max_tokens=self.max_tokens or self.max_completion_tokens or DEFAULT_MAX_TOKENS,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            stop=tuple(word for word in stop if word),
            seed=self.seed,
        )


class Completion:
    """The OpenAI objects of one answer: the whole completion, or its stream of chunks."""

    def __init__(self, model: str, generation: Generation):
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model = model
        self.generation = generation

    def usage(self) -> dict[str, int]:
        prompt, completion = self.generation.prompt_tokens, self.generation.completion_tokens
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }

    def whole(self, text: str) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": self.generation.finish_reason,
                }
            ],
            "usage": self.usage(),
        }

    def chunk(self, delta: dict[str, str], last: bool = False) -> str:
        body: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [
                {
                    "index": 0,
                    "delta": delta,
                    "finish_reason": self.generation.finish_reason if last else None,
                }
            ],
        }
        if last:
            body["usage"] = self.usage()
        return _event(body)


def _event(body: Any) -> str:
    return f"data: {json.dumps(body)}\n\n"


class GenerationStream(StreamingResponse):
    """A streamed answer whose generation ends with the response, however it ends: a client
    that goes away frees the model at the next token."""

    def __init__(self, completion: Completion):
        super().__init__(_stream(completion), media_type="text/event-stream")
        self.generation = completion.generation

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.generation.cancel()


async def _stream(completion: Completion) -> AsyncIterator[str]:
    pieces = iter(completion.generation)
    yield completion.chunk({"role": "assistant", "content": ""})
    try:
        while (piece := await anyio.to_thread.run_sync(next, pieces, None)) is not None:
            yield completion.chunk({"content": piece})
    except AppError as exc:
        yield _event({"error": {"message": exc.message}})
        return
    except Exception as exc:
        log.exception("generation failed")
        yield _event({"error": {"message": f"Generation failed: {exc}"}})
        return
    yield completion.chunk({}, last=True)
    yield "data: [DONE]\n\n"


async def _whole_text(generation: Generation, request: Request) -> str:
    """The complete answer; the generation stops if the client goes away meanwhile."""

    async def cancel_when_gone() -> None:
        while not await request.is_disconnected():
            await anyio.sleep(DISCONNECT_POLL_SECONDS)
        generation.cancel()

    # A plain task rather than a task group: a task group would wrap the generation's own
    # error (an AppError the handler must see) in an ExceptionGroup.
    watcher = asyncio.ensure_future(cancel_when_gone())
    try:
        return await anyio.to_thread.run_sync(generation.text)
    finally:
        watcher.cancel()


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": {"message": message}}, status_code=status)


def create_app(cache: ModelCache, token: str) -> FastAPI:
    """The ASGI app; every route needs `Authorization: Bearer <token>`."""
    expected = f"Bearer {token}".encode()

    def require_token(request: Request) -> None:
        given = request.headers.get("authorization", "").encode()
        if not hmac.compare_digest(given, expected):
            raise Unauthorized(
                "This inference process needs the token from its state.json "
                "(Authorization: Bearer <token>)."
            )

    app = FastAPI(
        title="Tuneyard inference",
        dependencies=[Depends(require_token)],
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
    )

    @app.exception_handler(AppError)
    async def app_error(_request: Request, exc: AppError) -> JSONResponse:
        # OpenAI-compatible servers answer a request they refuse with 400.
        return _error(400 if isinstance(exc, Invalid) else exc.status, exc.message)

    @app.exception_handler(RequestValidationError)
    async def invalid_body(_request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc'][1:]) or 'body'}: {error['msg']}"
            for error in exc.errors()
        )
        return _error(400, f"The request is not a valid chat completion request: {problems}")

    @app.exception_handler(Exception)
    async def failure(_request: Request, exc: Exception) -> JSONResponse:
        return _error(500, f"Generation failed: {exc!r}. The inference process's log has more.")

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "loaded": cache.loaded(),
            "loads": cache.loads,
            "budget_bytes": cache.budget_bytes,
        }

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        listed = [{"id": entry["key"], "object": "model"} for entry in cache.loaded()]
        return {"object": "list", "data": listed}

    @app.post("/v1/chat/completions", response_model=None)
    async def chat_completions(
        body: ChatCompletionRequest, request: Request
    ) -> JSONResponse | GenerationStream:
        generation = Generation(cache, body.to_chat_request())
        # Loads the model (or waits for the one generation running on it) off the event loop.
        await anyio.to_thread.run_sync(generation.start)
        completion = Completion(body.model, generation)
        if body.stream:
            return GenerationStream(completion)
        text = await _whole_text(generation, request)
        return JSONResponse(completion.whole(text))

    return app


def _write_state(state_file: Path, port: int, token: str) -> None:
    state_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    # atomic_file's temp file is made 0600 (mkstemp), so the token is never readable by others.
    with atomic_file(state_file, "w") as handle:
        json.dump({"pid": os.getpid(), "port": port, "token": token}, handle)


def _remove_state_if_ours(state_file: Path) -> None:
    try:
        if json.loads(state_file.read_text()).get("pid") == os.getpid():
            state_file.unlink()
    except (OSError, ValueError):
        pass


def _import_libraries() -> None:
    """Import torch, transformers and peft before serving: the first chat then waits only for
    its model to load. Their progress bars would only clutter server.log."""
    import peft  # noqa: F401
    import torch  # noqa: F401
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()


def main() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    _import_libraries()
    settings = get_settings()
    budget = int(settings.inference_memory_gb * 10**9)
    token = secrets.token_urlsafe(32)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind((HOST, 0))
    # Listening before state.json appears: a client that reads it early waits in the backlog.
    listener.listen(128)
    port = listener.getsockname()[1]
    state_file = inference_state_file(settings)
    config = uvicorn.Config(
        create_app(ModelCache(budget), token), log_level="info", timeout_graceful_shutdown=2
    )
    _write_state(state_file, port, token)
    log.info("inference process on %s:%d, memory budget %d bytes", HOST, port, budget)
    try:
        uvicorn.Server(config).run(sockets=[listener])
    finally:
        _remove_state_if_ours(state_file)


if __name__ == "__main__":
    main()
