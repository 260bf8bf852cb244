"""The job bodies of DeepImage. Generation: the image process (which keeps the pipeline loaded)
runs the recipe once per seed, relaying each step; the job keeps each image as a PNG carrying
its recipe, and imports no torch. Training: the job's own process trains a LoRA of the model's
denoiser (UNet or transformer) on the unpacked training set, reporting each step's loss, and
records the adapter.

Both run on a cluster node without the API's data dir (an artifact store): they read what
their kind `reads` at `ctx.layout.local` paths, and land each image and adapter before its row
is written. A generation there uses the image process of the node's data dir."""

from __future__ import annotations

import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from tuneyard.images import service
from tuneyard.images.process import RemoteFailed, generate_remote, release_remote
from tuneyard.images.training_set import read_training_set
from tuneyard.jobs.context import JobCancelled
from tuneyard.jobs.registry import job_kind
from tuneyard.models import Job
from tuneyard.storage import atomic_file, atomic_path, discard

# Progress is written at most this often (and at each image's last step): a tiny model's
# steps take milliseconds, and each report is a database write.
PROGRESS_EVERY_SECONDS = 0.25


def denoising_steps(recipe: dict[str, Any]) -> int:
    """How many steps the recipe runs (image-to-image skips the first ones)."""
    if recipe["mode"] == "image-to-image":
        return max(1, int(recipe["steps"] * recipe["strength"]))
    return int(recipe["steps"])


def _remove_unrecorded(session, job) -> None:
    for path in service.unrecorded_files(session, job):
        path.unlink(missing_ok=True)


@job_kind(
    service.GENERATE,
    cleanup=_remove_unrecorded,
    cooperative_cancel=True,
    writes=(),  # its images are new files
    reads=service.generation_reads,
)
def generate(ctx):
    recipe = ctx.params["recipe"]
    seeds = [int(seed) for seed in ctx.params["seeds"]]
    ctx.progress(0, f"Waiting for the image process to run {recipe['model_name']}")
    source = None
    if recipe["source_digest"]:
        source = str(service.source_path(ctx.project_id, recipe["source_digest"]))
    model = service.model_here(ctx.params["model"], ctx.layout)
    adapter_files = {
        adapter_id: str(ctx.layout.local(path))
        for adapter_id, path in (ctx.params.get("adapter_files") or {}).items()
    }
    per_image = denoising_steps(recipe)
    total = per_image * len(seeds)
    image_ids = []
    answer: dict[str, Any] | None = None
    reused = []
    for index, seed in enumerate(seeds):
        image_recipe = {**recipe, "seed": seed}
        last_report = 0.0

        def on_step(step: int, index: int = index) -> None:
            nonlocal last_report
            now = time.monotonic()
            if step == per_image or now - last_report >= PROGRESS_EVERY_SECONDS:
                last_report = now
                ctx.progress(
                    99 * (index * per_image + step) / total,
                    f"Image {index + 1}/{len(seeds)}: step {step}/{per_image}",
                )

        request = {
            "model": model,
            "recipe": image_recipe,
            "source": source,
            "adapter_files": adapter_files,
        }
        try:
            answer = generate_remote(
                request, on_step, lambda: ctx.cancel_requested, settings=ctx.settings
            )
        except RemoteFailed as exc:
            raise RuntimeError(f"The image process could not make the image: {exc}") from None
        if answer is None:
            raise JobCancelled()
        reused.append(answer["reused"])
        image_id = str(uuid.uuid4())
        target = ctx.layout.image_file(ctx.project_id, ctx.job_id, image_id)
        with atomic_file(target) as handle:
            handle.write(answer["png"])
        ctx.land(target)
        with ctx.session() as session:
            job = session.get_one(Job, ctx.job_id)
            service.record_image(
                session, job, image_id, image_recipe, answer["width"], answer["height"], target
            )
        image_ids.append(image_id)
    assert answer is not None, "a job generates at least one image"
    ctx.progress(100, f"Generated {len(image_ids)} image(s) on {answer['device']}")
    return {
        "image_ids": image_ids,
        "device": answer["device"],
        "dtype": answer["dtype"],
        # Whether the image process had the pipeline loaded already, per image.
        "pipeline_reused": reused,
    }


