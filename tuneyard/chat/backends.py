"""Where a chat goes: every model in the yard answers through an OpenAI-compatible endpoint.

Local models (base, customized as base + adapter, complete) are served by Tuneyard's inference
process; live models by their serving tool; third-party models by their provider. Which model
a reference names is tuneyard.modelref's rule, the same for every caller.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session

from tuneyard import modelref
from tuneyard.auth.service import Principal
from tuneyard.errors import Conflict, Invalid, Unavailable
from tuneyard.modelref import Capability, FoundModel, ModelKind
from tuneyard.storage import Layout


@dataclass(frozen=True)
class ChatModel:
    """A resolved model reference: how to reach it, and what to call it."""

    ref: str  # canonical "kind:id"
    kind: str
    id: str
    name: str
    base_url: str | None = None  # None: the local inference process
    model_id: str | None = None
    api_key: str | None = field(default=None, repr=False)
    local: dict[str, Any] | None = None  # {"model_dir", "adapter_dir"} for local models


class EndpointFailed(Unavailable):
    """The model's endpoint answered 429 or 5xx: busy or broken for now, maybe not for long.
    `upstream_status` is its status; `retry_after` the seconds its Retry-After header asked
    for, if any."""

    def __init__(self, message: str, upstream_status: int, retry_after: float | None = None):
        super().__init__(message)
        self.upstream_status = upstream_status
        self.retry_after = retry_after


@dataclass
class Delta:
    """A piece of an answer; the last one carries finish_reason and usage."""

    text: str
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None


def _local_dir(path: str | None, what: str) -> str:
    """The folder the database records, where this process finds it (a job on a cluster node
    reads its own copy)."""
    folder = Layout().local(path) if path else None
    if folder is None or not folder.is_dir():
        raise Conflict(f"The folder of {what} ({path}) is gone; it cannot answer.")
    return str(folder)


def _chat_model(session: Session, found: FoundModel) -> ChatModel:
    """Where a model that can chat answers, once it is ready to."""
    row, ref = found.row, str(found.ref)
    if found.kind is ModelKind.BASE:
        if row.status != "ready":
            raise Conflict(f"Base model '{row.technical_name}' is {row.status}.")
        folder = _local_dir(row.path, f"base model '{row.technical_name}'")
        return ChatModel(
            ref, "base", row.id, found.name, local={"model_dir": folder, "adapter_dir": None}
        )
    if found.kind is ModelKind.CUSTOMIZED:
        from tuneyard.basemodels.service import base_model_of

        base = base_model_of(session, row)
        if base is None:
            raise Conflict(
                f"The base model of {row.name} was deleted; an adapter answers on its base. "
                "Chat with a complete model saved from it instead."
            )
        return ChatModel(
            ref,
            "customized",
            row.id,
            found.name,
            local={
                "model_dir": _local_dir(base.path, f"base model '{base.technical_name}'"),
                "adapter_dir": _local_dir(row.path, f"customized model {row.name}"),
            },
        )
    if found.kind is ModelKind.COMPLETE:
        if row.status != "ready":
            raise Conflict(f"Complete model {row.name} is {row.status}.")
        return ChatModel(
            ref,
            "complete",
            row.id,
            found.name,
            local={
                "model_dir": _local_dir(row.path, f"complete model {row.name}"),
                "adapter_dir": None,
            },
        )
    if found.kind is ModelKind.LIVE:
        from tuneyard.deploy.live import live_api_key

        if row.status != "live" or not row.endpoint_url:
            raise Conflict(f"Live model {row.name} is {row.status}; it cannot answer.")
        return ChatModel(
            ref,
            "live",
            row.id,
            found.name,
            row.endpoint_url,
            row.model_id,
            live_api_key(session, row),
        )
    from tuneyard.thirdparty.service import third_party_api_key

    return ChatModel(
        ref,
        "third-party",
        row.id,
        found.name,
        row.base_url,
        row.model_name,
        third_party_api_key(session, row),
    )


def resolve_model(session: Session, principal: Principal, ref: str) -> ChatModel:
    """A model reference (`kind:id_or_name`) or a bare name, resolved to where it answers."""
    return _chat_model(session, modelref.resolve(session, principal, ref, Capability.CHAT))


# -- talking to an endpoint -----------------------------------------------------------------


def _endpoint(model: ChatModel) -> tuple[str, dict[str, str], dict[str, Any]]:
    """URL, headers and extra body fields for the model's chat completions endpoint."""
    if model.local is not None:
        from tuneyard.inference.process import ensure_inference

        base_url, token = ensure_inference()
        return (
            f"{base_url}/v1/chat/completions",
            {"Authorization": f"Bearer {token}"},
            {"tuneyard_model": model.local},
        )
    assert model.base_url is not None, "a model that is not local has a base URL"
    # Stored base URLs already end where the API's paths begin (often /v1, not always).
    base = model.base_url.rstrip("/")
    headers = {"Authorization": f"Bearer {model.api_key}"} if model.api_key else {}
    return f"{base}/chat/completions", headers, {}


