"""Third-party models: entries for external chat and embedding endpoints, and their test.

An entry's API key is encrypted at rest and leaves this module only through
`third_party_api_key`, for code that makes requests; no message carries it. A private entry
exists for its creator alone: to anyone else it reads as absent. Only its creator or an admin
changes or deletes an entry, and a change of where requests go (base URL or provider) drops
the stored key unless the same change brings one.

An entry registered from a live model keeps no key of its own: while that live model exists,
the entry's address follows it (it cannot be changed) and each request takes the key of the
live model's deployment environment, only while the entry points at that live model's endpoint.
"""

from __future__ import annotations

import re
import time
from typing import Any
from urllib.parse import urlsplit

import httpx
from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from tuneyard import modelref
from tuneyard.auth.service import Principal
from tuneyard.errors import AppError, Conflict, Forbidden, Invalid, NotFound, Unavailable
from tuneyard.jobs import service as jobs
from tuneyard.jobs.keys import Resource, UseKey
from tuneyard.models import DeployEnvironment, LiveModel, ThirdPartyModel
from tuneyard.outbound import api_key_problem, url_problem
from tuneyard.pagination import paginate
from tuneyard.secrets import decrypt_secret, encrypt_secret
from tuneyard.thirdparty.schemas import (
    MODEL_TYPES,
    NAME_PATTERN,
    PROVIDER_BASE_URLS,
    PROVIDERS,
)

THIRD_PARTY_NAME = re.compile(NAME_PATTERN)
TEST_TIMEOUT_S = 10.0
# Paths people paste with the base URL; each means the base URL is the part before it.
ENDPOINT_SUFFIXES = ("/chat/completions", "/completions", "/embeddings", "/models")


# -- reading --------------------------------------------------------------------------------


def _visible_to(principal: Principal):
    return (
        select(ThirdPartyModel)
        .where(ThirdPartyModel.project_id == principal.project_id)
        .where(
            or_(
                ThirdPartyModel.private.is_(False),
                ThirdPartyModel.created_by == principal.user_id,
            )
        )
    )


def get_third_party(session: Session, principal: Principal, id_or_name: str) -> ThirdPartyModel:
    visible = _visible_to(principal)
    row = session.scalar(visible.where(ThirdPartyModel.id == id_or_name)) or session.scalar(
        visible.where(ThirdPartyModel.name == id_or_name)
    )
    if row is None:
        raise NotFound(
            f"No third-party model '{id_or_name}'. List them with `tuneyard thirdparty list`."
        )
    return row


def list_third_party(
    session: Session,
    principal: Principal,
    model_type: str | None = None,
    limit: int = 50,
    offset: int = 0,
) -> tuple[list[ThirdPartyModel], int]:
    stmt = _visible_to(principal)
    if model_type is not None:
        stmt = stmt.where(ThirdPartyModel.model_type == _check_model_type(model_type))
    return paginate(session, stmt.order_by(ThirdPartyModel.name, ThirdPartyModel.id), limit, offset)


def usable_third_party(session: Session, principal: Principal) -> list[ThirdPartyModel]:
    """The entries the caller may use (private ones only their creator's), by name."""
    stmt = _visible_to(principal).order_by(ThirdPartyModel.name, ThirdPartyModel.id)
    return list(session.scalars(stmt))


def third_party_api_key(session: Session, row: ThirdPartyModel) -> str | None:
    """The decrypted key, for code that calls the model; never show or log it.

    The entry's own key, or for an entry registered from a live model that still points at
    that model's endpoint, the key of the live model's environment.
    """
    if row.api_key_encrypted:
        return decrypt_secret(row.api_key_encrypted)
    live = _linked_live_model(session, row)
    if live is None or live.endpoint_url != row.base_url:
        return None
    environment = session.get(DeployEnvironment, live.environment_id)
    return decrypt_secret(environment.api_key_encrypted) if environment is not None else None


