"""A vLLM double for tests: a real HTTP server that speaks vLLM's OpenAI-compatible protocol.

vLLM needs a GPU and cannot run here, so the OpenAI-compatible deploy path is tested against
this double over real HTTP on 127.0.0.1. It answers as `vllm serve <base_model_dir>` does:
the served model id is the path it was started with; runtime LoRA loading answers as with
VLLM_ALLOW_RUNTIME_LORA_UPDATING=True (or 404, the route missing, with runtime_lora=False);
errors carry vLLM's status codes and words; with api_key, /v1 wants `Authorization: Bearer`.
And it really generates: transformers on the base folder, and for an adapter a PeftModel
loaded from its lora_path, so an adapter that is loaded really changes the answer. Tiny
models only.

    with VllmDouble(tiny_model_dir) as vllm:
        client = OpenAICompatClient(vllm.url)
"""

from __future__ import annotations

import copy
import json
import threading
import time
import uuid
from collections.abc import Iterator
from http import HTTPStatus
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from tests.http_double import BackgroundServer


class VllmDouble:
    """A real HTTP server on 127.0.0.1 and a free port, in a background thread.

    Test helpers: `loras` (name -> path of each loaded adapter) and `requests` ((method,
    path) of every request, in order).
    """

    def __init__(
        self,
        base_model_dir: Path,
        *,
        runtime_lora: bool = True,
        api_key: str | None = None,
        max_model_len: int = 512,
    ):
        self.base_model_dir = Path(base_model_dir)
        self.model_id = str(base_model_dir)
        self.runtime_lora = runtime_lora
        self.api_key = api_key
        self.max_model_len = max_model_len
        self.loras: dict[str, str] = {}
        self.requests: list[tuple[str, str]] = []
        self.port = 0
        self._created = int(time.time())
        self._models: dict[str, Any] = {}
        self._tokenizer: Any = None
        self._generate_lock = threading.Lock()
        self._background: BackgroundServer | None = None
        self._app = self._build_app()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> VllmDouble:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self._tokenizer = AutoTokenizer.from_pretrained(self.base_model_dir)
        base = AutoModelForCausalLM.from_pretrained(self.base_model_dir, dtype=torch.float32)
        self._models = {self.model_id: base.eval()}
        self._background = BackgroundServer(self._app, "vLLM double")
        self.port = self._background.start()

    def stop(self) -> None:
        if self._background is not None:
            self._background.stop()

    # -- the app -------------------------------------------------------------------------

    def _build_app(self) -> FastAPI:
        app = FastAPI()

        @app.middleware("http")
        async def record_and_authenticate(request: Request, call_next):
            self.requests.append((request.method, request.url.path))
            # As vLLM's --api-key: only /v1 paths, only the Bearer header, and these words.
            guarded = self.api_key and request.url.path.startswith("/v1")
            if guarded and request.headers.get("Authorization") != f"Bearer {self.api_key}":
                return JSONResponse({"error": "Unauthorized"}, status_code=401)
            return await call_next(request)

        app.get("/v1/models")(self._list_models)
        app.post("/v1/chat/completions")(self._chat)
        if self.runtime_lora:
            app.post("/v1/load_lora_adapter")(self._load_lora)
            app.post("/v1/unload_lora_adapter")(self._unload_lora)
        return app

    def _list_models(self) -> dict:
        cards = [self._card(self.model_id, root=self.model_id, parent=None)]
        cards += [
            self._card(name, root=path, parent=self.model_id) for name, path in self.loras.items()
        ]
        return {"object": "list", "data": cards}

    def _card(self, model_id: str, root: str, parent: str | None) -> dict:
        card = {
            "id": model_id,
            "object": "model",
            "created": self._created,
            "owned_by": "vllm",
            "root": root,
            "parent": parent,
            "permission": [],
        }
        if parent is None:
            card["max_model_len"] = self.max_model_len
        return card

    async def _chat(self, request: Request):
        body = await request.json()
        model_name = body.get("model") or self.model_id
        model = self._models.get(model_name)
        if model is None:
            return _error(
                f"The model `{model_name}` does not exist.",
                "NotFoundError",
                HTTPStatus.NOT_FOUND,
                param="model",
            )
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return _error("messages must be a non-empty list", "BadRequestError")
        max_tokens = body.get("max_completion_tokens") or body.get("max_tokens") or 16
        token_ids, prompt_tokens = await run_in_threadpool(
            self._generate,
            model,
            messages,
            max_tokens,
            body.get("temperature", 1.0),
            body.get("seed"),
        )
        finish = "length" if len(token_ids) >= max_tokens else "stop"
        if body.get("stream"):
            return StreamingResponse(
                self._stream(model_name, token_ids, finish), media_type="text/event-stream"
            )
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model_name,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": self._decode(token_ids)},
                    "logprobs": None,
                    "finish_reason": finish,
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": len(token_ids),
                "total_tokens": prompt_tokens + len(token_ids),
            },
        }

    def _generate(
        self, model, messages: list[dict], max_tokens: int, temperature: float, seed: int | None
    ) -> tuple[list[int], int]:
        """Greedy at temperature 0 (sampled, seeded, otherwise); the new token ids without
        the end-of-sequence token, and the prompt's length."""
        import torch

        inputs = self._tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        sampling = {"do_sample": False}
        if temperature and temperature > 0:
            sampling = {"do_sample": True, "temperature": float(temperature)}
        with self._generate_lock, torch.no_grad():
            if seed is not None:
                torch.manual_seed(seed)
            output = model.generate(
                **inputs,
                max_new_tokens=max_tokens,
                pad_token_id=self._tokenizer.eos_token_id,
                **sampling,
            )
        prompt_tokens = inputs["input_ids"].shape[1]
        new = output[0, prompt_tokens:].tolist()
        if new and new[-1] == self._tokenizer.eos_token_id:
            new = new[:-1]
        return new, prompt_tokens

    def _decode(self, token_ids: list[int]) -> str:
        return self._tokenizer.decode(token_ids, skip_special_tokens=True)

    def _stream(self, model_name: str, token_ids: list[int], finish: str) -> Iterator[str]:
        chunk_id = f"chatcmpl-{uuid.uuid4().hex}"
        yield _sse_chunk(chunk_id, model_name, {"role": "assistant", "content": ""}, None)
        sent = ""
        for end in range(1, len(token_ids) + 1):
            text = self._decode(token_ids[:end])
            # Hold back a partial UTF-8 character until the next token completes it.
            if text.endswith("\ufffd"):
                continue
            yield _sse_chunk(chunk_id, model_name, {"content": text[len(sent) :]}, None)
            sent = text
        rest = self._decode(token_ids)[len(sent) :]
        yield _sse_chunk(chunk_id, model_name, {"content": rest}, finish)
        yield "data: [DONE]\n\n"

    async def _load_lora(self, request: Request):
        body = await request.json()
        name, path = body.get("lora_name"), body.get("lora_path")
        if not name or not path:
            return _error("Both 'lora_name' and 'lora_path' must be provided.", "InvalidUserInput")
        if name in self.loras:
            return _error(
                f"The lora adapter '{name}' has already been loaded. If you want to load the "
                "adapter in place, set 'load_inplace' to True.",
                "InvalidUserInput",
            )
        if not (Path(path) / "adapter_config.json").is_file():
            return _error(
                f"Loading lora {name} failed: No adapter found for {path}",
                "NotFoundError",
                HTTPStatus.NOT_FOUND,
            )
        try:
            self._models[name] = await run_in_threadpool(self._load_peft, Path(path))
        except Exception as exc:
            return _error(str(exc), "InternalServerError", HTTPStatus.INTERNAL_SERVER_ERROR)
        self.loras[name] = path
        return PlainTextResponse(f"Success: LoRA adapter '{name}' added successfully.")

    def _load_peft(self, path: Path):
        from peft import PeftModel

        # Each adapter on its own copy of the base, so the base itself stays untouched.
        return PeftModel.from_pretrained(copy.deepcopy(self._models[self.model_id]), path).eval()

    async def _unload_lora(self, request: Request):
        body = await request.json()
        name = body.get("lora_name")
        if not name:
            return _error(
                "'lora_name' needs to be provided to unload a LoRA adapter.", "InvalidUserInput"
            )
        if name not in self.loras:
            return _error(
                f"The lora adapter '{name}' cannot be found.",
                "NotFoundError",
                HTTPStatus.NOT_FOUND,
            )
        del self.loras[name]
        del self._models[name]
        return PlainTextResponse(f"Success: LoRA adapter '{name}' removed successfully.")


def _error(
    message: str,
    err_type: str,
    status: HTTPStatus = HTTPStatus.BAD_REQUEST,
    param: str | None = None,
) -> JSONResponse:
    """vLLM's ErrorResponse: {"error": {message, type, param, code}} with the code as status."""
    error = {"message": message, "type": err_type, "param": param, "code": status.value}
    return JSONResponse({"error": error}, status_code=status.value)


def _sse_chunk(chunk_id: str, model: str, delta: dict, finish_reason: str | None) -> str:
    chunk = {
        "id": chunk_id,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
    }
    return f"data: {json.dumps(chunk)}\n\n"
