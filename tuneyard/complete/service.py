"""Saving customized models into complete models; listing, deleting, exporting and pushing them.

A save creates its complete model at once (status "saving") and a job that merges the
adapter into its base; the model's folder appears only when the job has written all of it.
Deleting a complete model removes its folder; models deployed from it keep their own copies.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from tuneyard import modelref
from tuneyard.auth.service import Principal
from tuneyard.complete.schemas import DTYPES
from tuneyard.config import get_settings
from tuneyard.customized.service import get_customized
from tuneyard.errors import Conflict, Invalid, NotFound
from tuneyard.jobs import service as jobs
from tuneyard.jobs.keys import Resource, UseKey
from tuneyard.models import BaseModel, CompleteModel, CustomizedModel, Job, new_id, utcnow
from tuneyard.pagination import paginate
from tuneyard.storage import Layout, delete_on_commit, partial_path

SAVE_JOB = "complete.save"
PUSH_JOB = "complete.push"
STATUSES = ("saving", "ready", "failed")


def complete_model_name(customized_name: str, save_id: str) -> str:
    """`{customized_name}_s_{first4(save uuid)}`."""
    return f"{customized_name}_s_{save_id.replace('-', '')[:4]}"


def get_complete(session: Session, principal: Principal, id_or_name: str) -> CompleteModel:
    """A complete model by id or by name."""
    row = session.get(CompleteModel, id_or_name)
    if row is None or row.project_id != principal.project_id:
        row = session.scalar(
            select(CompleteModel).where(
                CompleteModel.project_id == principal.project_id,
                CompleteModel.name == id_or_name,
            )
        )
    if row is None:
        raise NotFound(
            f"No complete model '{id_or_name}'. List them with `tuneyard complete list`."
        )
    return row


def list_complete(
    session: Session,
    principal: Principal,
    customized_model_id: str | None = None,
    limit: int = 50,
    offset: int = 0,
):
    stmt = select(CompleteModel).where(CompleteModel.project_id == principal.project_id)
    if customized_model_id:
        stmt = stmt.where(CompleteModel.customized_model_id == customized_model_id)
    return paginate(
        session, stmt.order_by(CompleteModel.created_at.desc(), CompleteModel.id), limit, offset
    )


def usable_complete(session: Session, principal: Principal) -> list[CompleteModel]:
    """The project's complete models that are ready to use, newest first."""
    stmt = select(CompleteModel).where(
        CompleteModel.project_id == principal.project_id, CompleteModel.status == "ready"
    )
    return list(session.scalars(stmt.order_by(CompleteModel.created_at.desc(), CompleteModel.id)))


def summary(row: CompleteModel) -> dict[str, Any]:
    lineage = (row.model_card or {}).get("lineage", {})
    return {
        "id": row.id,
        "name": row.name,
        "source": row.source,
        "status": row.status,
        "dtype": row.dtype,
        "size_bytes": row.size_bytes,
        "base_model_name": lineage.get("base_model"),
        "customized_model_name": lineage.get("customized_model"),
        "job_id": row.job_id,
        "created_at": row.created_at,
    }


def _save_base(session: Session, customized: CustomizedModel) -> BaseModel:
    base = session.get(BaseModel, customized.base_model_id) if customized.base_model_id else None
    if base is None or base.project_id != customized.project_id:
        raise Conflict(
            f"The base model of customized model {customized.name} was deleted; an adapter is "
            "saved by merging it into its base, so this one can no longer be saved."
        )
    if base.status != "ready" or not base.path:
        raise Conflict(
            f"Base model '{base.technical_name}' is {base.status}; save once it is ready."
        )
    if not Path(base.path).is_dir():
        raise Conflict(
            f"The folder of base model '{base.technical_name}' ({base.path}) is gone; put it "
            "back to save models trained on it."
        )
    return base


def _free_name(session: Session, principal: Principal, customized_name: str) -> tuple[str, str]:
    """A save id whose name is not taken yet (two saves may share their first four digits)."""
    while True:
        save_id = new_id()
        name = complete_model_name(customized_name, save_id)
        taken = session.scalar(
            select(CompleteModel.id).where(
                CompleteModel.project_id == principal.project_id, CompleteModel.name == name
            )
        )
        if taken is None:
            return save_id, name


def _first_card(name: str, customized: CustomizedModel, base: BaseModel, dtype: str, method: str):
    """What is known before the merge: lineage, the training it came from, how it is saved."""
    card = customized.model_card or {}
    lineage = card.get("lineage", {})
    return {
        "name": name,
        "kind": "complete",
        "created_at": utcnow().isoformat(),
        "lineage": {
            "base_model": base.technical_name,
            "base_model_id": base.id,
            "dataset": lineage.get("dataset"),
            "dataset_id": lineage.get("dataset_id"),
            "dataset_digest": lineage.get("dataset_digest"),
            "training_id": customized.training_id or lineage.get("training_id"),
            "training_name": lineage.get("training_name", customized.train_name),
            "customized_model": customized.name,
            "customized_model_id": customized.id,
            "adapter_digest": lineage.get("adapter_digest"),
        },
        "training": card.get("training", {}),
        "metrics": card.get("metrics", {}),
        "save": {"dtype": dtype, "merge_method": method, "quantization": "none"},
    }


