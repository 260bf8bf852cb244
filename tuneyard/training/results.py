"""What a finished training leaves: a customized model (adapter) or, for a full fine-tune, a
complete model, each with its card, made from the folder the run produced, moved into place
atomically and recorded once."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import select

from tuneyard.cards import file_digest, folder_size, write_readme
from tuneyard.db import session_scope
from tuneyard.models import CompleteModel, CustomizedModel, Training, TrainingMetric, utcnow
from tuneyard.storage import Layout, atomic_dir, discard, remove_tree
from tuneyard.training.checkpoints import CHECKPOINT_PREFIX, checkpoints

RESULT_FOLDER = "result"
RESULT_ID_NAMESPACE = uuid.UUID("0b7e3c52-5d1e-4a8e-9a40-6f1f2d8e3c11")
DTYPE_NAMES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


def customized_model_name(base_name: str, train_name: str, created, training_id: str) -> str:
    """`{base}_{train}_{YYYYMMDD}_{first4(training uuid)}`, the date being the training's."""
    return f"{base_name}_{train_name}_{created:%Y%m%d}_{training_id.replace('-', '')[:4]}"


def adapter_digest(folder: Path) -> str | None:
    weights = folder / "adapter_model.safetensors"
    return file_digest(weights) if weights.exists() else None


def build_card(
    *,
    kind: str,
    name: str,
    training: Training,
    summary: dict,
    hw: dict,
    duration: float,
    folder: Path,
    checkpoints: list[int],
    extra_lineage: dict | None = None,
) -> dict[str, Any]:
    return {
        "name": name,
        "kind": kind,
        "created_at": utcnow().isoformat(),
        "lineage": {
            "base_model": training.base_model_name,
            "base_model_id": training.base_model_id,
            "dataset": training.dataset_name,
            "dataset_id": training.dataset_id,
            "dataset_digest": training.dataset_digest,
            "training_id": training.id,
            "training_name": training.name,
            **(extra_lineage or {}),
        },
        "training": {
            "method": training.method,
            "params": training.params,
            "duration_seconds": round(duration, 1),
            "hardware": hw,
            "checkpoints": checkpoints,
        },
        "metrics": summary,
        "sizes": {"bytes": folder_size(folder)},
    }


def result_dir(work_dir: Path) -> Path:
    """Where a run writes its model before the model is named, carded and put in place."""
    return work_dir / RESULT_FOLDER


def result_model_id(training_id: str) -> str:
    """The id of the model a training makes, fixed in advance: a folder put in place by a run
    killed before it recorded the model is found again, to be removed or replaced."""
    return str(uuid.uuid5(RESULT_ID_NAMESPACE, training_id))


def discard_unrecorded_result(session, layout: Layout, training_id: str) -> None:
    """Remove the model folder of a training that a run put in place but never recorded."""
    model_id = result_model_id(training_id)
    if session.get(CustomizedModel, model_id) is None:
        discard(layout.customized_model_dir(model_id))
    if session.get(CompleteModel, model_id) is None:
        discard(layout.complete_model_dir(model_id))


def fresh_result_dir(work_dir: Path) -> Path:
    """An empty result folder (a killed earlier attempt may have left one half-written)."""
    folder = result_dir(work_dir)
    remove_tree(folder)
    folder.mkdir(parents=True)
    return folder


def saved_dtype(folder: Path) -> str:
    """The dtype of a saved full model, from its config.json, as a short name."""
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    dtype = config.get("dtype") or config.get("torch_dtype") or "float32"
    return DTYPE_NAMES.get(dtype, dtype)[:8]


