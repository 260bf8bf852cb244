"""A client of Tuneyard's REST API: where the server is, the token it knows you by, and its
errors as one-line messages. The CLI's user commands go through it and nothing else."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import httpx

API_PREFIX = "/api/v1"
NOT_LOGGED_IN = "not logged in: run `tuneyard login URL`"
# Long enough for a slow request (a model check, a file upload); a chat streams past it.
TIMEOUT = httpx.Timeout(60.0, connect=10.0)
# The largest page the server gives (tuneyard.pagination.MAX_LIMIT, which needs the database
# libraries this module does without).
PAGE = 500


class ApiError(Exception):
    """A request that did not succeed, with what to tell the person who made it."""

    def __init__(self, message: str, status: int | None = None, error: str | None = None):
        super().__init__(message)
        self.message = message
        self.status = status
        self.error = error


@dataclass(frozen=True)
class Credentials:
    url: str
    token: str


def config_dir() -> Path:
    """Where the CLI keeps what it knows of you: $XDG_CONFIG_HOME/tuneyard (~/.config/...)."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base).expanduser() / "tuneyard"


def credentials_file() -> Path:
    return config_dir() / "credentials.json"


def server_url(url: str) -> str:
    """The server's base address, from what a person types: no trailing slash or API path."""
    url = url.strip().rstrip("/").removesuffix(API_PREFIX).rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ApiError(f"'{url}' is not a server address; give one like http://127.0.0.1:8000.")
    return url


def read_stored() -> Credentials | None:
    path = credentials_file()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ApiError(f"Cannot read {path} ({exc}); run `tuneyard login URL` again.") from exc
    if not isinstance(data, dict) or not data.get("url") or not data.get("token"):
        raise ApiError(f"{path} holds no server and token; run `tuneyard login URL` again.")
    return Credentials(str(data["url"]), str(data["token"]))


def store(credentials: Credentials) -> Path:
    """Keep the server and token for later commands, readable by you alone (0600 in 0700)."""
    folder = config_dir()
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    folder.chmod(0o700)
    path = credentials_file()
    staging = folder / f".credentials.{os.getpid()}.tmp"
    # Created 0600 from the start, so the token is never readable by others, even briefly.
    fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump({"url": credentials.url, "token": credentials.token}, handle, indent=2)
            handle.write("\n")
        os.chmod(staging, 0o600)
        os.replace(staging, path)
    except BaseException:
        staging.unlink(missing_ok=True)
        raise
    return path


def forget() -> Path | None:
    """Remove the stored server and token; the file's path if there was one."""
    path = credentials_file()
    try:
        path.unlink()
    except FileNotFoundError:
        return None
    return path


def current_credentials() -> Credentials:
    """TUNEYARD_URL and TUNEYARD_TOKEN, else what `tuneyard login` stored. A stored token is
    sent only to the server it was issued by, even when TUNEYARD_URL names another."""
    env_url = os.environ.get("TUNEYARD_URL", "").strip()
    env_token = os.environ.get("TUNEYARD_TOKEN", "").strip()
    stored = read_stored()
    url = server_url(env_url) if env_url else (stored.url if stored else "")
    token = env_token
    if not token and stored is not None and server_url(stored.url) == url:
        token = stored.token
    if not url or not token:
        raise ApiError(NOT_LOGGED_IN)
    return Credentials(url, token)


def path_part(value: str) -> str:
    """An id or name as one segment of a URL path."""
    return quote(value, safe="")


class Client:
    """Requests to one server with one token; every failure raises ApiError."""

    def __init__(self, url: str, token: str | None = None):
        self.url = url
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.authenticated = token is not None
        self.http = httpx.Client(base_url=url + API_PREFIX, headers=headers, timeout=TIMEOUT)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_exc) -> None:
        self.close()

    def request(self, method: str, path: str, **kwargs) -> httpx.Response:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise self.unreachable(exc) from exc
        if response.is_error:
            raise self.error_of(response)
        return response

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params=_query(params)).json()

    def post(self, path: str, body: Any = None, **kwargs) -> Any:
        response = self.request("POST", path, json=body, **kwargs)
        return response.json() if response.content else None

    def patch(self, path: str, body: Any) -> Any:
        return self.request("PATCH", path, json=body).json()

    def delete(self, path: str) -> Any:
        response = self.request("DELETE", path)
        return response.json() if response.content else None

    def items(self, path: str, **params: Any) -> tuple[list[dict], int]:
        """One page of a list: its items and how many there are in all."""
        page = self.get(path, **params)
        return page["items"], page["total"]

    def every(self, path: str, **params: Any) -> list[dict]:
        """Every item of a list, fetched a page (the server's largest) at a time."""
        found: list[dict] = []
        while True:
            items, total = self.items(path, limit=PAGE, offset=len(found), **params)
            found += items
            if not items or len(found) >= total:
                return found

    @contextmanager
    def stream(self, method: str, path: str, **kwargs) -> Iterator[httpx.Response]:
        """A response read as it comes (an archive, server-sent events)."""
        try:
            with self.http.stream(method, path, **kwargs) as response:
                if response.is_error:
                    response.read()
                    raise self.error_of(response)
                yield response
        except httpx.TransportError as exc:
            raise self.unreachable(exc) from exc

    def unreachable(self, exc: httpx.TransportError) -> ApiError:
        reason = str(exc) or type(exc).__name__
        return ApiError(f"Cannot reach the Tuneyard server at {self.url} ({reason}).")

    def error_of(self, response: httpx.Response) -> ApiError:
        """The server's own words: the `detail` of its error, or what the status means."""
        try:
            body = response.json()
        except ValueError:
            body = None
        if isinstance(body, dict) and isinstance(body.get("detail"), str):
            message, error = body["detail"], body.get("error")
        else:
            message = f"The server at {self.url} answered {response.status_code} "
            message += f"{response.reason_phrase}."
            error = None
        if response.status_code == 401 and self.authenticated:
            message += f" Run `tuneyard login {self.url}`."
        return ApiError(message, response.status_code, error)


def _query(params: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in params.items() if value is not None}


def connect() -> Client:
    """A client for the server you are logged in to."""
    credentials = current_credentials()
    return Client(credentials.url, credentials.token)
