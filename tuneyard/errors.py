"""The one error hierarchy: each error carries the HTTP status the API answers with."""

from __future__ import annotations


class AppError(Exception):
    status = 400

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.message = message
        self.headers: dict[str, str] = {}
        if status is not None:
            self.status = status


class Invalid(AppError):
    status = 422


class NotFound(AppError):
    status = 404


class Conflict(AppError):
    status = 409


class Unauthorized(AppError):
    status = 401


class Forbidden(AppError):
    status = 403


class TooLarge(AppError):
    status = 413


class Unavailable(AppError):
    status = 503


class TooManyRequests(AppError):
    """Refused for now; the Retry-After header says in how many seconds to try again."""

    status = 429

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = max(1, int(retry_after))
        self.headers = {"Retry-After": str(self.retry_after)}
