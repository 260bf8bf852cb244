"""Tiny pipelines with random weights (Stable Diffusion, SDXL, SD3, FLUX), built from configs as
diffusers' own fast tests build theirs (no weights can be downloaded here), and saved as
diffusers folders."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import wait_for_job
from tests.images.tiny import (
    SD_BETAS,
    TINY_UNET,
    build_tiny_flux,
    build_tiny_sd,
    build_tiny_sd3,
    clip_tokenizer,
    tiny_clip_config,
    tiny_vae,
)

# Native size 64 px (sample size 32, VAE scale 2); sizes are multiples of 2.
NATIVE = 64


@pytest.fixture(autouse=True)
def stop_image_process(data_dir):
    """End the image process a test's jobs started (one per data dir)."""
    import os
    import signal

    from tuneyard.images.process import pid_of_running

    yield
    pid = pid_of_running()
    if pid is not None:
        os.kill(pid, signal.SIGKILL)


@pytest.fixture
def reachable_hub(monkeypatch) -> Iterator[str]:
    """A server answering at HF_ENDPOINT, so a check that the model hub answers passes; it
    serves nothing (there is nothing to download here)."""
    from fastapi import FastAPI

    from tests.http_double import BackgroundServer

    hub = BackgroundServer(FastAPI(), "model hub")
    hub.start()
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    yield hub.url
    hub.stop()


@pytest.fixture(scope="session")
def tiny_sd_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tiny-sd") / "pipeline"
    return build_tiny_sd(out, tmp_path_factory.mktemp("tiny-clip-vocab"))


@pytest.fixture
def tiny_image_model(client, auth, tiny_sd_dir) -> dict:
    """The tiny pipeline registered as image model "tiny-sd"."""
    response = client.post(
        "/api/v1/image-models", json={"name": "tiny-sd", "path": str(tiny_sd_dir)}, headers=auth
    )
    assert response.status_code == 201, response.text
    return response.json()


def generated(client, auth, timeout: float = 180, **body) -> tuple[dict, list[dict]]:
    """POST /images, wait for its job to succeed; (the 202 answer, its images oldest first)."""
    response = client.post("/api/v1/images", json=body, headers=auth)
    assert response.status_code == 202, response.text
    accepted = response.json()
    job = wait_for_job(accepted["job_id"], timeout=timeout)
    assert job.status == "succeeded", (job.error, job.message)
    listed = client.get(
        "/api/v1/images", params={"job_id": accepted["job_id"]}, headers=auth
    ).json()
    by_id = {item["id"]: item for item in listed["items"]}
    return accepted, [by_id[image_id] for image_id in job.result["image_ids"]]


def png_of(client, auth, image_id: str):
    """The image's PNG, opened with Pillow."""
    import io

    from PIL import Image

    response = client.get(f"/api/v1/images/{image_id}/png", headers=auth)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    image = Image.open(io.BytesIO(response.content))
    image.load()
    return image


@pytest.fixture(scope="session")
def tiny_lora_file(tmp_path_factory, tiny_sd_dir) -> Path:
    """A LoRA of the tiny UNet's attention, built with peft (B random, not zero, so it changes
    the output), saved as diffusers saves LoRAs."""
    import torch
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    torch.manual_seed(1)
    unet = UNet2DConditionModel.from_pretrained(tiny_sd_dir / "unet")
    unet.add_adapter(
        LoraConfig(
            r=4,
            lora_alpha=4,
            target_modules=["to_q", "to_k", "to_v", "to_out.0"],
            init_lora_weights=False,
        )
    )
    out = tmp_path_factory.mktemp("tiny-lora")
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    StableDiffusionPipeline.save_lora_weights(out, unet_lora_layers=layers, safe_serialization=True)
    return out / "pytorch_lora_weights.safetensors"


@pytest.fixture(scope="session")
def tiny_sdxl_dir(tmp_path_factory) -> Path:
    """A tiny SDXL pipeline (two text encoders, the UNet's text-and-time conditioning) with a
    v-prediction scheduler, as diffusers' SDXL fast tests build theirs."""
    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    out = tmp_path_factory.mktemp("tiny-sdxl") / "pipeline"
    tokenizer = clip_tokenizer(tmp_path_factory.mktemp("tiny-sdxl-vocab"))
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        **TINY_UNET,
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=80,  # 6 time ids x 8 + the pooled 32
        cross_attention_dim=64,  # the two encoders' 32 each
    )
    config = tiny_clip_config(projection_dim=32)
    pipeline = StableDiffusionXLPipeline(
        vae=tiny_vae(),
        text_encoder=CLIPTextModel(config),
        text_encoder_2=CLIPTextModelWithProjection(config),
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        unet=unet,
        scheduler=EulerDiscreteScheduler(**SD_BETAS, prediction_type="v_prediction"),
    )
    pipeline.save_pretrained(out, safe_serialization=True)
    return out


@pytest.fixture(scope="session")
def tiny_sd3_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tiny-sd3") / "pipeline"
    return build_tiny_sd3(out, tmp_path_factory.mktemp("tiny-sd3-vocab"))


@pytest.fixture(scope="session")
def tiny_flux_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tiny-flux") / "pipeline"
    return build_tiny_flux(out, tmp_path_factory.mktemp("tiny-flux-vocab"))
