"""The deploy job ("deploy.model"): hand a model to its environment's serving tool."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy.orm import Session

from tuneyard.auth.service import Principal
from tuneyard.db import session_scope
from tuneyard.deploy.live import add_live_model, live_base_to_reuse, live_models_of_job
from tuneyard.deploy.service import DEPLOY_JOB
from tuneyard.deploy.sources import resolve_source
from tuneyard.deploy.targets import target_for
from tuneyard.errors import AppError, NotFound
from tuneyard.jobs.registry import job_kind
from tuneyard.models import DeployEnvironment, Job, LiveModel, utcnow

PROGRESS_EVERY_SECONDS = 0.5


def mark_deploy_failed(session: Session, job: Job) -> None:
    """Whatever stopped the deploy, the live models it was making are failed and say why."""
    for row in live_models_of_job(session, job.id):
        if row.status != "live":
            row.status = "failed"
            row.error = job.error or "The deploy was cancelled before it finished."


def withdraw_failed_deploy(session: Session, job: Job) -> None:
    """A failed live model is served nowhere and keeps no files, even when the deploy was
    killed after the tool took the model and before its row said live."""
    for row in live_models_of_job(session, job.id):
        environment = session.get(DeployEnvironment, row.environment_id)
        if row.status == "failed" and environment is not None:
            target_for(environment.kind).withdraw(environment, row)


def _job_principal(row: LiveModel, job_created_by: str | None) -> Principal:
    """The deploy acts inside the live model's project, as the user who asked for it."""
    return Principal(job_created_by or "", "deploy", row.project_id, "", "admin")


def _reporter(ctx, start: float, span: float):
    last = 0.0

    def report(fraction: float, message: str) -> None:
        nonlocal last
        now = time.monotonic()
        if now - last >= PROGRESS_EVERY_SECONDS or fraction >= 1:
            last = now
            ctx.progress(start + span * max(0.0, min(1.0, fraction)), message)

    return report


def _deploy_base_first(ctx, session_factory, live_id: str) -> str:
    """An adapter that goes on top of its base: reuse a live base at the same quantization,
    or deploy the base now as a live model of its own. Returns the base's tag."""
    with session_factory() as session:
        live = session.get(LiveModel, live_id)
        environment = session.get(DeployEnvironment, live.environment_id)
        job = session.get(Job, ctx.job_id)
        principal = _job_principal(live, job.created_by)
        source = resolve_source(session, principal, live.source_kind, live.source_id)
        assert source.base_model_id is not None, "an adapter's source names its base"
        existing = live_base_to_reuse(
            session, environment.id, source.base_model_id, live.quantization
        )
        if existing is not None:
            return existing.tag
        base_source = resolve_source(session, principal, "base", source.base_model_id)
        target = target_for(environment.kind)
        base_live = add_live_model(
            session,
            live.project_id,
            base_source,
            environment,
            live.quantization,
            job_id=ctx.job_id,
            deploy_card={"deployed_for": live.name},
            card={"template_parity": live.model_card.get("template_parity", {})},
        )
        base_id, name = base_live.id, base_live.name
        session.expunge_all()
    ctx.progress(2, f"Deploying the base model {base_source.name} first, as {name}")
    try:
        deployed = target.deploy(environment, base_live, base_source, _reporter(ctx, 2, 40))
    except BaseException as exc:
        with session_factory() as session:
            row = session.get(LiveModel, base_id)
            row.status, row.error = "failed", str(exc) or type(exc).__name__
        raise
    with ctx.session() as session:
        row = session.get(LiveModel, base_id)
        row.status, row.error = "live", None
        row.endpoint_url, row.model_id, row.size_bytes = (
            deployed.endpoint_url,
            deployed.model_id,
            deployed.size_bytes,
        )
        row.model_card = {**row.model_card, "served": deployed.card}
    return base_live.tag


@job_kind(DEPLOY_JOB, on_failure=mark_deploy_failed, cleanup=withdraw_failed_deploy)
def deploy_model(ctx) -> dict:
    live_id = ctx.params["live_model_id"]

    def session_factory():
        return session_scope(ctx.settings)

    with session_factory() as session:
        live = session.get(LiveModel, live_id)
        if live is None:
            raise NotFound(f"Live model {live_id} was deleted before it was deployed.")
        environment = session.get(DeployEnvironment, live.environment_id)
        job = session.get(Job, ctx.job_id)
        source = resolve_source(
            session, _job_principal(live, job.created_by), live.source_kind, live.source_id
        )
        session.expunge_all()
    target = target_for(environment.kind)
    start = 0.0
    extra: dict[str, Any] = {
        "allow_template_mismatch": bool(ctx.params.get("allow_template_mismatch"))
    }
    if source.adapter_dir is not None and target.base_first(environment, source):
        extra["base_tag"] = _deploy_base_first(ctx, session_factory, live_id)
        start = 45.0
    ctx.progress(start + 1, f"Deploying {live.name} to {environment.name} ({environment.kind})")
    deployed = target.deploy(
        environment, live, source, _reporter(ctx, start + 1, 98 - start), **extra
    )
    with ctx.session() as session:
        row = session.get(LiveModel, live_id)
        row.status, row.error = "live", None
        row.endpoint_url, row.model_id = deployed.endpoint_url, deployed.model_id
        row.size_bytes = deployed.size_bytes
        row.last_checked_at = utcnow()
        served = dict(deployed.card)
        parity = served.pop("template_parity", None) or row.model_card.get("template_parity")
        row.model_card = {
            **row.model_card,
            "served": served,
            "size_bytes": deployed.size_bytes,
            "template_parity": parity,
        }
        env_row = session.get(DeployEnvironment, environment.id)
        port = deployed.card.get("port")
        if port and env_row.url is None and env_row.port != port:
            env_row.port = port  # a free port was picked: keep it across restarts
        check = _queue_fidelity_check(ctx, session, row)
    ctx.progress(100, f"{live.name} is live at {deployed.endpoint_url} as {deployed.model_id}")
    return {
        "live_model_id": live_id,
        "name": live.name,
        "endpoint_url": deployed.endpoint_url,
        "model_id": deployed.model_id,
        "fidelity_check": check,
    }


def _queue_fidelity_check(ctx, session: Session, row: LiveModel) -> dict[str, Any] | None:
    """Queue the fidelity check of the new live model against its source, in the unit of work
    that marks it live: a job of its own, so the deploy ends now. A check that cannot start
    leaves the deploy live and says why on the card."""
    from tuneyard.assessment.fidelity import start_live_fidelity

    size = ctx.settings.deploy_fidelity_prompts
    if not ctx.params.get("fidelity_check", True) or size < 1:
        return None
    job = session.get_one(Job, ctx.job_id)
    try:
        with session.begin_nested():
            check = start_live_fidelity(session, _job_principal(row, job.created_by), row, size)
            found = {"assessment_id": check.id, "job_id": check.job_id, "prompts": check.row_count}
    except AppError as exc:
        found = {"error": f"The fidelity check could not start: {exc.message}"}
        ctx.log.warning(found["error"])
    row.model_card = {**row.model_card, "fidelity_check": found}
    return found
