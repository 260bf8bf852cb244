"""Counts of each entity, trainings per day, and base model usage, for one project; and the
team's live workers with the jobs they run."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from tuneyard.auth.service import Principal
from tuneyard.config import get_settings
from tuneyard.jobs.workers import live_workers
from tuneyard.models import (
    BaseModel,
    CompleteModel,
    CustomizedModel,
    Dataset,
    DeployEnvironment,
    Job,
    LiveModel,
    ThirdPartyModel,
    Training,
    utcnow,
)

# Each is a table of one project's rows.
COUNTED: dict[
    str,
    type[BaseModel]
    | type[Dataset]
    | type[Training]
    | type[CustomizedModel]
    | type[CompleteModel]
    | type[LiveModel]
    | type[ThirdPartyModel]
    | type[DeployEnvironment],
] = {
    "base_models": BaseModel,
    "datasets": Dataset,
    "trainings": Training,
    "customized_models": CustomizedModel,
    "complete_models": CompleteModel,
    "live_models": LiveModel,
    "third_party_models": ThirdPartyModel,
    "deploy_environments": DeployEnvironment,
}


def counts(session: Session, principal: Principal) -> dict[str, int]:
    return {
        name: int(
            session.scalar(
                select(func.count())
                .select_from(table)
                .where(table.project_id == principal.project_id)
            )
            or 0
        )
        for name, table in COUNTED.items()
    }


def trainings_per_day(session: Session, principal: Principal, days: int = 7) -> list[dict]:
    """One entry per day (oldest first, today last): trainings started, by current status."""
    today = utcnow().date()
    first = today - timedelta(days=days - 1)
    since = utcnow() - timedelta(days=days)
    rows = session.execute(
        select(Training.created_at, Training.status).where(
            Training.project_id == principal.project_id, Training.created_at >= since
        )
    )
    per_day: dict[str, dict[str, Any]] = {
        (first + timedelta(days=i)).isoformat(): {"total": 0} for i in range(days)
    }
    for created_at, status in rows:
        day = per_day.get(created_at.date().isoformat())
        if day is not None:
            day["total"] += 1
            day[status] = day.get(status, 0) + 1
    return [{"day": day, **values} for day, values in per_day.items()]


def base_model_usage(session: Session, principal: Principal, limit: int = 10) -> list[dict]:
    """Base models by how many trainings and customized models use them, most used first."""
    trainings = (
        select(Training.base_model_id, func.count().label("n"))
        .where(Training.project_id == principal.project_id)
        .group_by(Training.base_model_id)
        .subquery()
    )
    customized = (
        select(CustomizedModel.base_model_id, func.count().label("n"))
        .where(CustomizedModel.project_id == principal.project_id)
        .group_by(CustomizedModel.base_model_id)
        .subquery()
    )
    used = func.coalesce(trainings.c.n, 0)
    rows = session.execute(
        select(BaseModel.technical_name, used, func.coalesce(customized.c.n, 0))
        .outerjoin(trainings, trainings.c.base_model_id == BaseModel.id)
        .outerjoin(customized, customized.c.base_model_id == BaseModel.id)
        .where(BaseModel.project_id == principal.project_id)
        .order_by(used.desc(), BaseModel.technical_name)
        .limit(limit)
    )
    return [
        {"base_model": name, "trainings": int(n_train), "customized_models": int(n_custom)}
        for name, n_train, n_custom in rows
    ]


def workers(session: Session, principal: Principal) -> list[dict[str, Any]]:
    """The workers seen alive (shared by every project), by host, with the jobs each runs:
    this project's in full, other projects' only counted."""
    live = live_workers(session, get_settings())
    running = session.scalars(
        select(Job)
        .where(Job.status == "running", Job.worker_id.in_([worker.id for worker in live]))
        .order_by(Job.started_at)
    ).all()
    listed = []
    for worker in live:
        jobs = [job for job in running if job.worker_id == worker.id]
        own = [job for job in jobs if job.project_id == principal.project_id]
        listed.append(
            {
                "id": worker.id,
                "host": worker.host,
                "started_at": worker.started_at,
                "seen_at": worker.seen_at,
                "jobs": [
                    {
                        "id": job.id,
                        "kind": job.kind,
                        "progress": job.progress,
                        "message": job.message,
                        "attempt": job.attempt,
                    }
                    for job in own
                ],
                "other_projects_jobs": len(jobs) - len(own),
            }
        )
    return listed


def overview(session: Session, principal: Principal) -> dict[str, Any]:
    return {
        "counts": counts(session, principal),
        "trainings_per_day": trainings_per_day(session, principal),
        "base_model_usage": base_model_usage(session, principal),
        "workers": workers(session, principal),
    }