def write_result(
    ctx,
    training_id: str,
    produced: Path,
    *,
    full: bool,
    duration: float,
    hw: dict,
    lineage: dict | None = None,
) -> dict[str, Any]:
    """Turn the folder a run produced into its customized model (an adapter) or, when `full`,
    its complete model: named, carded, moved into place and recorded, once."""
    work_dir = ctx.layout.training_dir(training_id)
    steps = [int(p.name.removeprefix(CHECKPOINT_PREFIX)) for p in checkpoints(work_dir)]
    with session_scope(ctx.settings) as session:
        training = session.get_one(Training, training_id)
        summary = final_metrics(session, training.id)
        done_id = training.customized_model_id or training.summary.get("complete_model_id")
        if done_id:  # a resumed run whose first attempt had already written its result
            remove_tree(produced)
            return {"message": "Done", "model_id": done_id}
        discard_unrecorded_result(session, ctx.layout, training_id)
    name = customized_model_name(
        training.base_model_name, training.name, training.created_at, training_id
    )
    model_id = result_model_id(training_id)
    target = (
        ctx.layout.complete_model_dir(model_id)
        if full
        else ctx.layout.customized_model_dir(model_id)
    )
    with atomic_dir(target) as staging:
        for entry in produced.iterdir():
            os.replace(entry, staging / entry.name)
        card = build_card(
            kind="complete" if full else "customized",
            name=name,
            training=training,
            summary=summary,
            hw=hw,
            duration=duration,
            folder=staging,
            checkpoints=steps,
            extra_lineage={
                **(lineage or {}),
                **({} if full else {"adapter_digest": adapter_digest(staging)}),
            },
        )
        write_readme(staging, card)
    produced.rmdir()
    ctx.land(target)
    with ctx.session() as session:
        training = session.get_one(Training, training_id)
        if full:
            session.add(
                CompleteModel(
                    id=model_id,
                    project_id=training.project_id,
                    name=name,
                    source="full_training",
                    training_id=training.id,
                    base_model_id=training.base_model_id,
                    path=ctx.layout.recorded(target),
                    dtype=saved_dtype(target),
                    size_bytes=card["sizes"]["bytes"],
                    model_card=card,
                )
            )
            training.summary = {**summary, "complete_model_id": model_id}
        else:
            session.add(
                CustomizedModel(
                    id=model_id,
                    project_id=training.project_id,
                    name=name,
                    training_id=training.id,
                    base_model_id=training.base_model_id,
                    train_name=training.name,
                    path=ctx.layout.recorded(target),
                    size_bytes=card["sizes"]["bytes"],
                    model_card=card,
                )
            )
            training.customized_model_id = model_id
            training.summary = summary
        training.status = "succeeded"
        training.progress = 100.0
        training.eta_seconds = 0.0
        training.finished_at = utcnow()
    what = "complete" if full else "customized"
    return {"message": f"Created {what} model {name}", f"{what}_model_id": model_id, "name": name}


def final_metrics(session, training_id: str) -> dict[str, Any]:
    rows = session.scalars(
        select(TrainingMetric)
        .where(TrainingMetric.training_id == training_id)
        .order_by(TrainingMetric.step)
    ).all()
    train = [r.data for r in rows if r.kind == "train"]
    evals = [r.data for r in rows if r.kind == "eval"]
    losses = [d["loss"] for d in train if "loss" in d]
    summary: dict[str, Any] = {"steps": rows[-1].step if rows else 0}
    if losses:
        summary.update(final_loss=losses[-1], min_loss=min(losses), first_loss=losses[0])
    eval_losses = [d["eval_loss"] for d in evals if "eval_loss" in d]
    if eval_losses:
        summary.update(final_eval_loss=eval_losses[-1], min_eval_loss=min(eval_losses))
    for key in ("reward", "reward_std", "kl", "rewards/chosen", "rewards/rejected"):
        values = [d[key] for d in train if key in d]
        if values:
            summary[f"final_{key.replace('/', '_')}"] = values[-1]
    speeds = [d["tokens_per_second"] for d in train if "tokens_per_second" in d]
    if speeds:
        summary["mean_tokens_per_second"] = sum(speeds) / len(speeds)
    return summary
