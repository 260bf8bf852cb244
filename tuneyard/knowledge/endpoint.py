"""What the knowledge domain's HTTP endpoints (embeddings, reranking) share: one client per
endpoint with its bearer key, and retries while the endpoint answers 429 or 5xx."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any, TypeVar

from tuneyard.errors import Unavailable

T = TypeVar("T")


def bearer_client(timeout: float, api_key: str | None) -> Any:
    """An httpx client that sends the key (if any) as a bearer token."""
    import httpx

    return httpx.Client(
        timeout=httpx.Timeout(timeout, connect=10.0),
        headers={"Authorization": f"Bearer {api_key}"} if api_key else {},
    )


def with_retries(call: Callable[[], T], retries: int, backoff: float, most: float) -> T:
    """`call()`, again after a wait while it raises EndpointFailed (busy or broken for now):
    the Retry-After the endpoint asked for, else exponential backoff with jitter, at most
    `most` seconds; Unavailable once `retries` retries have failed too."""
    from tuneyard.chat.backends import EndpointFailed

    attempt = 0
    while True:
        try:
            return call()
        except EndpointFailed as exc:
            if attempt >= retries:
                raise Unavailable(f"{exc.message} (gave up after {attempt + 1} attempts)") from None
            delay = exc.retry_after
            if delay is None:
                delay = backoff * 2**attempt * (1 + random.random() / 2)
            attempt += 1
            time.sleep(min(delay, most))