def _linked_live_model(session: Session, row: ThirdPartyModel) -> LiveModel | None:
    """The live model the entry was registered from, while it exists."""
    if row.live_model_id is None:
        return None
    live = session.get(LiveModel, row.live_model_id)
    return live if live is not None and live.project_id == row.project_id else None


def third_party_out(row: ThirdPartyModel) -> dict[str, Any]:
    return {
        "id": row.id,
        "name": row.name,
        "provider": row.provider,
        "model_type": row.model_type,
        "model_name": row.model_name,
        "base_url": row.base_url,
        "has_api_key": bool(row.api_key_encrypted),
        "description": row.description,
        "private": row.private,
        "created_by": row.created_by,
        "live_model_id": row.live_model_id,
        "created_at": row.created_at,
        "updated_at": row.updated_at,
    }


# -- checking input -------------------------------------------------------------------------


def _check_name_free(
    session: Session, principal: Principal, name: str, own_id: str | None = None
) -> str:
    if not THIRD_PARTY_NAME.match(name):
        raise Invalid(
            f"Third-party model name '{name}' may use only letters, digits and . _ : / - "
            "(1 to 200 characters)."
        )
    # Private entries of others count too: names are unique in the project.
    taken = session.scalar(
        select(ThirdPartyModel.id).where(
            ThirdPartyModel.project_id == principal.project_id, ThirdPartyModel.name == name
        )
    )
    if taken is not None and taken != own_id:
        raise Conflict(f"A third-party model named '{name}' exists; choose another name.")
    return name


def _check_provider(provider: str) -> str:
    if provider not in PROVIDERS:
        raise Invalid(f"Unknown provider '{provider}'; use one of: {', '.join(PROVIDERS)}.")
    return provider


def _check_model_type(model_type: str) -> str:
    if model_type not in MODEL_TYPES:
        raise Invalid(f"Unknown model type '{model_type}'; use one of: {', '.join(MODEL_TYPES)}.")
    return model_type


def _check_model_name(model_name: str) -> str:
    model_name = model_name.strip()
    if not model_name or len(model_name) > 500:
        raise Invalid(
            "model_name must be the model id the endpoint expects (1 to 500 characters), "
            "e.g. gpt-4o-mini."
        )
    return model_name


def _check_api_key(api_key: str) -> str:
    api_key = api_key.strip()
    if problem := api_key_problem(api_key):
        raise Invalid(f"The API key cannot be sent: {problem}.")
    return api_key


def _base_url(provider: str, url: str | None) -> str:
    """The given URL, checked and without a trailing slash, or the provider's default."""
    if url is None or not url.strip():
        default = PROVIDER_BASE_URLS[provider]
        if default is None:
            raise Invalid(
                f"A {provider} model needs its base URL (base_url), e.g. http://127.0.0.1:8000/v1."
            )
        return default
    url = url.strip().rstrip("/")
    if problem := url_problem(url):
        raise Invalid(
            f"'{url}' is not an http(s) address ({problem}); give the endpoint's base URL, "
            "e.g. https://api.openai.com/v1."
        )
    for suffix in ENDPOINT_SUFFIXES:
        if url.endswith(suffix):
            raise Invalid(
                f"'{url}' is an endpoint, not a base URL; give {url.removesuffix(suffix)}."
            )
    return url


# -- writing --------------------------------------------------------------------------------


def _check_may_change(principal: Principal, row: ThirdPartyModel) -> None:
    """A shared entry is used by everyone, and its key is someone's: only the one who added it
    or an admin changes or deletes it."""
    if row.created_by != principal.user_id and principal.role != "admin":
        raise Forbidden(
            f"Only the user who added {row.name} or an admin can change or delete it; add a "
            "third-party model of your own instead."
        )


