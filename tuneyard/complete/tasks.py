"""The save job ("complete.save": merge an adapter into its base) and the push job."""

from __future__ import annotations

import time
from pathlib import Path

from sqlalchemy.orm import Session

from tuneyard.cards import file_digest, folder_size, write_readme
from tuneyard.complete.service import PUSH_JOB, SAVE_JOB
from tuneyard.db import session_scope
from tuneyard.errors import Conflict, NotFound
from tuneyard.jobs.keys import Resource
from tuneyard.jobs.registry import job_kind
from tuneyard.models import BaseModel, CompleteModel, CustomizedModel, Job
from tuneyard.storage import Layout, atomic_dir, discard

PROGRESS_EVERY_SECONDS = 0.5


def mark_save_failed(session: Session, job: Job) -> None:
    """Whatever stopped the save, the model is failed and says why."""
    row = session.get(CompleteModel, job.params.get("complete_model_id"))
    if row is None or row.status == "ready":
        return
    row.status = "failed"
    row.error = job.error or "The save was cancelled before it finished."


def remove_save_files(session: Session, job: Job) -> None:
    """A failed model has no files, whether the save got to put them in place or not."""
    row = session.get(CompleteModel, job.params.get("complete_model_id"))
    if row is not None and row.status == "failed":
        discard(Layout().local(row.path))


def _reporter(ctx, start: float, span: float):
    """Progress from a merge's fraction done, written at most every half second."""
    last = 0.0

    def report(fraction: float, message: str) -> None:
        nonlocal last
        now = time.monotonic()
        if now - last >= PROGRESS_EVERY_SECONDS:
            last = now
            ctx.progress(start + span * fraction, message)

    return report


@job_kind(
    SAVE_JOB,
    on_failure=mark_save_failed,
    cleanup=remove_save_files,
    writes=(Resource.COMPLETE_MODEL,),  # reads the customized model and its base
)
def save_complete_model(ctx) -> dict:
    from tuneyard.complete.merge import (
        merge_adapter_into_base,
        merge_with_peft,
        plan_merge,
        read_adapter,
        write_model_files,
    )

    model_id, dtype = ctx.params["complete_model_id"], ctx.params["dtype"]
    with session_scope(ctx.settings) as session:
        row = session.get(CompleteModel, model_id)
        if row is None:
            raise NotFound(f"Complete model {model_id} was deleted before it was saved.")
        customized = session.get(CustomizedModel, row.customized_model_id)
        base = session.get(BaseModel, row.base_model_id)
        if customized is None or base is None or base.path is None:
            raise Conflict(f"The customized or base model of {row.name} was deleted.")
        name, card, target = row.name, dict(row.model_card), ctx.layout.local(row.path)
        adapter_dir, base_dir = ctx.layout.local(customized.path), ctx.layout.local(base.path)
        base_name = base.technical_name
    started = time.monotonic()
    ctx.progress(1, f"Reading the adapter and the base model {base_name}")
    adapter = read_adapter(adapter_dir)
    plan = plan_merge(base_dir, adapter, dtype)
    report = _reporter(ctx, 2, 90)
    with atomic_dir(target) as staging:
        if adapter.method == "peft":
            merge_with_peft(base_dir, adapter, staging, dtype, report)
        else:
            merge_adapter_into_base(plan, staging, report)
        ctx.progress(93, "Writing the config, the tokenizer and the model card")
        write_model_files(base_dir, adapter_dir, staging, dtype)
        card["lineage"] = {**card["lineage"], "adapter_digest": file_digest(adapter.weights)}
        card["save"] = {
            **card["save"],
            "weight_files": len(list(staging.glob("*.safetensors"))),
            "seconds": round(time.monotonic() - started, 1),
        }
        card["sizes"] = {"bytes": folder_size(staging), "parameters": plan.parameters}
        write_readme(staging, card)
    size = folder_size(target)
    ctx.land(target)
    with ctx.session() as session:
        row = session.get(CompleteModel, model_id)
        row.status, row.error, row.size_bytes, row.model_card = "ready", None, size, card
        row.path = ctx.layout.recorded(target)
    ctx.progress(100, f"Saved complete model {name} ({dtype}, {size / 1e6:.1f} MB)")
    return {"complete_model_id": model_id, "name": name, "path": ctx.layout.recorded(target)}


@job_kind(PUSH_JOB)
def push_complete_model(ctx) -> dict:
    from tuneyard.complete.push import upload

    repo_id = ctx.params["repo_id"]
    with session_scope(ctx.settings) as session:
        row = session.get(CompleteModel, ctx.params["complete_model_id"])
        if row is None:
            raise NotFound("The complete model was deleted before it was pushed.")
        name, folder = row.name, Path(row.path)
    url = upload(folder, repo_id, name, ctx.progress, public=ctx.params.get("public", False))
    ctx.progress(100, f"Pushed {name} to {url}")
    return {"repo_id": repo_id, "url": url}
