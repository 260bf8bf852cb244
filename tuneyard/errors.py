"""The one error hierarchy: each error carries the HTTP status the API answers with."""

from __future__ import annotations


class AppError(Exception):
    status = 400

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.message = message
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
