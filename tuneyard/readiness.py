"""Readiness: whether this Tuneyard can do its work now, for an orchestrator's probe. It
says what is wrong in words a person acts on, and never reveals addresses, paths or secrets."""

from __future__ import annotations

from pydantic import BaseModel, Field
from sqlalchemy.exc import SQLAlchemyError

from tuneyard.config import Settings, get_settings


class Readiness(BaseModel):
    ready: bool = Field(
        description="True when the database answers, its schema is current "
        "and a worker was seen recently."
    )
    reasons: list[str] = Field(description="What keeps it from being ready; empty when ready.")
    database: bool = Field(description="The database answers.")
    schema_current: bool = Field(description="The database's schema is the one this code needs.")
    workers: int = Field(description="Workers seen within the stale-job period.")
    backlog: int = Field(description="Jobs queued, waiting for a worker.")


def check_readiness(settings: Settings | None = None) -> Readiness:
    from tuneyard.db import UPGRADE_COMMAND, schema_state, session_scope
    from tuneyard.jobs.workers import backlog, live_workers

    settings = settings or get_settings()
    try:
        state = schema_state(settings)
    except SQLAlchemyError:
        return Readiness(
            ready=False,
            reasons=["The database does not answer."],
            database=False,
            schema_current=False,
            workers=0,
            backlog=0,
        )
    reasons = []
    if state.newer_than_code:
        reasons.append("The database's schema is newer than this Tuneyard; upgrade Tuneyard.")
    elif not state.up_to_date:
        reasons.append(f"The database's schema is behind this Tuneyard; run `{UPGRADE_COMMAND}`.")
    workers = queued = 0
    if state.up_to_date:
        try:
            with session_scope(settings) as session:
                workers = len(live_workers(session, settings))
                queued = backlog(session)
        except SQLAlchemyError:
            reasons.append("The database does not answer.")
        else:
            if not workers:
                reasons.append(
                    "No worker was seen recently: start one with `tuneyard worker` (or "
                    "`tuneyard serve` without --no-worker)."
                )
    return Readiness(
        ready=not reasons,
        reasons=reasons,
        database=True,
        schema_current=state.up_to_date,
        workers=workers,
        backlog=queued,
    )
