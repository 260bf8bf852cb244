"""Deployment environments, deploys and live models.

A deploy checks everything it can before any upload (the target supports the architecture,
the quantization is allowed, the chat template exists and the deployment template renders the
same prompt), then creates the live model (status "deploying") and a job that hands the model
to the serving tool. The live model is "live" only once the tool answers for it.
"""

from __future__ import annotations

import math
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from tuneyard import modelref
from tuneyard.auth.service import Principal
from tuneyard.basemodels.service import base_model_of
from tuneyard.deploy.quantization import NO_QUANTIZATION, check_quantization
from tuneyard.deploy.schemas import (
    ENVIRONMENT_KINDS,
    ENVIRONMENT_NAME_PATTERN,
    URL_PATTERN,
)
from tuneyard.errors import Conflict, Invalid, NotFound
from tuneyard.jobs import service as jobs
from tuneyard.jobs.keys import Resource, UseKey, model_key
from tuneyard.modelref import Capability, ModelKind
from tuneyard.models import (
    BaseModel,
    DeployEnvironment,
    LiveModel,
    ThirdPartyModel,
    new_id,
    utcnow,
)
from tuneyard.outbound import api_key_problem, url_problem
from tuneyard.pagination import paginate
from tuneyard.secrets import encrypt_secret
from tuneyard.storage import Layout, delete_on_commit
from tuneyard.thirdparty.service import create_third_party

DEPLOY_JOB = "deploy.model"
LIVE_STATUSES = ("deploying", "live", "failed", "stopped")
ENVIRONMENT_NAME = re.compile(ENVIRONMENT_NAME_PATTERN)


def live_model_name(source_name: str, deploy_id: str, quantization: str) -> str:
    """`{source_name}_d_{first4(deploy uuid)}_{quantization}`."""
    return f"{source_name}_d_{deploy_id.replace('-', '')[:4]}_{quantization}"


# -- environments ---------------------------------------------------------------------------


def _check_url(url: str | None, kind: str) -> str | None:
    if url is None:
        return None
    url = url.strip().rstrip("/")
    if not re.match(URL_PATTERN, url) or url_problem(url):
        raise Invalid(
            f"'{url}' is not an http(s) address; give one like http://127.0.0.1:11434 for {kind}."
        )
    return url


def _check_api_key(api_key: str | None) -> str | None:
    if api_key is None:
        return None
    api_key = api_key.strip()
    if problem := api_key_problem(api_key):
        raise Invalid(f"The API key cannot be sent: {problem}.")
    return api_key


def get_environment(session: Session, principal: Principal, id_or_name: str) -> DeployEnvironment:
    row = session.get(DeployEnvironment, id_or_name)
    if row is None or row.project_id != principal.project_id:
        row = session.scalar(
            select(DeployEnvironment).where(
                DeployEnvironment.project_id == principal.project_id,
                DeployEnvironment.name == id_or_name,
            )
        )
    if row is None:
        raise NotFound(
            f"No deployment environment '{id_or_name}'. List them with `tuneyard env list`."
        )
    return row


def list_environments(session: Session, principal: Principal, limit: int = 50, offset: int = 0):
    stmt = select(DeployEnvironment).where(DeployEnvironment.project_id == principal.project_id)
    return paginate(
        session, stmt.order_by(DeployEnvironment.name, DeployEnvironment.id), limit, offset
    )


def environment_out(row: DeployEnvironment) -> dict[str, Any]:
    return {
        "id": row.id,
        "name": row.name,
        "kind": row.kind,
        "url": row.url,
        "managed": is_managed(row),
        "port": row.port,
        "has_api_key": bool(row.api_key_encrypted),
        "description": row.description,
        "last_checked_at": row.last_checked_at,
        "last_check_error": row.last_check_error,
        "created_at": row.created_at,
    }


def is_managed(row: DeployEnvironment) -> bool:
    """A llama.cpp environment without an address: Tuneyard runs its server."""
    return row.kind == "llama.cpp" and row.url is None