def create_third_party(
    session: Session,
    principal: Principal,
    name: str,
    provider: str,
    model_name: str,
    model_type: str = "chat",
    base_url: str | None = None,
    api_key: str | None = None,
    description: str = "",
    private: bool = False,
    live_model_id: str | None = None,
) -> ThirdPartyModel:
    """A new entry; one registered from a live model (`live_model_id`) keeps no key of its own
    and follows that model (see the module's docstring)."""
    principal.require("member")
    row = ThirdPartyModel(
        project_id=principal.project_id,
        name=_check_name_free(session, principal, name),
        provider=_check_provider(provider),
        model_type=_check_model_type(model_type),
        model_name=_check_model_name(model_name),
        base_url=_base_url(provider, base_url),
        api_key_encrypted=encrypt_secret(_check_api_key(api_key or "")),
        description=description,
        private=private,
        created_by=principal.user_id,
        live_model_id=live_model_id,
    )
    session.add(row)
    session.flush()
    return row


def update_third_party(
    session: Session,
    principal: Principal,
    id_or_name: str,
    *,
    name: str | None = None,
    provider: str | None = None,
    model_type: str | None = None,
    model_name: str | None = None,
    base_url: str | None = None,
    api_key: str | None = None,
    description: str | None = None,
    private: bool | None = None,
) -> ThirdPartyModel:
    """Change what is given. A new provider without a base_url brings its default URL; an
    empty base_url means the provider's default; an empty api_key removes the key.

    Only the entry's creator or an admin changes it. A new base URL or provider drops the
    stored key unless api_key comes with it: a key is never sent somewhere it was not meant
    for. An entry registered from a live model keeps its address while the live model exists.
    """
    principal.require("member")
    row = get_third_party(session, principal, id_or_name)
    _check_may_change(principal, row)
    new_provider = row.provider
    if provider is not None and provider != row.provider:
        new_provider = _check_provider(provider)
        if base_url is None:
            base_url = ""
    new_base_url = _base_url(new_provider, base_url) if base_url is not None else row.base_url
    redirected = (new_provider, new_base_url) != (row.provider, row.base_url)
    live = _linked_live_model(session, row)
    if live is not None and (redirected or api_key is not None):
        raise Conflict(
            f"{row.name} was registered from live model {live.name}: its address and key follow "
            "that live model. Add a third-party model of your own for another address."
        )
    if name is not None:
        row.name = _check_name_free(session, principal, name, row.id)
    row.provider, row.base_url = new_provider, new_base_url
    if model_type is not None:
        row.model_type = _check_model_type(model_type)
    if model_name is not None:
        row.model_name = _check_model_name(model_name)
    if api_key is not None:
        row.api_key_encrypted = encrypt_secret(_check_api_key(api_key))
    elif redirected:
        row.api_key_encrypted = None
    if description is not None:
        row.description = description
    if private is not None:
        if private and row.created_by != principal.user_id:
            raise Forbidden(f"Only the user who added {row.name} can make it private.")
        row.private = private
    session.flush()
    return row


def delete_third_party(session: Session, principal: Principal, id_or_name: str) -> str:
    """Forget the entry (refused while a job uses it); returns its name."""
    principal.require("member")
    row = get_third_party(session, principal, id_or_name)
    _check_may_change(principal, row)
    jobs.ensure_not_in_use(
        session, UseKey(Resource.THIRD_PARTY_MODEL, row.id), f"Third-party model {row.name}"
    )
    name = row.name
    session.delete(row)
    session.flush()
    return name


# -- testing the connection -----------------------------------------------------------------


def test_third_party(session: Session, principal: Principal, id_or_name: str) -> dict[str, Any]:
    """Make a real request to the model: a 1-token chat completion, or an embedding of "ping".

    Answers {"ok", "detail", "latency_ms"}; the detail says what answered or why it failed.
    A member's: the request goes out with the stored key.
    """
    principal.require("member")
    row = get_third_party(session, principal, id_or_name)
    api_key = None
    try:
        api_key = third_party_api_key(session, row)
        endpoint = _Endpoint(row.base_url, api_key)
        if row.model_type == "embedding":
            detail, latency_ms = _test_embedding(endpoint, row.model_name)
        else:
            detail, latency_ms = _test_chat(endpoint, row.model_name)
    except AppError as exc:
        return {"ok": False, "detail": _without_key(exc.message, api_key), "latency_ms": None}
    return {"ok": True, "detail": _without_key(detail, api_key), "latency_ms": latency_ms}


