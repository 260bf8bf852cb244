"""`tuneyard image`: register image models, generate images (waiting for the job, then saving
the PNGs here), list and show them, and train image LoRAs on captioned images."""

from __future__ import annotations

import base64
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import typer

from tuneyard.client import path_part
from tuneyard.terminal import (
    JsonOption,
    api,
    console,
    err_console,
    fail,
    follow_job,
    print_json,
    print_record,
    print_table,
)

app = typer.Typer(help="DeepImage: text-to-image and image-to-image.", no_args_is_help=True)
model_app = typer.Typer(help="Image models: diffusion pipelines.", no_args_is_help=True)
adapter_app = typer.Typer(help="Image LoRAs of an image model.", no_args_is_help=True)
app.add_typer(model_app, name="model")
app.add_typer(adapter_app, name="adapter")
WaitOption = typer.Option(
    False, "--wait", help="Follow it with a live progress bar until it ends; Ctrl-C cancels it."
)


def _show_model(model: dict) -> None:
    card, plan = model["card"], model.get("preflight") or {}
    print_record(
        {
            "id": model["id"],
            "name": model["name"],
            "pipeline": model["pipeline_class"],
            "path": model["path"],
            "native size": f"{card['native_size']} px (sizes in multiples of "
            f"{card['size_multiple']})",
            "parameters": card["parameters"],
            "dtype": card["dtype"],
            "size on disk": card["size"],
            "runs on": f"{plan.get('device')} in {plan.get('dtype')}, about {plan.get('estimated')}"
            if plan
            else "",
        }
    )
    for warning in plan.get("warnings", []):
        err_console.print(f"[yellow]Note:[/] {warning}", highlight=False)


@model_app.command("add")
def add_model(
    name: str = typer.Argument(..., help="Unique in the project."),
    path: Path = typer.Argument(
        ..., help="A diffusers folder or a .safetensors checkpoint on the server's machine."
    ),
    config: Path = typer.Option(
        None,
        "--config",
        help="For a single file: a diffusers folder with its configs (else from the hub).",
    ),
    as_json: bool = JsonOption,
):
    """Register a diffusion pipeline where it is (it must lie in one of the server's model
    roots); its card is read from its configs without loading it."""
    body = {
        "name": name,
        "path": str(path.expanduser().absolute()),
        "config_path": str(config.expanduser().absolute()) if config else None,
    }
    with api() as client:
        model = client.post("/image-models", body)
    print_json(model) if as_json else _show_model(model)


@model_app.command("list")
def list_models(as_json: bool = JsonOption):
    """The project's image models, newest first."""
    with api() as client:
        rows, total = client.items("/image-models", limit=500)
    if as_json:
        print_json(rows)
        return
    print_table(rows, ["id", "name", "pipeline_class", "source", "created_at"])
    err_console.print(f"{len(rows)} of {total}")


@model_app.command("show")
def show_model(model: str = typer.Argument(..., metavar="ID_OR_NAME"), as_json: bool = JsonOption):
    """An image model's card and what running it here needs."""
    with api() as client:
        out = client.get(f"/image-models/{path_part(model)}")
    print_json(out) if as_json else _show_model(out)


@model_app.command("rm")
def remove_model(model: str = typer.Argument(..., metavar="ID_OR_NAME")):
    """Unregister an image model; its files and the images made with it stay."""
    with api() as client:
        client.delete(f"/image-models/{path_part(model)}")
    console.print(f"Removed image model {model}.")


@adapter_app.command("add")
def add_adapter(
    model: str = typer.Argument(..., metavar="MODEL", help="The image model's id or name."),
    name: str = typer.Argument(..., help="Unique among the model's adapters."),
    file: Path = typer.Argument(..., help="A diffusers or kohya LoRA .safetensors file."),
    as_json: bool = JsonOption,
):
    """Upload an image LoRA for a model."""
    try:
        handle = file.open("rb")
    except OSError as exc:
        fail(f"Cannot read {file}: {exc.strerror}.")
    with handle, api() as client:
        adapter = client.request(
            "POST",
            f"/image-models/{path_part(model)}/adapters",
            data={"name": name},
            files={"file": (file.name, handle)},
        ).json()
    print_json(adapter) if as_json else print_record(adapter)


@adapter_app.command("list")
def list_adapters(model: str = typer.Argument(..., metavar="MODEL"), as_json: bool = JsonOption):
    """A model's image LoRAs."""
    with api() as client:
        rows = client.get(f"/image-models/{path_part(model)}/adapters")
    print_json(rows) if as_json else print_table(rows, ["id", "name", "size_bytes", "created_at"])