def _check_name_free(session: Session, principal: Principal, name: str, own_id: str | None = None):
    if not ENVIRONMENT_NAME.match(name):
        raise Invalid(
            f"Environment name '{name}' may use only letters, digits, '.', '_' and '-' "
            "(at most 100 characters)."
        )
    taken = session.scalar(
        select(DeployEnvironment.id).where(
            DeployEnvironment.project_id == principal.project_id, DeployEnvironment.name == name
        )
    )
    if taken is not None and taken != own_id:
        raise Conflict(f"A deployment environment named '{name}' exists; choose another name.")


def create_environment(
    session: Session,
    principal: Principal,
    name: str,
    kind: str,
    url: str | None = None,
    port: int | None = None,
    api_key: str | None = None,
    description: str = "",
) -> DeployEnvironment:
    principal.require("admin")
    if kind not in ENVIRONMENT_KINDS:
        raise Invalid(
            f"Unknown environment kind '{kind}'; use one of: {', '.join(ENVIRONMENT_KINDS)}."
        )
    _check_name_free(session, principal, name)
    url = _check_url(url, kind)
    if url is None and kind != "llama.cpp":
        raise Invalid(
            f"A {kind} environment needs the server's address (url), e.g. "
            + ("http://127.0.0.1:11434." if kind == "ollama" else "http://127.0.0.1:8000/v1.")
        )
    if port is not None and url is not None:
        raise Invalid(
            "port is for a llama.cpp server that Tuneyard starts; with a url, put the port in it."
        )
    row = DeployEnvironment(
        project_id=principal.project_id,
        name=name,
        kind=kind,
        url=url,
        port=port if url is None and kind == "llama.cpp" else None,
        api_key_encrypted=encrypt_secret(_check_api_key(api_key)),
        description=description,
    )
    _ensure_managed_key(row)
    session.add(row)
    session.flush()
    return row


def _ensure_managed_key(row: DeployEnvironment) -> None:
    """A llama.cpp server Tuneyard runs answers only requests with its environment's key, so
    nobody else on the machine can use it; the key is made here (an environment made before
    servers had keys gets one on its next deploy)."""
    if is_managed(row) and not row.api_key_encrypted:
        row.api_key_encrypted = encrypt_secret(secrets.token_urlsafe(32))


def update_environment(
    session: Session,
    principal: Principal,
    environment_id: str,
    name: str | None = None,
    url: str | None = None,
    api_key: str | None = None,
    description: str | None = None,
) -> DeployEnvironment:
    principal.require("admin")
    row = get_environment(session, principal, environment_id)
    if name is not None:
        _check_name_free(session, principal, name, row.id)
        row.name = name
    if url is not None:
        if is_managed(row):
            raise Invalid(
                f"Environment {row.name} runs its own llama.cpp server and has no address to "
                "change; create an environment with a url to attach to another server."
            )
        new_url = _check_url(url, row.kind)
        if new_url != row.url and api_key is None:
            row.api_key_encrypted = None  # the key was meant for the old address only
        row.url = new_url
    if api_key is not None:
        if is_managed(row):
            raise Invalid(
                f"Environment {row.name} runs its own llama.cpp server, whose key Tuneyard makes "
                "and keeps; there is no key to set."
            )
        row.api_key_encrypted = encrypt_secret(_check_api_key(api_key))
    if description is not None:
        row.description = description
    return row


def live_api_key(session: Session, live: LiveModel) -> str | None:
    """The key requests to the live model's endpoint carry: its environment's."""
    from tuneyard.deploy.targets import environment_api_key

    environment = session.get(DeployEnvironment, live.environment_id)
    return environment_api_key(environment) if environment is not None else None


def live_models_in(session: Session, environment_id: str) -> list[LiveModel]:
    return list(
        session.scalars(
            select(LiveModel)
            .where(LiveModel.environment_id == environment_id)
            .order_by(LiveModel.created_at, LiveModel.id)
        )
    )