def request_body(model: ChatModel, messages: list[dict], params: dict[str, Any], stream: bool):
    body: dict[str, Any] = {"model": model.model_id or model.name, "messages": messages}
    for key in ("temperature", "top_p", "max_tokens", "stop", "seed"):
        if params.get(key) is not None:
            body[key] = params[key]
    # top_k is not in OpenAI's API; local models, llama.cpp, vLLM and Ollama read it.
    if params.get("top_k") is not None and model.kind != "third-party":
        body["top_k"] = params["top_k"]
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return body


def _error_text(response) -> str:
    try:
        payload = response.json()
    except ValueError:
        return response.text[:300] or response.reason_phrase
    error = payload.get("error", payload) if isinstance(payload, dict) else payload
    if isinstance(error, dict):
        return str(error.get("message") or error.get("detail") or error)
    return str(error)


def _raise_for(model: ChatModel, response) -> None:
    if response.status_code < 400:
        return
    response.read()
    words = _error_text(response)
    if response.status_code in (401, 403):
        raise Unavailable(f"{model.name} refused the API key ({response.status_code}).")
    if response.status_code in (400, 404, 422):
        raise Invalid(f"{model.name}: {words}")
    message = f"{model.name} failed ({response.status_code}): {words}"
    if response.status_code == 429 or response.status_code >= 500:
        raise EndpointFailed(message, response.status_code, _retry_after(response))
    raise Unavailable(message)


def _retry_after(response) -> float | None:
    try:
        seconds = float(response.headers.get("retry-after", ""))
    except ValueError:
        return None
    return seconds if 0 <= seconds < 3600 else None


def stream_chat(
    model: ChatModel,
    messages: list[dict],
    params: dict[str, Any],
    timeout: float = 600.0,
    client=None,
) -> Iterator[Delta]:
    """The answer as it is generated; the last Delta has finish_reason and usage. A caller
    making many calls passes its own httpx `client` (its connections are kept, and making a
    client, with its TLS context, costs more than a call to a near server)."""
    import httpx

    url, headers, extra = _endpoint(model)
    body = {**request_body(model, messages, params, stream=True), **extra}
    finish, usage = None, None
    own = client is None
    if own:
        client = httpx.Client(timeout=httpx.Timeout(timeout, connect=10.0))
    try:
        with client.stream("POST", url, json=body, headers=headers) as response:
            _raise_for(model, response)
            for line in response.iter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                chunk = json.loads(data)
                if chunk.get("error"):
                    raise Unavailable(f"{model.name} failed: {chunk['error']}")
                if chunk.get("usage"):
                    usage = chunk["usage"]
                for choice in chunk.get("choices") or []:
                    text = (choice.get("delta") or {}).get("content") or ""
                    finish = choice.get("finish_reason") or finish
                    if text:
                        yield Delta(text)
    except httpx.TransportError as exc:
        where = "the inference process" if model.local is not None else url.split("/v1")[0]
        raise Unavailable(f"Cannot reach {where} for {model.name}: {exc}") from None
    except (ValueError, KeyError) as exc:
        raise Unavailable(f"{model.name} sent a malformed stream: {exc}") from None
    finally:
        if own:
            client.close()
    yield Delta("", finish or "stop", usage or {})


def complete_chat(
    model: ChatModel, messages: list[dict], params: dict[str, Any], client=None
) -> tuple[str, str, dict[str, Any], float]:
    """The whole answer: (text, finish_reason, usage, seconds to the first token)."""
    started = time.monotonic()
    first: float | None = None
    parts: list[str] = []
    finish, usage = "stop", {}
    for delta in stream_chat(model, messages, params, client=client):
        if delta.text and first is None:
            first = time.monotonic() - started
        parts.append(delta.text)
        if delta.finish_reason:
            finish, usage = delta.finish_reason, delta.usage or {}
    return "".join(parts), finish, usage, first if first is not None else 0.0
