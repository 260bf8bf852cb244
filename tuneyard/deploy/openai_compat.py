"""A small synchronous client for OpenAI-compatible servers (vLLM, llama.cpp, and the like)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from tuneyard.errors import Invalid, Unavailable

RUNTIME_LORA_HINT = (
    "this server has no runtime LoRA loading (vLLM needs VLLM_ALLOW_RUNTIME_LORA_UPDATING=True "
    "in its environment and --enable-lora on its command line): restart it so, or start it "
    "with the adapter (`--lora-modules name=path`)"
)
# FastAPI's answer for a route the server does not have, as opposed to a 404 that the
# endpoint itself gives (vLLM: an adapter or model that does not exist).
MISSING_ROUTE = "Not Found"


def normalise_base_url(url: str) -> str:
    """ "http://host:8000", "http://host:8000/" and "http://host:8000/v1/" all mean .../v1."""
    url = url.strip().rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise Invalid(
            f"{url!r} is not an http(s) URL: give the server's address, like "
            "http://127.0.0.1:8000/v1."
        )
    return url if url.endswith("/v1") else f"{url}/v1"


class OpenAICompatClient:
    """Lists models, chats, and loads or unloads LoRA adapters at runtime.

    Every failure is an AppError that says what to do: Unavailable when the server cannot
    be reached or fails, Invalid when it refuses the request (a refused API key included;
    the key itself never appears in a message).
    """

    def __init__(self, base_url: str, api_key: str | None = None, timeout: float = 30.0):
        self.base_url = normalise_base_url(base_url)
        self.timeout = timeout
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    def models(self) -> list[dict]:
        response = self._request("GET", "/models")
        try:
            data = response.json()["data"]
        except (ValueError, KeyError, TypeError):
            data = None
        if not isinstance(data, list):
            raise Unavailable(
                f"{self.base_url}/models did not answer with an OpenAI model list: check that "
                f"{self.base_url} is an OpenAI-compatible server."
            )
        return data

    def chat(
        self,
        model: str,
        messages: list[dict],
        *,
        max_tokens: int = 32,
        temperature: float = 0.0,
        seed: int | None = 0,
        **extra: Any,
    ) -> str:
        """The assistant's reply to `messages` (one non-streamed completion)."""
        body = {
            "model": model,
            "messages": messages,
            "max_tokens": max_tokens,
            "temperature": temperature,
            **extra,
            "stream": False,
        }
        if seed is not None:
            body["seed"] = seed
        response = self._request("POST", "/chat/completions", json=body)
        try:
            message = response.json()["choices"][0]["message"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise Unavailable(
                f"{self.base_url}/chat/completions did not answer with a chat completion for "
                f"{model}: check that {self.base_url} is an OpenAI-compatible server."
            ) from None
        return message.get("content") or ""

    def load_lora_adapter(self, name: str, path: Path | str) -> None:
        """Load the PEFT adapter folder at `path` (a path on the server's machine) as `name`."""
        self._request(
            "POST",
            "/load_lora_adapter",
            json={"lora_name": name, "lora_path": str(path)},
            missing_route=RUNTIME_LORA_HINT,
        )

    def unload_lora_adapter(self, name: str) -> None:
        self._request(
            "POST",
            "/unload_lora_adapter",
            json={"lora_name": name},
            missing_route=RUNTIME_LORA_HINT,
        )

    def _request(
        self, method: str, path: str, *, json: dict | None = None, missing_route: str = ""
    ) -> httpx.Response:
        url = f"{self.base_url}{path}"
        try:
            response = httpx.request(
                method, url, json=json, headers=self._headers, timeout=self.timeout
            )
        except httpx.TimeoutException:
            raise Unavailable(
                f"{url} did not answer within {self.timeout:g} s: the server is busy or hung; "
                "try again later, or check the server."
            ) from None
        except httpx.ConnectError as exc:
            raise Unavailable(
                f"Cannot connect to {self.base_url}: {_connect_failure(exc)}. Check that the "
                "server is running and that the address is right."
            ) from None
        except httpx.HTTPError as exc:
            raise Unavailable(f"{url} failed: {exc}. Check the server's log.") from None
        if response.status_code in (401, 403):
            raise Invalid(_refused_key(self.base_url, response.status_code, bool(self._headers)))
        if response.is_success:
            return response
        message = _error_message(response)
        if response.status_code == 404 and message == MISSING_ROUTE:
            raise Invalid(f"{url} does not exist: {missing_route or 'check the base URL'}.")
        if response.status_code >= 500:
            raise Unavailable(f"{url} failed (HTTP {response.status_code}): {message}")
        raise Invalid(f"{url} refused the request (HTTP {response.status_code}): {message}")


def _connect_failure(exc: httpx.ConnectError) -> str:
    text = str(exc)
    lowered = text.lower()
    if "refused" in lowered:
        return "connection refused (nothing listens on that port)"
    if "name or service not known" in lowered or "name resolution" in lowered:
        return "the host name does not resolve (DNS)"
    return text or type(exc).__name__


def _refused_key(base_url: str, status: int, sent_key: bool) -> str:
    if sent_key:
        return (
            f"The server at {base_url} refused the API key (HTTP {status}): set the key "
            "this server expects."
        )
    return (
        f"The server at {base_url} wants an API key (HTTP {status}) and none is set: add "
        "the server's key."
    )


def _error_message(response: httpx.Response) -> str:
    """The server's own words: OpenAI's {"error": {"message"}}, older vLLM's {"message"},
    FastAPI's {"detail"}, or the text."""
    try:
        data = response.json()
    except ValueError:
        return response.text.strip()[:500] or response.reason_phrase
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        for key in ("error", "message", "detail"):
            if data.get(key):
                return str(data[key])
    return str(data)[:500]
