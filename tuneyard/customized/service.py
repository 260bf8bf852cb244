"""Listing, reading and deleting customized models; promoting a checkpoint to one.

Deleting removes the adapter only: complete models saved from it keep their own files.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from tuneyard import modelref
from tuneyard.auth.service import Principal
from tuneyard.cards import file_digest, folder_size, write_readme
from tuneyard.errors import Conflict, Invalid, NotFound
from tuneyard.jobs import service as jobs
from tuneyard.jobs.keys import Resource, UseKey
from tuneyard.models import CustomizedModel, Training, new_id, utcnow
from tuneyard.pagination import paginate
from tuneyard.storage import Layout, atomic_dir, delete_on_commit, discard_on_rollback
from tuneyard.training.checkpoints import CHECKPOINT_PREFIX, checkpoints
from tuneyard.training.results import customized_model_name

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
)


def get_customized(session: Session, principal: Principal, model_id: str) -> CustomizedModel:
    row = session.get(CustomizedModel, model_id)
    if row is None or row.project_id != principal.project_id:
        row = session.scalar(
            select(CustomizedModel).where(
                CustomizedModel.project_id == principal.project_id, CustomizedModel.name == model_id
            )
        )
    if row is None:
        raise NotFound(
            f"No customized model '{model_id}'. List them with `tuneyard customized list`."
        )
    return row


def list_customized(
    session: Session, principal: Principal, base_model_id: str | None = None, limit=50, offset=0
):
    stmt = select(CustomizedModel).where(CustomizedModel.project_id == principal.project_id)
    if base_model_id:
        stmt = stmt.where(CustomizedModel.base_model_id == base_model_id)
    return paginate(
        session, stmt.order_by(CustomizedModel.created_at.desc(), CustomizedModel.id), limit, offset
    )


def usable_customized(session: Session, principal: Principal) -> list[CustomizedModel]:
    """The project's customized models, newest first."""
    stmt = select(CustomizedModel).where(CustomizedModel.project_id == principal.project_id)
    return list(
        session.scalars(stmt.order_by(CustomizedModel.created_at.desc(), CustomizedModel.id))
    )


def summary(row: CustomizedModel) -> dict:
    card = row.model_card or {}
    return {
        "id": row.id,
        "name": row.name,
        "base_model_name": card.get("lineage", {}).get("base_model"),
        "train_name": row.train_name,
        "method": card.get("training", {}).get("method"),
        "final_loss": card.get("metrics", {}).get("final_loss"),
        "checkpoint_step": row.checkpoint_step,
        "created_at": row.created_at,
    }


def delete_customized(session: Session, principal: Principal, model_id: str) -> None:
    principal.require("member")
    row = get_customized(session, principal, model_id)
    jobs.ensure_not_in_use(
        session, UseKey(Resource.CUSTOMIZED_MODEL, row.id), f"Customized model {row.name}"
    )
    session.delete(row)
    session.flush()
    delete_on_commit(session, row, Path(row.path))


def promote_checkpoint(
    session: Session, principal: Principal, training_id: str, step: int
) -> CustomizedModel:
    """Make a customized model from one checkpoint of a LoRA training."""
    from tuneyard.training.service import get_training

    principal.require("member")
    training = get_training(session, principal, training_id)
    if training.params.get("adapter") == "full":
        raise Invalid("Checkpoints of a full fine-tune are not adapters; they cannot be promoted.")
    layout = Layout()
    found = {
        int(p.name.removeprefix(CHECKPOINT_PREFIX)): p
        for p in checkpoints(layout.training_dir(training.id))
    }
    if step not in found:
        have = ", ".join(str(s) for s in sorted(found)) or "none"
        raise NotFound(f"Training {training.name} has no checkpoint at step {step} (has: {have}).")
    name = (
        customized_model_name(
            training.base_model_name, training.name, training.created_at, training.id
        )
        + f"_step{step}"
    )
    if session.scalar(
        select(CustomizedModel).where(
            CustomizedModel.project_id == principal.project_id, CustomizedModel.name == name
        )
    ):
        raise Conflict(f"Checkpoint {step} of {training.name} is already the model {name}.")
    source = found[step]
    model_id = new_id()
    target = layout.customized_model_dir(model_id)
    with atomic_dir(target) as staging:
        for filename in (*ADAPTER_FILES, *TOKENIZER_FILES):
            if (source / filename).exists():
                shutil.copy2(source / filename, staging / filename)
        if not (staging / "adapter_model.safetensors").exists():
            raise Invalid(f"Checkpoint {step} holds no adapter weights.")
        card: dict[str, Any] = {
            "name": name,
            "kind": "customized",
            "created_at": utcnow().isoformat(),
            "lineage": {
                "base_model": training.base_model_name,
                "base_model_id": training.base_model_id,
                "dataset": training.dataset_name,
                "dataset_digest": training.dataset_digest,
                "training_id": training.id,
                "training_name": training.name,
                "checkpoint_step": step,
                "adapter_digest": file_digest(staging / "adapter_model.safetensors"),
            },
            "training": {"method": training.method, "params": training.params},
            "metrics": _metrics_at(session, training, step),
            "sizes": {"bytes": folder_size(staging)},
        }
        write_readme(staging, card)
    row = CustomizedModel(
        id=model_id,
        project_id=principal.project_id,
        name=name,
        training_id=training.id,
        base_model_id=training.base_model_id,
        train_name=training.name,
        checkpoint_step=step,
        path=str(target),
        size_bytes=card["sizes"]["bytes"],
        model_card=card,
    )
    session.add(row)
    discard_on_rollback(session, target)
    session.flush()
    return row


def _metrics_at(session: Session, training: Training, step: int) -> dict:
    from tuneyard.models import TrainingMetric

    row = session.scalar(
        select(TrainingMetric)
        .where(
            TrainingMetric.training_id == training.id,
            TrainingMetric.kind == "train",
            TrainingMetric.step <= step,
        )
        .order_by(TrainingMetric.step.desc())
        .limit(1)
    )
    return {"step": step, **({"loss": row.data.get("loss")} if row else {})}


modelref.register_kind(modelref.ModelKind.CUSTOMIZED, get_customized, usable_customized)
