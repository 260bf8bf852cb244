"""What a finished training leaves: a customized model (adapter) or, for a full fine-tune, a
complete model, each with its card, written atomically and recorded once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tuneyard.cards import file_digest, folder_size, write_readme
from tuneyard.db import session_scope
from tuneyard.models import CompleteModel, CustomizedModel, Training, new_id, utcnow
from tuneyard.storage import atomic_dir


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


def write_result(ctx, inputs, trainer, tokenizer, *, duration: float, hw: dict) -> dict[str, Any]:
    from tuneyard.training.runner import CHECKPOINT_PREFIX, checkpoints, final_metrics

    steps = [int(p.name.removeprefix(CHECKPOINT_PREFIX)) for p in checkpoints(inputs.work_dir)]
    with session_scope(ctx.settings) as session:
        training = session.get(Training, inputs.training_id)
        summary = final_metrics(session, training.id)
        done_id = training.customized_model_id or training.summary.get("complete_model_id")
        if done_id:  # a resumed run whose first attempt had already written its result
            return {"message": "Done", "model_id": done_id}
        created = training.created_at
    name = customized_model_name(inputs.base_name, inputs.name, created, inputs.training_id)
    full = inputs.params.adapter == "full"
    model_id = new_id()
    target = (
        ctx.layout.complete_model_dir(model_id)
        if full
        else ctx.layout.customized_model_dir(model_id)
    )
    with atomic_dir(target) as staging:
        trainer.model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        card = build_card(
            kind="complete" if full else "customized",
            name=name,
            training=training,
            summary=summary,
            hw=hw,
            duration=duration,
            folder=staging,
            checkpoints=steps,
            extra_lineage=None if full else {"adapter_digest": adapter_digest(staging)},
        )
        write_readme(staging, card)
    with session_scope(ctx.settings) as session:
        training = session.get(Training, inputs.training_id)
        if full:
            session.add(
                CompleteModel(
                    id=model_id,
                    project_id=training.project_id,
                    name=name,
                    source="full_training",
                    training_id=training.id,
                    base_model_id=training.base_model_id,
                    path=str(target),
                    dtype="fp32",
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
                    path=str(target),
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
