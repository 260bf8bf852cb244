"""What Tuneyard sends to the servers it calls (serving tools, third-party endpoints): their
addresses and API keys, checked when they are given, the way the HTTP client will use them, so a
malformed one is refused at input instead of failing every later request."""

from __future__ import annotations

import httpx

# An API key travels in the Authorization header: visible ASCII, no spaces.
API_KEY_PATTERN = r"^\s*[!-~]*\s*$"


def url_problem(url: str) -> str | None:
    """Why `url` is not an http(s) address the client can call, or None."""
    if any(char.isspace() for char in url):
        return "it contains a space"
    try:
        parsed = httpx.URL(url)
        if parsed.scheme not in ("http", "https"):
            return "it is not http or https"
        if not parsed.host:
            return "it has no host"
        # What connecting does with the host name; a label too long or empty fails here.
        parsed.raw_host.decode("ascii").encode("idna")
    except (httpx.InvalidURL, UnicodeError) as exc:
        return str(exc) or type(exc).__name__
    return None


def api_key_problem(api_key: str) -> str | None:
    """Why `api_key` cannot be sent as a bearer token, or None."""
    if all("!" <= char <= "~" for char in api_key):
        return None
    return "an API key is visible ASCII characters without spaces"
