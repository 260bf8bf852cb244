"""Deployment environments: the serving tools a project deploys to (Ollama, llama.cpp,
OpenAI-compatible servers), their addresses and keys, and asking them whether they answer.
"""

from __future__ import annotations

import re
import secrets
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from tuneyard.auth.service import Principal
from tuneyard.deploy.schemas import (
    ENVIRONMENT_KINDS,
    ENVIRONMENT_NAME_PATTERN,
    URL_PATTERN,
)
from tuneyard.errors import Conflict, Invalid, NotFound
from tuneyard.jobs import service as jobs
from tuneyard.jobs.keys import Resource, UseKey
from tuneyard.models import (
    DeployEnvironment,
    LiveModel,
    utcnow,
)
from tuneyard.outbound import api_key_problem, url_problem
from tuneyard.pagination import paginate
from tuneyard.secrets import encrypt_secret
from tuneyard.storage import Layout, delete_on_commit

ENVIRONMENT_NAME = re.compile(ENVIRONMENT_NAME_PATTERN)


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


def managed_environments_serving(session: Session) -> list[DeployEnvironment]:
    """Every project's managed environments (see is_managed) that have live models: the
    servers Tuneyard keeps running."""
    return list(
        session.scalars(
            select(DeployEnvironment).where(
                DeployEnvironment.kind == "llama.cpp",
                DeployEnvironment.url.is_(None),
                DeployEnvironment.id.in_(
                    select(LiveModel.environment_id).where(LiveModel.status == "live")
                ),
            )
        )
    )


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
    ensure_managed_key(row)
    session.add(row)
    session.flush()
    return row


def ensure_managed_key(row: DeployEnvironment) -> None:
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
