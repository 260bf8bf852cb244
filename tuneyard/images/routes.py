"""Image models (register, list, show, delete) and images (generate as a job, list, show,
download the PNG, delete)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, UploadFile, status
from fastapi.responses import FileResponse
from pydantic import Field

from tuneyard.deps import CurrentPrincipal, DbSession, Paging
from tuneyard.errors import NotFound
from tuneyard.gate import body_limit
from tuneyard.images import service
from tuneyard.images.schemas import (
    GenerateIn,
    GenerationAccepted,
    ImageAdapterOut,
    ImageModelCreate,
    ImageModelDetail,
    ImageModelOut,
    ImageOut,
    TrainIn,
    TrainingAccepted,
)
from tuneyard.pagination import Page

image_models_router = APIRouter(prefix="/image-models", tags=["images"])
images_router = APIRouter(prefix="/images", tags=["images"])


@image_models_router.post("", response_model=ImageModelDetail, status_code=201)
def register_image_model(body: ImageModelCreate, principal: CurrentPrincipal, session: DbSession):
    """Register a diffusers folder or a single checkpoint file where it is on the server."""
    model = service.register_image_model(
        session, principal, body.name, body.path, config_path=body.config_path
    )
    return service.describe_model(model)


@image_models_router.get("", response_model=Page[ImageModelOut])
def list_image_models(principal: CurrentPrincipal, session: DbSession, page: Paging):
    items, total = service.list_image_models(session, principal, page.limit, page.offset)
    return {"items": items, "total": total}


@image_models_router.get("/{model}", response_model=ImageModelDetail)
def get_image_model(model: str, principal: CurrentPrincipal, session: DbSession):
    """By id or name, with its preflight: what running it here needs and has."""
    return service.describe_model(service.get_image_model(session, principal, model))


@image_models_router.delete("/{model}", status_code=status.HTTP_204_NO_CONTENT)
def delete_image_model(model: str, principal: CurrentPrincipal, session: DbSession):
    """Unregister (refused while a job uses it); its files and images stay."""
    service.delete_image_model(session, principal, model)


@image_models_router.post(
    "/{model}/adapters", response_model=ImageAdapterOut, status_code=status.HTTP_201_CREATED
)
@body_limit(
    lambda settings: settings.image_adapter_max_file_bytes,
    "The adapter is over the {limit} limit (TUNEYARD_IMAGE_ADAPTER_MAX_FILE_BYTES).",
)
def add_adapter(
    model: str,
    principal: CurrentPrincipal,
    session: DbSession,
    name: Annotated[str, Form(min_length=1, max_length=200)],
    file: Annotated[UploadFile, File(description="A diffusers or kohya LoRA .safetensors.")],
):
    """Upload an image LoRA for this model; generation stacks adapters with weights."""
    return service.add_adapter(session, principal, model, name, file.file)


class TrainForm(TrainIn):
    """The training's fields as form fields, with the archive."""

    archive: UploadFile = Field(
        description="A zip of png/jpg/webp images with captions: `<name>.txt` beside each "
        "image, or a metadata.jsonl of `file_name` and `text` lines."
    )


@image_models_router.post(
    "/{model}/adapters/train",
    response_model=TrainingAccepted,
    status_code=status.HTTP_202_ACCEPTED,
)
@body_limit(
    lambda settings: settings.image_train_max_archive_bytes,
    "The archive is over the {limit} limit (TUNEYARD_IMAGE_TRAIN_MAX_ARCHIVE_BYTES): use fewer "
    "or smaller images.",
)
def train_adapter(
    model: str,
    principal: CurrentPrincipal,
    session: DbSession,
    form: Annotated[TrainForm, Form(media_type="multipart/form-data")],
):
    """Train a LoRA of the model's denoiser (UNet or transformer) on captioned images, as a
    job; the adapter joins the model's adapters when it succeeds, with a card. Each step's loss
    is a `metric` event of the job (`GET /jobs/{job_id}/events?kind=metric`)."""
    request = TrainIn.model_validate(form.model_dump(exclude={"archive"}))
    job, params = service.start_training(
        session, principal, model, request, form.archive.file, form.archive.filename or "archive"
    )
    return TrainingAccepted(
        job_id=job.id,
        adapter_id=job.params["adapter_id"],
        params=params,
        images=job.params["training_set_info"]["images"],
    )


@image_models_router.get("/{model}/adapters", response_model=list[ImageAdapterOut])
def list_adapters(model: str, principal: CurrentPrincipal, session: DbSession):
    return service.list_adapters(session, principal, model)


@image_models_router.delete("/{model}/adapters/{adapter}", status_code=status.HTTP_204_NO_CONTENT)
def delete_adapter(model: str, adapter: str, principal: CurrentPrincipal, session: DbSession):
    """Remove an adapter and its file (refused while a job uses it)."""
    service.delete_adapter(session, principal, model, adapter)


@images_router.post("", response_model=GenerationAccepted, status_code=status.HTTP_202_ACCEPTED)
def generate(body: GenerateIn, principal: CurrentPrincipal, session: DbSession):
    """Queue a generation job; its images list under `GET /images?job_id=`."""
    job, recipe, seeds = service.start_generation(session, principal, body)
    return GenerationAccepted(job_id=job.id, recipe=recipe, seeds=seeds)


@images_router.get("", response_model=Page[ImageOut])
def list_images(
    principal: CurrentPrincipal, session: DbSession, page: Paging, job_id: str | None = None
):
    items, total = service.list_images(session, principal, page.limit, page.offset, job_id)
    return {"items": items, "total": total}


@images_router.get("/{image_id}", response_model=ImageOut)
def get_image(image_id: str, principal: CurrentPrincipal, session: DbSession):
    return service.get_image(session, principal, image_id)


@images_router.get(
    "/{image_id}/png",
    response_class=FileResponse,
    responses={200: {"content": {"image/png": {}}, "description": "The PNG, recipe inside"}},
)
def download_image(image_id: str, principal: CurrentPrincipal, session: DbSession):
    image = service.get_image(session, principal, image_id)
    path = service.image_path(image)
    if not path.is_file():
        raise NotFound(f"The file of image {image_id} is gone; delete the image.")
    return FileResponse(path, media_type="image/png", filename=f"{image_id}.png")


@images_router.delete("/{image_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_image(image_id: str, principal: CurrentPrincipal, session: DbSession):
    service.delete_image(session, principal, image_id)