@adapter_app.command("rm")
def remove_adapter(
    model: str = typer.Argument(..., metavar="MODEL"),
    adapter: str = typer.Argument(..., metavar="ADAPTER"),
):
    """Remove an image LoRA and its file."""
    with api() as client:
        client.delete(f"/image-models/{path_part(model)}/adapters/{path_part(adapter)}")
    console.print(f"Removed adapter {adapter}.")


@app.command("train")
def train(
    model: str = typer.Argument(..., metavar="MODEL", help="The image model's id or name."),
    source: Path = typer.Argument(
        ...,
        metavar="FOLDER_OR_ZIP",
        help="A folder of png/jpg/webp images with captions (<name>.txt beside each image, or a "
        "metadata.jsonl of file_name and text), or a zip of one.",
    ),
    name: str = typer.Option(..., "--name", help="The adapter's name."),
    steps: int = typer.Option(None, "--steps", help="Optimizer steps (default 500)."),
    rank: int = typer.Option(None, "--rank", help="LoRA rank (default 8)."),
    alpha: int = typer.Option(None, "--alpha", help="LoRA alpha (default: the rank)."),
    learning_rate: float = typer.Option(
        None, "--learning-rate", "--lr", help="Learning rate (default 1e-4)."
    ),
    batch_size: int = typer.Option(None, "--batch-size", help="Images per step (default 1)."),
    resolution: int = typer.Option(
        None, "--resolution", help="Square side images are cropped to (default: native size)."
    ),
    seed: int = typer.Option(None, "--seed", help="Random if left out."),
    priority: int = typer.Option(0, "--priority", help="Queued higher first (-10 to 10)."),
    wait: bool = WaitOption,
    as_json: bool = JsonOption,
):
    """Train an image LoRA of a model on captioned images, as a job on the server; the adapter
    joins the model's adapters (`tuneyard image adapter list MODEL`) when it ends."""
    fields = {
        "name": name,
        "steps": steps,
        "rank": rank,
        "alpha": alpha,
        "learning_rate": learning_rate,
        "batch_size": batch_size,
        "resolution": resolution,
        "seed": seed,
        "priority": priority,
    }
    form = {key: str(value) for key, value in fields.items() if value is not None}
    with _zipped(source) as archive, api() as client:
        accepted = client.request(
            "POST",
            f"/image-models/{path_part(model)}/adapters/train",
            data=form,
            files={"archive": (f"{source.stem or 'images'}.zip", archive, "application/zip")},
        ).json()
        job_id = accepted["job_id"]
        if not wait:
            if as_json:
                print_json(accepted)
                return
            console.print(
                f"Training adapter {name} on {accepted['images']} images (job {job_id}).",
                highlight=False,
            )
            err_console.print(
                f"The server runs it; follow it with `tuneyard jobs follow {job_id}`."
            )
            return
        job = follow_job(client, job_id)
        adapter = next(
            row
            for row in client.get(f"/image-models/{path_part(model)}/adapters")
            if row["id"] == job["result"]["adapter_id"]
        )
    if as_json:
        print_json(adapter)
        return
    card = adapter["card"]
    console.print(
        f"Adapter {adapter['name']} ({adapter['id']}): loss {card['final_loss']:.4f} after "
        f"{card['steps']} steps on {card['images']} images.",
        highlight=False,
    )


@contextmanager
def _zipped(source: Path) -> Iterator[IO[bytes]]:
    """The zip to upload: the file itself, or the folder zipped into a temporary file (paths
    relative to the folder)."""
    source = source.expanduser()
    if not source.is_dir():
        try:
            handle = source.open("rb")
        except OSError as exc:
            fail(f"Cannot read {source}: {exc.strerror}.")
        with handle:
            yield handle
        return
    with tempfile.TemporaryFile() as zipped:
        try:
            with zipfile.ZipFile(zipped, "w", zipfile.ZIP_DEFLATED) as archive:
                for path in sorted(source.rglob("*")):
                    if path.is_file():
                        archive.write(path, path.relative_to(source).as_posix())
        except OSError as exc:
            fail(f"Cannot read {exc.filename or source}: {exc.strerror}.")
        zipped.seek(0)
        yield zipped


def _adapter_use(text: str) -> dict:
    name, _, weight = text.partition(":")
    try:
        return {"adapter": name, "weight": float(weight) if weight else 1.0}
    except ValueError:
        fail(f"--lora {text}: give NAME or NAME:WEIGHT (a number).")