def delete_environment(session: Session, principal: Principal, environment_id: str) -> None:
    """Refused while live models use it; a managed llama.cpp server is stopped."""
    from tuneyard.deploy.targets import target_for

    principal.require("admin")
    row = get_environment(session, principal, environment_id)
    jobs.ensure_not_in_use(
        session, UseKey(Resource.DEPLOY_ENVIRONMENT, row.id), f"Environment {row.name}"
    )
    remaining = live_models_in(session, row.id)
    if remaining:
        names = ", ".join(live.name for live in remaining[:5])
        raise Conflict(
            f"Environment {row.name} still has {len(remaining)} live model(s) ({names}); "
            "delete them first with `tuneyard live rm NAME`."
        )
    session.delete(row)
    session.flush()
    # Last, once the database has taken the delete: stopping a server cannot be undone.
    target_for(row.kind).forget_environment(row)
    delete_on_commit(session, row, Layout().environment_dir(row.id))


def test_environment(session: Session, principal: Principal, environment_id: str) -> dict:
    """Ask the tool whether it answers; the outcome is kept on the environment. A member's:
    the test may start a managed server, and calls out with the stored key."""
    from tuneyard.deploy.targets import target_for
    from tuneyard.errors import AppError

    principal.require("member")
    row = get_environment(session, principal, environment_id)
    try:
        detail, models = target_for(row.kind).test(row)
        ok = True
    except AppError as exc:
        detail, models, ok = exc.message, [], False
    row.last_checked_at = utcnow()
    row.last_check_error = None if ok else detail
    return {"ok": ok, "detail": detail, "models": models}


# -- sources --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """What a deploy hands over, resolved from the database into plain values."""

    kind: str  # base, customized, complete
    id: str
    name: str
    model_dir: Path  # the full model (for a customized model: its base)
    adapter_dir: Path | None  # a customized model's adapter
    base_model_id: str | None
    base_name: str | None
    deployment_template: str | None
    stop: list[str]
    lineage: dict[str, Any]


def _template_of(base: BaseModel | None, folder: Path) -> tuple[str | None, list[str]]:
    """The base's deployment template and stop tokens, or ones derived from the folder."""
    if base is not None and base.deployment_template:
        return base.deployment_template, list(base.model_card.get("deployment_stop_tokens", []))
    from tuneyard.basemodels.card import read_chat_template, read_model_card
    from tuneyard.basemodels.template import derive_template

    chat_template, _ = read_chat_template(folder)
    derived = derive_template(chat_template, read_model_card(folder)["special_tokens"]["eos"])
    return derived.text, derived.stop


def _ready_dir(path: str | None, what: str) -> Path:
    folder = Path(path) if path else None
    if folder is None or not folder.is_dir():
        raise Conflict(f"The folder of {what} ({path}) is gone; it cannot be deployed.")
    return folder


def resolve_source(session: Session, principal: Principal, kind: str, source_id: str) -> Source:
    """The model a deploy names, checked to be deployable and to have its files."""
    found = modelref.find(session, principal, kind, source_id, Capability.DEPLOY)
    if found.kind is ModelKind.BASE:
        base = found.row
        if base.status != "ready":
            raise Conflict(
                f"Base model '{base.technical_name}' is {base.status}; deploy it once ready."
            )
        folder = _ready_dir(base.path, f"base model '{base.technical_name}'")
        template, stop = _template_of(base, folder)
        return Source(
            "base",
            base.id,
            base.technical_name,
            folder,
            None,
            base.id,
            base.technical_name,
            template,
            stop,
            {"base_model": base.technical_name, "base_model_id": base.id},
        )
    row = found.row
    if found.kind is ModelKind.COMPLETE:
        if row.status != "ready":
            raise Conflict(f"Complete model {row.name} is {row.status}; deploy it once ready.")
        folder = _ready_dir(row.path, f"complete model {row.name}")
        template, stop = _template_of(base_model_of(session, row), folder)
        lineage = dict((row.model_card or {}).get("lineage", {}))
        lineage.update(complete_model=row.name, complete_model_id=row.id)
        return Source(
            "complete",
            row.id,
            row.name,
            folder,
            None,
            row.base_model_id,
            lineage.get("base_model"),
            template,
            stop,
            lineage,
        )
    adapter_dir = _ready_dir(row.path, f"customized model {row.name}")
    base = base_model_of(session, row)
    if base is None:
        raise Conflict(
            f"The base model of customized model {row.name} was deleted; an adapter is "
            "served on its base, so deploy a complete model saved from it instead."
        )
    if base.status != "ready":
        raise Conflict(f"Base model '{base.technical_name}' is {base.status}.")
    base_dir = _ready_dir(base.path, f"base model '{base.technical_name}'")
    template, stop = _template_of(base, base_dir)
    lineage = dict((row.model_card or {}).get("lineage", {}))
    lineage.update(customized_model=row.name, customized_model_id=row.id)
    return Source(
        "customized",
        row.id,
        row.name,
        base_dir,
        adapter_dir,
        base.id,
        base.technical_name,
        template,
        stop,
        lineage,
    )