def _test_chat(endpoint: _Endpoint, model: str) -> tuple[str, int]:
    listed = endpoint.model_ids()
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "ping"}],
        "max_tokens": 1,
        "stream": False,
    }
    response, latency_ms = endpoint.request("POST", "/chat/completions", body)
    if not response.is_success:
        raise endpoint.refusal(response, model, listed)
    if not _is_chat_completion(response):
        raise Invalid(
            f"{endpoint.base_url}/chat/completions answered, but not with a chat completion: "
            "check that the base URL is an OpenAI-compatible one (it usually ends in /v1)."
        )
    detail = f"{model} answered a chat request at {endpoint.base_url} in {latency_ms} ms."
    if listed is not None and not _serves(listed, model):
        detail += " It is missing from the server's model list, but it answers."
    return detail, latency_ms


def _test_embedding(endpoint: _Endpoint, model: str) -> tuple[str, int]:
    response, latency_ms = endpoint.request(
        "POST", "/embeddings", {"model": model, "input": "ping"}
    )
    if not response.is_success:
        raise endpoint.refusal(response, model, None)
    vector = _first_embedding(response)
    if vector and all(isinstance(row, list) for row in vector):
        # llama-cpp-python's server does this for a model without a pooling layer.
        raise Invalid(
            f"{endpoint.base_url}/embeddings answered with one vector per token, not one per "
            f"input: {model} is not pooled. Serve an embedding model (one with a pooling "
            "layer) there."
        )
    if not vector or not all(isinstance(value, int | float) for value in vector):
        raise Invalid(
            f"{endpoint.base_url}/embeddings answered, but not with an embedding: check that "
            f"the base URL is an OpenAI-compatible one and that {model} is an embedding model."
        )
    return (
        f"{model} answered an embedding request at {endpoint.base_url} in {latency_ms} ms "
        f"({len(vector)} dimensions).",
        latency_ms,
    )