def start_save(
    session: Session, principal: Principal, customized_id: str, dtype: str = "bf16"
) -> CompleteModel:
    """Check everything a merge needs, create the complete model (saving) and its job."""
    from tuneyard.complete.merge import plan_merge, read_adapter
    from tuneyard.training.service import ensure_training_available

    principal.require("member")
    ensure_training_available()
    if dtype not in DTYPES:
        raise Invalid(
            f"Unknown dtype '{dtype}'; save as one of: {', '.join(DTYPES)}. Saving never "
            "quantizes: choose a quantization when you deploy."
        )
    customized = get_customized(session, principal, customized_id)
    base = _save_base(session, customized)
    assert base.path is not None, "_save_base answers a ready base, which has its folder"
    adapter = read_adapter(Path(customized.path))
    plan_merge(Path(base.path), adapter, dtype)
    save_id, name = _free_name(session, principal, customized.name)
    row = CompleteModel(
        id=save_id,
        project_id=principal.project_id,
        name=name,
        source="saved",
        status="saving",
        customized_model_id=customized.id,
        training_id=customized.training_id,
        base_model_id=base.id,
        path=str(Layout().complete_model_dir(save_id)),
        dtype=dtype,
        model_card=_first_card(name, customized, base, dtype, adapter.method),
    )
    session.add(row)
    session.flush()
    job = jobs.enqueue(
        session,
        principal,
        SAVE_JOB,
        {"complete_model_id": row.id, "dtype": dtype},
        uses=[
            UseKey(Resource.CUSTOMIZED_MODEL, customized.id),
            UseKey(Resource.BASE_MODEL, base.id),
            UseKey(Resource.COMPLETE_MODEL, row.id),
        ],
        message=f"Waiting for a worker to save {name}",
    )
    row.job_id = job.id
    return row


def delete_complete(session: Session, principal: Principal, model_id: str) -> str:
    """Remove the model and its folder; refused while a job uses it. Returns its name."""
    principal.require("member")
    row = get_complete(session, principal, model_id)
    jobs.ensure_not_in_use(
        session, UseKey(Resource.COMPLETE_MODEL, row.id), f"Complete model {row.name}"
    )
    folder = Path(row.path)
    session.delete(row)
    session.flush()
    delete_on_commit(session, row, folder, partial_path(folder))
    return row.name


def _ready_folder(row: CompleteModel) -> Path:
    if row.status != "ready":
        reason = f" ({row.error})" if row.error else ""
        raise Conflict(f"Complete model {row.name} is {row.status}{reason}; it has no files yet.")
    folder = Path(row.path)
    if not folder.is_dir():
        raise Conflict(f"The folder of complete model {row.name} ({folder}) is gone.")
    return folder


def check_archive_format(fmt: str) -> None:
    from tuneyard.complete.archive import FORMATS

    if fmt not in FORMATS:
        raise Invalid(f"Unknown archive format '{fmt}'; use one of: {', '.join(FORMATS)}.")


def complete_archive(session: Session, principal: Principal, model_id: str) -> tuple[Path, str]:
    """The folder to archive and the name its members go under."""
    row = get_complete(session, principal, model_id)
    return _ready_folder(row), row.name


def adapter_archive(session: Session, principal: Principal, model_id: str) -> tuple[Path, str]:
    """A customized model's adapter folder to archive, and its name."""
    row = get_customized(session, principal, model_id)
    folder = Path(row.path)
    if not folder.is_dir():
        raise Conflict(f"The folder of customized model {row.name} ({folder}) is gone.")
    return folder, row.name


def start_push(
    session: Session, principal: Principal, model_id: str, repo_id: str, public: bool = False
) -> tuple[CompleteModel, Job]:
    """Queue an upload to the hub, after a probe so an offline machine is told at once. A
    repository the push creates is private unless `public` is asked for."""
    from tuneyard.basemodels.hub import check_hub_id
    from tuneyard.complete.push import probe_for_push

    principal.require("member")
    row = get_complete(session, principal, model_id)
    _ready_folder(row)
    check_hub_id(repo_id)
    probe_for_push(get_settings().hub_timeout_seconds)
    job = jobs.enqueue(
        session,
        principal,
        PUSH_JOB,
        {"complete_model_id": row.id, "repo_id": repo_id, "public": public},
        uses=[UseKey(Resource.COMPLETE_MODEL, row.id)],
        message=f"Waiting for a worker to push {row.name} to {repo_id}",
    )
    return row, job


modelref.register_kind(modelref.ModelKind.COMPLETE, get_complete, usable_complete)
