"""OpenAI's image routes on the gateway: /v1/images/generations (text-to-image) and
/v1/images/edits (image-to-image, multipart). Each queues a generation job and waits for it, so
OpenAI image clients work unchanged; the images are kept like any other."""

from __future__ import annotations

import base64
import re
import time
from typing import Annotated, Any, Literal

from fastapi import APIRouter, File, Form, UploadFile
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tuneyard.auth.service import Principal
from tuneyard.chat.gateway import GATEWAY_PREFIX, OpenAIErrorOut
from tuneyard.config import get_settings
from tuneyard.db import session_scope
from tuneyard.deps import CurrentPrincipal
from tuneyard.errors import AppError, Invalid, Unavailable, error_responses
from tuneyard.images import service
from tuneyard.images.grounding import final_prompt
from tuneyard.images.schemas import MAX_COUNT, MAX_SEED, MAX_STEPS, PROMPT_MAX_CHARS, GenerateIn
from tuneyard.jobs import service as jobs

POLL_SECONDS = 0.2
SIZE_RE = re.compile(r"^(\d{1,4})x(\d{1,4})$")

router = APIRouter(
    prefix=GATEWAY_PREFIX,
    tags=["OpenAI-compatible gateway"],
    responses=error_responses(OpenAIErrorOut),
)


class ImageGenerationRequest(BaseModel):
    """The parts of OpenAI's image generation request Tuneyard uses (quality, style and user
    are accepted and ignored), and its own through extra_body."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field(max_length=500, description="An image model's name or id.")
    prompt: str = Field(min_length=1, max_length=PROMPT_MAX_CHARS)
    n: int = Field(1, ge=1, le=MAX_COUNT)
    size: str | None = Field(None, description="WIDTHxHEIGHT, or auto (the native square).")
    response_format: Literal["b64_json", "url"] | None = None
    negative_prompt: str | None = Field(None, max_length=PROMPT_MAX_CHARS)
    steps: int | None = Field(None, ge=1, le=MAX_STEPS)
    guidance: float | None = Field(None, ge=0, le=30)
    seed: int | None = Field(None, ge=0, le=MAX_SEED)


class ImageData(BaseModel):
    b64_json: str
    revised_prompt: str | None = None


class ImagesResponse(BaseModel):
    created: int
    data: list[ImageData]


@router.post("/images/generations", response_model=ImagesResponse)
def images_generations(body: ImageGenerationRequest, principal: CurrentPrincipal):
    """OpenAI's image generation: waits for the job and answers the PNGs as b64_json."""
    request = _request(
        model=body.model,
        prompt=body.prompt,
        count=body.n,
        negative_prompt=body.negative_prompt,
        steps=body.steps,
        guidance=body.guidance,
        seed=body.seed,
        **_size(body.size),
    )
    return _generate_and_wait(principal, request, body.response_format)


@router.post("/images/edits", response_model=ImagesResponse)
def images_edits(
    principal: CurrentPrincipal,
    image: Annotated[UploadFile, File(description="The source image (PNG, JPEG or WebP).")],
    prompt: Annotated[str, Form(min_length=1, max_length=PROMPT_MAX_CHARS)],
    model: Annotated[str, Form(max_length=500)],
    n: Annotated[int, Form(ge=1, le=MAX_COUNT)] = 1,
    size: Annotated[str | None, Form()] = None,
    response_format: Annotated[Literal["b64_json", "url"] | None, Form()] = None,
    mask: Annotated[UploadFile | None, File()] = None,
    strength: Annotated[float | None, Form(ge=0, le=1)] = None,
    seed: Annotated[int | None, Form(ge=0, le=MAX_SEED)] = None,
):
    """OpenAI's image edits as image-to-image (no masks): the output keeps the source's size
    unless size is given."""
    if mask is not None:
        raise Invalid("Masks (inpainting) are not supported; send the image alone.")
    request = _request(
        model=model,
        prompt=prompt,
        count=n,
        source_image=base64.b64encode(image.file.read()).decode(),
        strength=strength,
        seed=seed,
        **_size(size),
    )
    return _generate_and_wait(principal, request, response_format)


def _request(**fields: Any) -> GenerateIn:
    try:
        return GenerateIn(**fields)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in error['loc'])}: {error['msg']}" for error in exc.errors()
        )
        raise Invalid(problems) from None


def _size(size: str | None) -> dict[str, int]:
    if size is None or size == "auto":
        return {}
    match = SIZE_RE.match(size)
    if match is None:
        raise Invalid(f"size '{size}' is not WIDTHxHEIGHT (like 512x512) or auto.")
    return {"width": int(match.group(1)), "height": int(match.group(2))}


def _generate_and_wait(
    principal: Principal, request: GenerateIn, response_format: str | None
) -> dict[str, Any]:
    if response_format == "url":
        raise Invalid(
            "response_format url is not offered: ask for b64_json (the images are also kept, "
            "under /api/v1/images)."
        )
    # The job is committed before waiting: no transaction is held while it runs.
    with session_scope() as session:
        job, _recipe, _seeds = service.start_generation(session, principal, request)
        job_id = job.id
    deadline = time.monotonic() + get_settings().image_gateway_timeout_seconds
    while True:
        with session_scope() as session:
            job = jobs.get_job(session, principal, job_id)
            status, error, result = job.status, job.error, job.result
        if status in jobs.FINISHED:
            break
        if time.monotonic() > deadline:
            raise Unavailable(
                f"Generation job {job_id} is still {status}; its images will list under "
                f"/api/v1/images?job_id={job_id}."
            )
        time.sleep(POLL_SECONDS)
    if status != "succeeded":
        raise AppError(f"Generation job {job_id} {status}: {error or 'no reason given'}", 500)
    data = []
    with session_scope() as session:
        for image_id in (result or {}).get("image_ids", []):
            image = service.get_image(session, principal, image_id)
            encoded = base64.b64encode(service.image_path(image).read_bytes()).decode()
            data.append({"b64_json": encoded, "revised_prompt": final_prompt(image.recipe)})
    return {"created": int(time.time()), "data": data}
