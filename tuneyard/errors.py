"""The one error hierarchy: each error carries the HTTP status the API answers with.

A subclass's docstring describes its status in the API's documentation.
"""

from __future__ import annotations

from typing import Any


class AppError(Exception):
    status = 400

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.message = message
        self.headers: dict[str, str] = {}
        if status is not None:
            self.status = status


class BadRequest(AppError):
    """The body cannot be read: not UTF-8 JSON, or a broken multipart form."""

    status = 400


class Invalid(AppError):
    """The request is not valid; the detail says what to fix."""

    status = 422


class NotFound(AppError):
    """Nothing by that id or name in your project."""

    status = 404


class Conflict(AppError):
    """The object's state forbids it now (a name taken, a job using it, not ready yet)."""

    status = 409


class Unauthorized(AppError):
    """No token, or a token that is unknown, revoked or expired."""

    status = 401


class Forbidden(AppError):
    """Your role does not allow it."""

    status = 403


class TooLarge(AppError):
    """The upload or body is over its size limit."""

    status = 413


class Unavailable(AppError):
    """A service it needs (a serving tool, a remote model, training) cannot be used now."""

    status = 503


class TooManyRequests(AppError):
    """Refused for now; the Retry-After header says in how many seconds to try again."""

    status = 429

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = max(1, int(retry_after))
        self.headers = {"Retry-After": str(self.retry_after)}


def error_responses(model: type) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI responses of every error status, each with `model` as its body."""
    return {
        cls.status: {"model": model, "description": cls.__doc__}
        for cls in AppError.__subclasses__()
    }
