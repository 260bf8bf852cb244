"""Live models: models deployed on a serving tool, their names, checking and removing them,
and registering one as a third-party model.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from tuneyard import modelref
from tuneyard.auth.service import Principal
from tuneyard.deploy.environments import get_environment, live_models_in
from tuneyard.deploy.sources import Source
from tuneyard.errors import Conflict, Invalid, NotFound
from tuneyard.jobs import service as jobs
from tuneyard.jobs.keys import Resource, UseKey
from tuneyard.modelref import ModelKind
from tuneyard.models import (
    Assessment,
    DeployEnvironment,
    Job,
    LiveModel,
    ThirdPartyModel,
    new_id,
    utcnow,
)
from tuneyard.pagination import paginate
from tuneyard.storage import Layout, delete_on_commit
from tuneyard.thirdparty.service import create_third_party

LIVE_STATUSES = ("deploying", "live", "failed", "stopped")


def live_model_name(source_name: str, deploy_id: str, quantization: str) -> str:
    """`{source_name}_d_{first4(deploy uuid)}_{quantization}`."""
    return f"{source_name}_d_{deploy_id.replace('-', '')[:4]}_{quantization}"


def _free_name(session: Session, project_id: str, source_name: str, quantization: str):
    while True:
        deploy_id = new_id()
        name = live_model_name(source_name, deploy_id, quantization)
        taken = session.scalar(
            select(LiveModel.id).where(LiveModel.project_id == project_id, LiveModel.name == name)
        )
        if taken is None:
            return deploy_id, name


def add_live_model(
    session: Session,
    project_id: str,
    source: Source,
    environment: DeployEnvironment,
    quantization: str,
    *,
    system: str | None = None,
    parameters: dict[str, Any] | None = None,
    job_id: str | None = None,
    deploy_card: dict[str, Any] | None = None,
    card: dict[str, Any] | None = None,
) -> LiveModel:
    """A live model for `source` on `environment`, "deploying", named by the rule, with its
    card (`deploy_card` adds to the card's deploy section, `card` to the card)."""
    from tuneyard.deploy.targets import target_for

    deploy_id, name = _free_name(session, project_id, source.name, quantization)
    row = LiveModel(
        id=deploy_id,
        project_id=project_id,
        name=name,
        tag=target_for(environment.kind).tag_for(name),
        environment_id=environment.id,
        source_kind=source.kind,
        source_id=source.id,
        source_name=source.name,
        quantization=quantization,
        status="deploying",
        system=system,
        parameters=parameters,
        job_id=job_id,
        model_card={
            "name": name,
            "kind": "live",
            "created_at": utcnow().isoformat(),
            "lineage": {**source.lineage, "source_kind": source.kind, "source": source.name},
            "deploy": {
                "environment": environment.name,
                "environment_kind": environment.kind,
                "quantization": quantization,
                **(deploy_card or {}),
            },
            **(card or {}),
        },
    )
    session.add(row)
    session.flush()
    return row


def live_base_to_reuse(
    session: Session, environment_id: str, base_id: str, quantization: str
) -> LiveModel | None:
    """A live model of the base on the environment at that quantization, which an adapter
    deployed there can go on top of."""
    return session.scalar(
        select(LiveModel).where(
            LiveModel.environment_id == environment_id,
            LiveModel.source_kind == "base",
            LiveModel.source_id == base_id,
            LiveModel.quantization == quantization,
            LiveModel.status == "live",
        )
    )


def live_models_of_job(session: Session, job_id: str) -> list[LiveModel]:
    """The live models a deploy job makes: its own, and a base it deploys first."""
    return list(session.scalars(select(LiveModel).where(LiveModel.job_id == job_id)))


def get_live(session: Session, principal: Principal, id_or_name: str) -> LiveModel:
    row = session.get(LiveModel, id_or_name)
    if row is None or row.project_id != principal.project_id:
        row = session.scalar(
            select(LiveModel).where(
                LiveModel.project_id == principal.project_id, LiveModel.name == id_or_name
            )
        )
    if row is None:
        raise NotFound(f"No live model '{id_or_name}'. List them with `tuneyard live list`.")
    return row


def list_live(
    session: Session,
    principal: Principal,
    environment_id: str | None = None,
    status: str | None = None,
    limit: int = 50,
    offset: int = 0,
):
    stmt = select(LiveModel).where(LiveModel.project_id == principal.project_id)
    if environment_id:
        stmt = stmt.where(
            LiveModel.environment_id == get_environment(session, principal, environment_id).id
        )
    if status:
        if status not in LIVE_STATUSES:
            raise Invalid(f"Unknown status '{status}'; use one of: {', '.join(LIVE_STATUSES)}.")
        stmt = stmt.where(LiveModel.status == status)
    return paginate(
        session, stmt.order_by(LiveModel.created_at.desc(), LiveModel.id), limit, offset
    )


def usable_live(session: Session, principal: Principal) -> list[LiveModel]:
    """The project's live models that are live, newest first."""
    stmt = select(LiveModel).where(
        LiveModel.project_id == principal.project_id, LiveModel.status == "live"
    )
    return list(session.scalars(stmt.order_by(LiveModel.created_at.desc(), LiveModel.id)))


def live_summary(session: Session, row: LiveModel) -> dict[str, Any]:
    environment = session.get_one(DeployEnvironment, row.environment_id)
    return {
        "id": row.id,
        "name": row.name,
        "environment_name": environment.name if environment else None,
        "environment_kind": environment.kind if environment else None,
        "source_kind": row.source_kind,
        "source_name": row.source_name,
        "quantization": row.quantization,
        "status": row.status,
        "endpoint_url": row.endpoint_url,
        "model_id": row.model_id,
        "size_bytes": row.size_bytes,
        "template_parity": (row.model_card or {}).get("template_parity", {}).get("status"),
        "created_at": row.created_at,
    }


def check_live(session: Session, principal: Principal, live_id: str) -> dict[str, Any]:
    """Ask the serving tool whether it still serves the model; live <-> stopped follows. A
    member's: the check may restart a managed server, and calls out with the stored key."""
    from tuneyard.deploy.targets import target_for
    from tuneyard.errors import AppError

    principal.require("member")
    row = get_live(session, principal, live_id)
    if row.status in ("deploying", "failed"):
        return {"ok": False, "status": row.status, "detail": row.error or "Not deployed yet."}
    environment = session.get_one(DeployEnvironment, row.environment_id)
    try:
        ok, detail = target_for(environment.kind).check(
            environment, row, live_models_in(session, environment.id)
        )
    except AppError as exc:
        ok, detail = False, exc.message
    row.status = "live" if ok else "stopped"
    row.last_checked_at = utcnow()
    return {"ok": ok, "status": row.status, "detail": detail}


def _end_fidelity_checks(session: Session, principal: Principal, live_id: str) -> set[str]:
    """The fidelity checks a deploy queued for a live model end with it: queued ones are
    cancelled, running ones asked to stop. Returns their job ids."""
    job_ids = session.scalars(
        select(Job.id)
        .join(Assessment, Assessment.job_id == Job.id)
        .where(
            Assessment.project_id == principal.project_id,
            Assessment.config["live_model_id"].as_string() == live_id,
            Job.status.in_(jobs.ACTIVE),
        )
    ).all()
    for job_id in job_ids:
        jobs.cancel_job(session, principal, job_id)
    return set(job_ids)


def delete_live(session: Session, principal: Principal, live_id: str) -> str:
    """Remove the model from its serving tool and forget it. Registered entries stay.

    The tool is asked last, once the database has taken the delete, and its files go after
    the commit. Taking a model off a tool cannot be rolled back: should the commit still
    fail, the row stays with its files, a check reports it stopped, and deleting it again
    finishes (removing is a no-op on a tool that no longer has the model).
    """
    from tuneyard.deploy.targets import target_for

    principal.require("member")
    row = get_live(session, principal, live_id)
    checks = _end_fidelity_checks(session, principal, row.id)
    busy = [
        job
        for job in jobs.active_jobs_using(session, UseKey(Resource.LIVE_MODEL, row.id))
        if job.id not in checks
    ]
    if busy:
        raise Conflict(
            f"Live model {row.name} is in use by {busy[0].kind} job {busy[0].id} "
            f"({busy[0].status}); wait for it or cancel it with "
            f"`tuneyard jobs cancel {busy[0].id}`."
        )
    environment = session.get_one(DeployEnvironment, row.environment_id)
    others = [live for live in live_models_in(session, environment.id) if live.id != row.id]
    session.delete(row)
    session.flush()
    target_for(environment.kind).remove(environment, row, others)
    delete_on_commit(session, row, Layout().live_model_dir(row.id))
    return row.name


def register_live(
    session: Session,
    principal: Principal,
    live_id: str,
    name: str | None = None,
    description: str | None = None,
    private: bool = False,
) -> ThirdPartyModel:
    """A third-party model entry for the live model's OpenAI-compatible endpoint.

    The entry stores no key: while it points at this live model, requests take the key of the
    environment (see tuneyard.thirdparty.service.third_party_api_key)."""
    principal.require("member")
    row = get_live(session, principal, live_id)
    if row.status != "live" or not row.endpoint_url or not row.model_id:
        raise Conflict(f"Live model {row.name} is {row.status}; register it once it is live.")
    environment = session.get_one(DeployEnvironment, row.environment_id)
    entry = create_third_party(
        session,
        principal,
        name=name or row.name,
        provider="ollama" if environment.kind == "ollama" else "openai-compatible",
        model_name=row.model_id,
        model_type="chat",
        base_url=row.endpoint_url,
        description=description
        if description is not None
        else f"Registered from live model {row.name} on {environment.name}.",
        private=private,
        live_model_id=row.id,
    )
    return entry


def live_api_key(session: Session, live: LiveModel) -> str | None:
    """The key requests to the live model's endpoint carry: its environment's."""
    from tuneyard.deploy.targets import environment_api_key

    environment = session.get(DeployEnvironment, live.environment_id)
    return environment_api_key(environment) if environment is not None else None


modelref.register_kind(ModelKind.LIVE, get_live, usable_live)