# -- training an image LoRA ------------------------------------------------------------------

# The job event kind of each step's loss (GET /jobs/{id}/events?kind=metric).
METRIC = "metric"


def _remove_training_leftovers(session, job) -> None:
    for path in service.unrecorded_training_files(session, job):
        if path.is_dir():
            discard(path)
        else:
            path.unlink(missing_ok=True)


@job_kind(
    service.TRAIN,
    cleanup=_remove_training_leftovers,
    cooperative_cancel=True,
    cancel_grace_seconds=600,  # a step of a large model on a CPU takes minutes
    writes=(),  # its adapter is a new file; its training set, used up, goes
    reads=service.training_reads,
)
def train(ctx):
    from tuneyard.images.trainer import train_lora

    params = ctx.params["train"]
    model = service.model_here(ctx.params["model"], ctx.layout)
    name = ctx.params["adapter_name"]
    steps = int(params["steps"])
    folder = service.training_set_path(ctx.project_id, ctx.params["training_set"])
    records = read_training_set(folder)
    # The training loads its own copy of the model: the image process's copy would double
    # the memory it needs (a GPU's, most of all), so that one is dropped first.
    ctx.progress(0, "Freeing the memory the image process holds")
    release_remote(ctx.settings)
    ctx.progress(0, f"Loading {model['name']} to train adapter {name} on {len(records)} images")
    pending: list[dict[str, Any]] = []
    last_report = 0.0

    def on_step(step: int, loss: float, seconds: float) -> None:
        nonlocal last_report
        pending.append(
            {
                "step": step,
                "loss": loss,
                "learning_rate": params["learning_rate"],
                "step_seconds": seconds,
            }
        )
        now = time.monotonic()
        if step == steps or ctx.cancel_requested or now - last_report >= PROGRESS_EVERY_SECONDS:
            last_report = now
            ctx.events(METRIC, pending)
            pending.clear()
            ctx.progress(99 * step / steps, f"Step {step}/{steps}: loss {loss:.4f}")
        ctx.check_cancelled()

    def on_loaded(device: str) -> None:
        ctx.check_cancelled()
        ctx.progress(0, f"Training adapter {name} on {device}: {steps} steps")

    with tempfile.TemporaryDirectory(prefix="lora-") as scratch:
        trained = train_lora(model, records, params, on_step, Path(scratch), on_loaded)
        target = ctx.layout.image_adapter(ctx.project_id, ctx.params["adapter_id"])
        with atomic_path(target) as staging:
            shutil.copyfile(trained.file, staging)
    ctx.land(target)
    info = ctx.params["training_set_info"]
    card = {
        "base_model": model["name"],
        "base_model_id": ctx.params["image_model_id"],
        "pipeline_class": model["pipeline_class"],
        **params,
        "prediction_type": trained.prediction_type,
        "images": info["images"],
        "captions_from": info["captions_from"],
        "archive": info["archive"],
        "training_set_digest": info["digest"],
        "final_loss": trained.final_loss,
        "min_loss": trained.min_loss,
        "device": trained.device,
        "dtype": trained.dtype,
        "seconds": round(trained.seconds, 1),
        "training_job_id": ctx.job_id,
    }
    with ctx.session() as session:
        job = session.get_one(Job, ctx.job_id)
        adapter = service.record_trained_adapter(session, job, target, card)
        adapter_id = adapter.id
    discard(folder)
    ctx.progress(100, f"Trained adapter {name}: loss {trained.final_loss:.4f} after {steps} steps")
    return {"adapter_id": adapter_id, "adapter_name": name, "card": card}
