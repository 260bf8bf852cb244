"""Job bodies of base models: GGUF import and hub download, each ending in a ready HF folder."""

from __future__ import annotations

from pathlib import Path

from tuneyard.basemodels import hub, service
from tuneyard.basemodels.card import check_model_folder, format_count
from tuneyard.basemodels.gguf_import import convert_gguf
from tuneyard.jobs.keys import Resource
from tuneyard.jobs.registry import job_kind
from tuneyard.storage import atomic_dir


def _failure_hook(action: str):
    def mark_failed(session, job) -> None:
        reason = "it was cancelled." if job.status == "cancelled" else job.error
        service.mark_failed(session, job.params["base_model_id"], f"The {action} failed: {reason}")

    return mark_failed


def _remove_files(session, job) -> None:
    service.remove_failed_folder(session, job.params["base_model_id"])


def _finish(ctx, model_id: str, folder: Path, verb: str) -> dict:
    ctx.progress(95, "Reading the model card")
    ctx.land(folder)
    with ctx.session() as session:
        model = service.finish_folder(session, model_id, folder)
        name, card = model.technical_name, model.model_card
    count = format_count(card["parameter_count"])
    ctx.progress(100, f"{verb} {name}: {count} parameters, {card['dtype']}")
    return {"base_model_id": model_id, "path": ctx.layout.recorded(folder)}


@job_kind(service.IMPORT_GGUF, on_failure=_failure_hook("GGUF import"), cleanup=_remove_files)
def import_gguf(ctx):
    model_id = ctx.params["base_model_id"]
    target = ctx.layout.base_model_dir(model_id)
    with atomic_dir(target) as staging:
        convert_gguf(Path(ctx.params["gguf_file"]), staging, ctx.params["model_type"], ctx.progress)
        check_model_folder(staging)
    return _finish(ctx, model_id, target, "Imported")


@job_kind(
    service.DOWNLOAD_HUB,
    on_failure=_failure_hook("hub download"),
    cleanup=_remove_files,
    writes=(Resource.BASE_MODEL,),
)
def download_hub(ctx):
    model_id = ctx.params["base_model_id"]
    target = ctx.layout.base_model_dir(model_id)
    with atomic_dir(target) as staging:
        hub.download(ctx.params["hub_id"], ctx.params.get("revision"), staging, ctx.progress)
        ctx.progress(90, "Checking the downloaded folder")
        check_model_folder(staging)
    return _finish(ctx, model_id, target, "Downloaded")
