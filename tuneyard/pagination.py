"""Lists answer `{"items": [...], "total": N}`, paged with `limit` and `offset`."""

from __future__ import annotations

from typing import Generic, TypeVar

from pydantic import BaseModel
from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from tuneyard.bounds import INT64_MAX

T = TypeVar("T")

MAX_LIMIT = 500
MAX_OFFSET = INT64_MAX


class Page(BaseModel, Generic[T]):
    items: list[T]
    total: int


def paginate(session: Session, stmt: Select, limit: int, offset: int) -> tuple[list, int]:
    """Run `stmt` for one page; return (rows, total matching rows)."""
    total = session.scalar(select(func.count()).select_from(stmt.order_by(None).subquery()))
    rows = list(session.scalars(stmt.limit(limit).offset(offset)))
    return rows, int(total or 0)