# -- deploying ------------------------------------------------------------------------------


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


def _check_parameters(parameters: dict[str, Any] | None) -> dict[str, Any]:
    parameters = dict(parameters or {})
    for key, value in parameters.items():
        if not re.match(r"^[a-z_][a-z0-9_]*$", key):
            raise Invalid(f"Parameter name '{key}' is not a serving parameter name.")
        if not isinstance(value, str | int | float | bool | list):
            raise Invalid(f"Parameter '{key}' must be a number, a string, a bool or a list.")
        numbers = value if isinstance(value, list) else [value]
        if any(isinstance(number, float) and not math.isfinite(number) for number in numbers):
            raise Invalid(f"Parameter '{key}' must be a finite number, not NaN or Infinity.")
    return parameters


def start_deploy(
    session: Session,
    principal: Principal,
    source_kind: str,
    source_id: str,
    environment_id: str,
    quantization: str = NO_QUANTIZATION,
    system: str | None = None,
    parameters: dict[str, Any] | None = None,
    allow_template_mismatch: bool = False,
) -> LiveModel:
    """Preflight, then create the live model (deploying) and its job."""
    from tuneyard.deploy.parity import check_parity
    from tuneyard.deploy.targets import target_for
    from tuneyard.training.service import ensure_training_available

    principal.require("member")
    ensure_training_available()
    check_quantization(quantization)
    parameters = _check_parameters(parameters)
    environment = get_environment(session, principal, environment_id)
    _ensure_managed_key(environment)
    source = resolve_source(session, principal, source_kind, source_id)
    target = target_for(environment.kind)
    warnings = target.preflight(environment, source, quantization)
    parity = target.template_parity(source) or check_parity(
        source.model_dir, source.deployment_template, f"base model '{source.base_name}'"
    )
    if parity.status == "mismatch" and not allow_template_mismatch:
        raise Invalid(f"Template parity check failed: {parity.detail}")
    row = add_live_model(
        session,
        principal.project_id,
        source,
        environment,
        quantization,
        system=system,
        parameters=parameters,
        deploy_card={"system": system, "parameters": parameters},
        card={"template_parity": parity.as_card(), "warnings": warnings},
    )
    job = jobs.enqueue(
        session,
        principal,
        DEPLOY_JOB,
        {"live_model_id": row.id},
        uses=[
            model_key(source.kind, source.id),
            UseKey(Resource.LIVE_MODEL, row.id),
            UseKey(Resource.DEPLOY_ENVIRONMENT, environment.id),
        ],
        message=f"Waiting for a worker to deploy {row.name} to {environment.name}",
    )
    row.job_id = job.id
    return row


# -- live models ----------------------------------------------------------------------------


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
    environment = session.get(DeployEnvironment, row.environment_id)
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
    environment = session.get(DeployEnvironment, row.environment_id)
    try:
        ok, detail = target_for(environment.kind).check(
            environment, row, live_models_in(session, environment.id)
        )
    except AppError as exc:
        ok, detail = False, exc.message
    row.status = "live" if ok else "stopped"
    row.last_checked_at = utcnow()
    return {"ok": ok, "status": row.status, "detail": detail}


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
    jobs.ensure_not_in_use(session, UseKey(Resource.LIVE_MODEL, row.id), f"Live model {row.name}")
    environment = session.get(DeployEnvironment, row.environment_id)
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
    environment = session.get(DeployEnvironment, row.environment_id)
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


modelref.register_kind(ModelKind.LIVE, get_live, usable_live)