class _Endpoint:
    """One OpenAI-compatible base URL and key; each failure is an AppError saying why."""

    def __init__(self, base_url: str, api_key: str | None):
        self.base_url = base_url
        parts = urlsplit(base_url)
        self.host = f"{parts.hostname}:{parts.port}" if parts.port else str(parts.hostname)
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    def request(
        self, method: str, path: str, body: dict[str, Any] | None = None
    ) -> tuple[httpx.Response, int]:
        """The response (any status but 401/403) and how long it took in milliseconds."""
        url = f"{self.base_url}{path}"
        started = time.perf_counter()
        try:
            response = httpx.request(
                method, url, json=body, headers=self._headers, timeout=TEST_TIMEOUT_S
            )
        except httpx.ConnectTimeout:
            raise Unavailable(
                f"Cannot reach {self.host}: connecting timed out after {TEST_TIMEOUT_S:g} s. "
                "Check the base URL, and that no firewall or proxy is in the way."
            ) from None
        except httpx.TimeoutException:
            raise Unavailable(
                f"{url} did not answer within {TEST_TIMEOUT_S:g} s: the server is busy or "
                "hung; try again later."
            ) from None
        except httpx.ConnectError as exc:
            raise Unavailable(
                f"Cannot reach {self.host}: {_connect_failure(exc)}. Check that the server "
                "runs and that the base URL is right."
            ) from None
        except httpx.HTTPError as exc:
            raise Unavailable(
                f"Cannot reach {self.host}: {str(exc) or type(exc).__name__}."
            ) from None
        latency_ms = round((time.perf_counter() - started) * 1000)
        if response.status_code in (401, 403):
            raise Invalid(self._key_refused(response.status_code))
        return response, latency_ms

    def model_ids(self) -> list[str] | None:
        """The ids of GET /models, or None where the server offers no such list."""
        response, _ = self.request("GET", "/models")
        if not response.is_success:
            return None
        try:
            return [str(card["id"]) for card in response.json()["data"]]
        except (ValueError, KeyError, TypeError):
            return None

    def refusal(self, response: httpx.Response, model: str, listed: list[str] | None) -> AppError:
        """The error for a failed model request: no such route, no such model, or other."""
        url = str(response.request.url)
        status = response.status_code
        message = _server_message(response)
        if status == 404 and not _is_openai_error(response):
            return Invalid(
                f"{url} does not exist (HTTP 404): check the base URL (an OpenAI-compatible one "
                "usually ends in /v1) and that the server offers this kind of model."
            )
        if status == 404 or (status in (400, 422) and listed is not None):
            listed = listed if listed is not None else self._model_ids_if_any()
            if listed is None or not _serves(listed, model):
                return Invalid(self._unknown_model(model, listed, message))
        if status >= 500:
            return Unavailable(f"{url} failed (HTTP {status}): {message}")
        return Invalid(f"{url} refused the request (HTTP {status}): {message}")

    def _model_ids_if_any(self) -> list[str] | None:
        try:
            return self.model_ids()
        except AppError:
            return None

    def _unknown_model(self, model: str, listed: list[str] | None, message: str) -> str:
        if not listed:
            return f"The server at {self.base_url} does not know model '{model}': {message}"
        shown = ", ".join(listed[:20])
        if len(listed) > 20:
            shown += f" and {len(listed) - 20} more"
        return f"The server at {self.base_url} does not know model '{model}'; it serves: {shown}."

    def _key_refused(self, status: int) -> str:
        if self._headers:
            return (
                f"The API key was refused by {self.base_url} (HTTP {status}): check the key, "
                "or set the one this server expects."
            )
        return (
            f"The server at {self.base_url} needs an API key (HTTP {status}) and none is set: "
            "add the server's key to this model."
        )


def _serves(listed: list[str], model: str) -> bool:
    # Ollama lists "name:latest" and answers to plain "name" as well.
    return model in listed or f"{model}:latest" in listed


def _connect_failure(exc: httpx.ConnectError) -> str:
    text = str(exc)
    lowered = text.lower()
    if "refused" in lowered:
        return "connection refused, nothing listens on that port"
    if "name or service not known" in lowered or "name resolution" in lowered:
        return "the host name does not resolve (DNS)"
    return text or type(exc).__name__


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def _is_openai_error(response: httpx.Response) -> bool:
    """Whether the body is an OpenAI-style error, which an endpoint gives; a route the server
    lacks answers with its framework's page instead."""
    data = _json(response)
    return isinstance(data, dict) and "error" in data


def _server_message(response: httpx.Response) -> str:
    """The server's words: OpenAI's {"error": {"message"}}, {"error"}, {"message"},
    {"detail"}, or the text."""
    data = _json(response)
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        for key in ("error", "message", "detail"):
            if data.get(key):
                return str(data[key])
    return response.text.strip()[:300] or response.reason_phrase


def _is_chat_completion(response: httpx.Response) -> bool:
    data = _json(response)
    return isinstance(data, dict) and isinstance(data.get("choices"), list)


def _first_embedding(response: httpx.Response) -> list | None:
    data = _json(response)
    try:
        vector = data["data"][0]["embedding"]
    except (KeyError, IndexError, TypeError):
        return None
    return vector if isinstance(vector, list) else None


def _without_key(text: str, api_key: str | None) -> str:
    # A server may echo what it was sent; the key must not reach the user through it.
    return text.replace(api_key, "***") if api_key else text


modelref.register_kind(modelref.ModelKind.THIRD_PARTY, get_third_party, usable_third_party)