@app.command("generate")
def generate(
    prompt: str = typer.Argument(None, help="What the image shows (or reuse --again/--vary's)."),
    model: str = typer.Option(None, "--model", "-m", help="An image model's id or name."),
    negative: str = typer.Option(None, "--negative", help="What the image should not show."),
    steps: int = typer.Option(None, "--steps", help="Denoising steps."),
    guidance: float = typer.Option(None, "--guidance", help="Classifier-free guidance scale."),
    seed: int = typer.Option(None, "--seed", help="Random if left out."),
    count: int = typer.Option(1, "--count", "-n", help="1-4 images (seeds seed, seed+1, ...)."),
    aspect: str = typer.Option(None, "--aspect", help="1:1, 4:3, 3:4, 16:9, 9:16 or 21:9."),
    width: int = typer.Option(None, "--width"),
    height: int = typer.Option(None, "--height"),
    source: Path = typer.Option(None, "--source", help="Image-to-image: a local image file."),
    source_image: str = typer.Option(
        None, "--source-image", help="Image-to-image: an earlier image's id."
    ),
    strength: float = typer.Option(None, "--strength", help="Image-to-image: 0-1."),
    again: str = typer.Option(None, "--again", help="An image id: its recipe, same seed."),
    vary: str = typer.Option(None, "--vary", help="An image id: its recipe, a new seed."),
    lora: list[str] = typer.Option(
        None, "--lora", help="NAME or NAME:WEIGHT of an adapter of the model; repeatable."
    ),
    kb: list[str] = typer.Option(
        None,
        "--kb",
        help="A knowledge base whose passages for the prompt are appended to it; repeatable.",
    ),
    grounding_tokens: int = typer.Option(
        None, "--grounding-tokens", help="Most tokens the appended passages take (default 60)."
    ),
    priority: int = typer.Option(0, "--priority", help="Queued higher first (-10 to 10)."),
    out: Path = typer.Option(Path("."), "--out", "-o", help="Folder the PNGs are saved in."),
    as_json: bool = JsonOption,
):
    """Generate images and save them here as PNGs (each with its recipe inside)."""
    if again and vary:
        fail("Give --again or --vary, not both.")
    body: dict = {"count": count, "priority": priority}
    optional = {
        "model": model,
        "prompt": prompt,
        "negative_prompt": negative,
        "steps": steps,
        "guidance": guidance,
        "seed": seed,
        "aspect_ratio": aspect,
        "width": width,
        "height": height,
        "strength": strength,
        "source_image_id": source_image,
        "recipe_from": again or vary,
        "knowledge_base_ids": kb or None,
        "grounding_tokens": grounding_tokens,
    }
    body.update({key: value for key, value in optional.items() if value is not None})
    if vary:
        body["vary"] = True
    if lora:
        body["adapters"] = [_adapter_use(text) for text in lora]
    if source is not None:
        try:
            body["source_image"] = base64.b64encode(source.read_bytes()).decode()
        except OSError as exc:
            fail(f"Cannot read {source}: {exc.strerror}.")
    with api() as client:
        accepted = client.post("/images", body)
        follow_job(client, accepted["job_id"])
        images = client.every("/images", job_id=accepted["job_id"])
        out.mkdir(parents=True, exist_ok=True)
        saved = []
        for image in images:
            target = out / f"{image['id']}.png"
            target.write_bytes(client.request("GET", f"/images/{image['id']}/png").content)
            saved.append({**image, "file": str(target)})
    if as_json:
        print_json(saved)
        return
    for image in saved:
        console.print(f"{image['file']}  seed {image['recipe']['seed']}", highlight=False)


@app.command("list")
def list_images(
    job: str = typer.Option(None, "--job", help="Only this generation job's images."),
    as_json: bool = JsonOption,
):
    """The project's images, newest first."""
    with api() as client:
        rows, total = client.items("/images", limit=500, job_id=job)
    if as_json:
        print_json(rows)
        return
    shown = [
        {
            "id": row["id"],
            "model_name": row["recipe"]["model_name"],
            "size": f"{row['width']}x{row['height']}",
            "seed": row["recipe"]["seed"],
            "prompt": row["recipe"]["prompt"],
            "created_at": row["created_at"],
        }
        for row in rows
    ]
    print_table(shown, ["id", "model_name", "size", "seed", "prompt", "created_at"])
    err_console.print(f"{len(rows)} of {total}")


@app.command("show")
def show_image(
    image_id: str = typer.Argument(..., metavar="ID"),
    save: Path = typer.Option(None, "--save", help="Also save the PNG to this file."),
    as_json: bool = JsonOption,
):
    """An image's recipe (everything needed to make it again)."""
    with api() as client:
        image = client.get(f"/images/{path_part(image_id)}")
        if save is not None:
            save.write_bytes(client.request("GET", f"/images/{path_part(image_id)}/png").content)
    if as_json:
        print_json(image)
        return
    print_record({"id": image["id"], "size": f"{image['width']}x{image['height']}"})
    print_record(image["recipe"])
