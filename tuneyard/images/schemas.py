"""API shapes for image models and generated images."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from tuneyard.images.grounding import DEFAULT_GROUNDING_TOKENS, MAX_GROUNDING_TOKENS
from tuneyard.knowledge.schemas import MAX_KNOWLEDGE_BASES

NAME_MAX = 200
PROMPT_MAX_CHARS = 4000
MAX_STEPS = 150
MAX_COUNT = 4
MAX_SEED = 2**32 - 1
MAX_SIDE = 4096
ASPECT_RATIOS = ("1:1", "4:3", "3:4", "16:9", "9:16", "21:9")


class ImageModelCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        min_length=1, max_length=NAME_MAX, pattern=r"\S", description="Unique in the project."
    )
    path: str = Field(
        min_length=1,
        description="A diffusers folder (with model_index.json) or a single .safetensors / "
        ".ckpt checkpoint on the server, registered where it is.",
    )
    config_path: str | None = Field(
        None,
        description="For a single file: a diffusers folder with the pipeline's configs "
        "(weights not needed), so loading it needs no hub. Without it, the hub must answer.",
    )


class ImageModelOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    source: str
    path: str
    pipeline_class: str
    card: dict[str, Any]
    created_at: datetime


class ImageModelDetail(ImageModelOut):
    preflight: dict[str, Any] = Field(
        description="What running it here needs: device, dtype, memory estimate, warnings."
    )


MAX_ADAPTERS = 5


class AdapterUse(BaseModel):
    model_config = ConfigDict(extra="forbid")

    adapter: str = Field(min_length=1, description="An image LoRA of the model: id or name.")
    weight: float = Field(1.0, ge=-4, le=4, description="How strongly it applies.")


class ImageAdapterOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    image_model_id: str
    name: str
    digest: str
    size_bytes: int
    card: dict[str, Any] | None = Field(
        None,
        description="A trained adapter's card: base model, method, parameters, images, final "
        "loss and training job; none for an uploaded one.",
    )
    created_at: datetime


MAX_TRAIN_STEPS = 20000
MAX_RANK = 128
MAX_BATCH_SIZE = 64


class TrainIn(BaseModel):
    """A LoRA training of an image model's denoiser on images with captions."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        min_length=1,
        max_length=NAME_MAX,
        pattern=r"\S",
        description="The adapter's name, unique among the model's adapters.",
    )
    rank: int = Field(8, ge=1, le=MAX_RANK, description="LoRA rank.")
    alpha: int | None = Field(
        None, ge=1, le=4 * MAX_RANK, description="LoRA alpha; the rank if left out."
    )
    learning_rate: float = Field(1e-4, gt=0, le=1, description="AdamW's learning rate.")
    steps: int = Field(500, ge=1, le=MAX_TRAIN_STEPS, description="Optimizer steps.")
    batch_size: int = Field(1, ge=1, le=MAX_BATCH_SIZE, description="Images per step.")
    resolution: int | None = Field(
        None,
        ge=8,
        le=MAX_SIDE,
        description="Side of the square the images are resized and center-cropped to; the "
        "model's native size if left out. A multiple of 8 (and of what the model needs).",
    )
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="Random if left out.")
    priority: int = Field(0, ge=-10, le=10, description="Queued higher first.")


class TrainingAccepted(BaseModel):
    """The training job (202): follow it at /jobs/{job_id}, its loss per step at
    /jobs/{job_id}/events?kind=metric; the adapter joins the model's adapters when it ends."""

    job_id: str
    adapter_id: str = Field(description="The id the adapter will have once trained.")
    params: dict[str, Any] = Field(description="The training's parameters, defaults resolved.")
    images: int = Field(description="Images (each with its caption) in the training set.")


class GenerateIn(BaseModel):
    """A text-to-image request, or image-to-image with a source image; or the recipe of an
    earlier image (`recipe_from`), again with its seed or varied, any field given here
    changing it."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(None, description="An image model's id or name.")
    prompt: str | None = Field(None, max_length=PROMPT_MAX_CHARS)
    negative_prompt: str | None = Field(None, max_length=PROMPT_MAX_CHARS)
    steps: int | None = Field(None, ge=1, le=MAX_STEPS, description="Denoising steps.")
    guidance: float | None = Field(None, ge=0, le=30, description="Classifier-free guidance.")
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="Random if left out.")
    count: int = Field(1, ge=1, le=MAX_COUNT, description="Images, seeds seed, seed+1, ...")
    aspect_ratio: str | None = Field(
        None, description=f"One of {', '.join(ASPECT_RATIOS)} at the model's native size."
    )
    width: int | None = Field(None, ge=1, le=MAX_SIDE)
    height: int | None = Field(None, ge=1, le=MAX_SIDE)
    strength: float | None = Field(
        None, ge=0, le=1, description="Image-to-image: how far from the source (0-1)."
    )
    source_image: str | None = Field(
        None, description="Image-to-image: the source image, base64 (PNG, JPEG or WebP)."
    )
    source_image_id: str | None = Field(
        None, description="Image-to-image: an earlier result as the source."
    )
    adapters: list[AdapterUse] | None = Field(
        None,
        max_length=MAX_ADAPTERS,
        description="Image LoRAs of the model, stacked with their weights.",
    )
    knowledge_base_ids: list[str] | None = Field(
        None,
        max_length=MAX_KNOWLEDGE_BASES,
        description="Knowledge bases (ids or names) whose passages retrieved for the prompt "
        "are appended to it; the recipe keeps the prompt actually used.",
    )
    grounding_tokens: int | None = Field(
        None,
        ge=1,
        le=MAX_GROUNDING_TOKENS,
        description="Most (estimated CLIP) tokens the appended passages take; default "
        f"{DEFAULT_GROUNDING_TOKENS} of the 75 CLIP reads.",
    )
    recipe_from: str | None = Field(None, description="An earlier image whose recipe to reuse.")
    vary: bool = Field(False, description="With recipe_from: a new seed, all else the same.")
    priority: int = Field(0, ge=-10, le=10, description="Queued higher first.")


class GenerationAccepted(BaseModel):
    """The generation job (202): follow it at /jobs/{job_id}; its images list by job_id."""

    job_id: str
    recipe: dict[str, Any]
    seeds: list[int]


class ImageOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    image_model_id: str | None
    job_id: str | None
    recipe: dict[str, Any]
    width: int
    height: int
    digest: str
    size_bytes: int
    created_at: datetime


Mode = Literal["text-to-image", "image-to-image"]
