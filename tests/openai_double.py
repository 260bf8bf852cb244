"""An OpenAI-compatible chat and embedding server for tests and benchmarks, whose answers are
scripted.

It speaks `POST /v1/chat/completions` as OpenAI's API does (a JSON answer, or server-sent chunks
with `stream`, the usage in the last chunk when asked for), `POST /v1/embeddings` (one vector
per input, `index` in order) and `GET /v1/models`, over real HTTP on 127.0.0.1. What it answers
is a function of the request's messages (a text, or a `Reply` with an error status: 429 with
Retry-After, 500, ...) or, for embeddings, of the inputs (their vectors, or a `Reply`). It can
wait before each chat answer (a server's latency) and counts the requests it holds at once.

    with OpenAIDouble(lambda messages: '{"score": 7}', latency=0.2) as judge:
        ...  # a third-party model with base_url=judge.url
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from tests.http_double import BackgroundServer


@dataclass(frozen=True)
class Reply:
    """A scripted answer: a text, or an error status with its message and Retry-After."""

    text: str = ""
    status: int = 200
    retry_after: float | None = None


Script = Callable[[list[dict[str, Any]]], "str | Reply"]
# What the embeddings endpoint answers for a request's inputs: their vectors, or an error.
EmbedScript = Callable[[list[str]], "list[list[float]] | Reply"]


def hashed_vectors(inputs: list[str], dimensions: int = 8) -> list[list[float]]:
    """Deterministic vectors: the same text always the same vector, different texts apart."""
    vectors = []
    for text in inputs:
        digest = hashlib.sha256(text.encode()).digest()
        vectors.append([(byte - 127.5) / 127.5 for byte in digest[:dimensions]])
    return vectors


def last_user(messages: list[dict[str, Any]]) -> str:
    return next(m["content"] for m in reversed(messages) if m["role"] == "user")


class OpenAIDouble:
    """A real HTTP server on 127.0.0.1 and a free port, in a background thread.

    Test helpers: `requests` (the bodies received, in order), `in_flight` and `max_in_flight`
    (requests held at once, now and at most).
    """

    def __init__(
        self,
        script: Script = lambda messages: "",
        *,
        latency: float = 0.0,
        model: str = "scripted",
        embed: EmbedScript = hashed_vectors,
    ):
        self.script = script
        self.embed = embed
        self.latency = latency
        self.model = model
        self.requests: list[dict[str, Any]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self._background: BackgroundServer | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> OpenAIDouble:
        self._background = BackgroundServer(self._app(), "OpenAI-compatible double")
        self.port = self._background.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._background is not None:
            self._background.stop()

    def _app(self) -> FastAPI:
        app = FastAPI()

        @app.get("/v1/models")
        def models():
            return {"object": "list", "data": [{"id": self.model, "object": "model"}]}

        @app.post("/v1/chat/completions")
        async def chat(request: Request):
            body = await request.json()
            with self._lock:
                self.requests.append(body)
                self.in_flight += 1
                self.max_in_flight = max(self.max_in_flight, self.in_flight)
            try:
                if self.latency:
                    await asyncio.sleep(self.latency)
                reply = self.script(body["messages"])
            finally:
                with self._lock:
                    self.in_flight -= 1
            if isinstance(reply, str):
                reply = Reply(reply)
            if reply.status != 200:
                headers = {}
                if reply.retry_after is not None:
                    headers["Retry-After"] = f"{reply.retry_after:g}"
                error = {"message": reply.text or "scripted failure", "type": "server_error"}
                return JSONResponse({"error": error}, reply.status, headers=headers)
            usage = {
                "prompt_tokens": sum(len(str(m["content"]).split()) for m in body["messages"]),
                "completion_tokens": len(reply.text.split()),
            }
            usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
            if body.get("stream"):
                return StreamingResponse(
                    self._chunks(reply.text, usage, body), media_type="text/event-stream"
                )
            return {
                "id": f"chatcmpl-{uuid.uuid4().hex[:12]}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body.get("model", self.model),
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": reply.text},
                        "finish_reason": "stop",
                    }
                ],
                "usage": usage,
            }

        @app.post("/v1/embeddings")
        def embeddings(body: dict[str, Any]):
            with self._lock:
                self.requests.append(body)
            inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
            reply = self.embed(inputs)
            if isinstance(reply, Reply):
                headers = {}
                if reply.retry_after is not None:
                    headers["Retry-After"] = f"{reply.retry_after:g}"
                error = {"message": reply.text or "scripted failure", "type": "server_error"}
                return JSONResponse({"error": error}, reply.status, headers=headers)
            return {
                "object": "list",
                "data": [
                    {"object": "embedding", "index": i, "embedding": vector}
                    for i, vector in enumerate(reply)
                ],
                "model": body.get("model", self.model),
                "usage": {"prompt_tokens": 0, "total_tokens": 0},
            }

        return app

    def _chunks(self, text: str, usage: dict[str, int], body: dict[str, Any]):
        base = {
            "id": f"chatcmpl-{uuid.uuid4().hex[:12]}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": body.get("model", self.model),
        }

        def event(payload: dict[str, Any]) -> str:
            return f"data: {json.dumps({**base, **payload})}\n\n"

        yield event({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})
        for start in range(0, len(text), 16):
            piece = text[start : start + 16]
            yield event({"choices": [{"index": 0, "delta": {"content": piece}}]})
        yield event({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        if (body.get("stream_options") or {}).get("include_usage"):
            yield event({"choices": [], "usage": usage})
        yield "data: [DONE]\n\n"
