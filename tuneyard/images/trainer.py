"""Training a LoRA of an image model's denoiser on captioned images, as diffusers' own LoRA
training scripts do, with the VAE and text encoders frozen. One loop serves every architecture;
what differs is the objective:

- UNet pipelines (SD 1.x/2.x, SDXL): noise added at a random timestep of the scheduler's
  training schedule, and the UNet's prediction (noise, or velocity for v-prediction models)
  regressed with mean squared error.
- Transformer pipelines (SD3/SD3.5, FLUX): flow matching. Each example gets a noise level sigma
  from the scheduler's training schedule (shifted as the scheduler shifts it), at a position
  drawn logit-normally (the sigmoid of a standard normal, so the middle noise levels are seen
  most, as in SD3's paper); the transformer sees (1 - sigma) * latents + sigma * noise and its
  prediction is regressed on noise - latents, unweighted.

Imports torch, diffusers and peft: only the training job's body imports this module.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import (
    DDPMScheduler,
    FlowMatchEulerDiscreteScheduler,
    FluxTransformer2DModel,
    SD3Transformer2DModel,
)
from diffusers.utils import convert_state_dict_to_diffusers
from diffusers.utils.torch_utils import randn_tensor
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from PIL import Image

from tuneyard.images.pipeline import load_pipeline

# The file `save_lora_weights` writes: what an uploaded diffusers LoRA is.
LORA_FILE = "pytorch_lora_weights.safetensors"
MAX_GRAD_NORM = 1.0
# The guidance a guidance-distilled FLUX transformer (FLUX.1-dev) is given while training: the
# default of diffusers' FLUX LoRA script, and of generation here.
FLUX_TRAIN_GUIDANCE = 3.5
# The card's prediction type of the transformer pipelines.
FLOW_MATCHING = "flow_matching"


@dataclass(frozen=True)
class TrainedLora:
    file: Path
    final_loss: float
    min_loss: float
    prediction_type: str
    device: str
    dtype: str
    seconds: float


@dataclass(frozen=True)
class Example:
    pixels: torch.Tensor  # 3 x resolution x resolution, in [-1, 1]
    original_size: tuple[int, int]  # height, width
    crop_top_left: tuple[int, int]
    caption: str


def train_lora(
    spec: dict[str, Any],
    records: list[dict[str, Any]],
    params: dict[str, Any],
    on_step: Callable[[int, float, float], None],
    out_dir: Path,
    on_loaded: Callable[[str], None] = lambda _device: None,
) -> TrainedLora:
    """Train a LoRA of the pipeline's denoiser (its UNet or its transformer) for
    `params["steps"]` steps on `records` (`path`, `text`); `on_step(step, loss, seconds)` hears
    each step and may raise to stop. Writes the LoRA into `out_dir` as the pipeline class saves
    LoRAs, alpha folded into the weights, so that it loads like any uploaded diffusers LoRA
    (which diffusers scales by 1)."""
    started = time.monotonic()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    # On a GPU the frozen weights are kept in bf16 where it is supported (fp16 would need a
    # gradient scaler); the LoRA's own weights stay fp32 either way.
    bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    dtype = torch.bfloat16 if bf16 else torch.float32
    seed = int(params["seed"])
    torch.manual_seed(seed)
    generator = torch.Generator(device="cpu").manual_seed(seed)

    pipe = load_pipeline(spec, dtype)
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component.requires_grad_(False)
            component.eval()
    pipe.to(device)
    objective = objective_of(pipe)
    denoiser = getattr(pipe, objective.component)
    rank = int(params["rank"])
    denoiser.add_adapter(
        LoraConfig(
            r=rank,
            lora_alpha=int(params["alpha"]),
            init_lora_weights="gaussian",
            target_modules=list(params["target_modules"]),
        )
    )
    trainable = [weight for weight in denoiser.parameters() if weight.requires_grad]
    for weight in trainable:
        weight.data = weight.data.float()
    denoiser.train()
    optimizer = torch.optim.AdamW(trainable, lr=float(params["learning_rate"]))
    on_loaded(device.type)

    resolution = int(params["resolution"])
    batch_size = int(params["batch_size"])
    stream = _shuffled(len(records), random.Random(seed))
    losses: list[float] = []
    for step in range(1, int(params["steps"]) + 1):
        step_started = time.monotonic()
        batch = [_example(records[next(stream)], resolution) for _ in range(batch_size)]
        with torch.no_grad():
            pixels = torch.stack([example.pixels for example in batch]).to(device, dtype)
            latents = _latents(pipe.vae, pixels, generator)
        loss = objective.loss(batch, latents, device, dtype, generator)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, MAX_GRAD_NORM)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        value = float(loss.detach())
        if not math.isfinite(value):
            raise RuntimeError(
                f"The loss became {value} at step {step}; lower the learning rate "
                f"(it was {params['learning_rate']})."
            )
        losses.append(value)
        on_step(step, value, time.monotonic() - step_started)

    return TrainedLora(
        file=save_lora(pipe, objective.component, rank, int(params["alpha"]), out_dir),
        final_loss=losses[-1],
        min_loss=min(losses),
        prediction_type=objective.prediction_type,
        device=device.type,
        dtype=str(dtype).removeprefix("torch."),
        seconds=time.monotonic() - started,
    )


def save_lora(pipe: Any, component: str, rank: int, alpha: int, out_dir: Path) -> Path:
    """The LoRA of the pipeline's `component` ("unet" or "transformer") as the pipeline class
    saves LoRAs, with alpha / rank folded into its up weights: diffusers loads a LoRA without
    alphas at scale 1, so it then acts as trained. A UNet's keys are converted to diffusers'
    naming, a transformer's kept as peft names them, as diffusers' own scripts save each."""
    scale = alpha / rank
    layers = {
        key: (tensor * scale if ".lora_B." in key else tensor).detach().to("cpu", torch.float32)
        for key, tensor in get_peft_model_state_dict(getattr(pipe, component)).items()
    }
    if component == "unet":
        layers = convert_state_dict_to_diffusers(layers)
    type(pipe).save_lora_weights(
        out_dir, **{f"{component}_lora_layers": layers}, safe_serialization=True
    )
    return out_dir / LORA_FILE


def objective_of(pipe: Any) -> UNetDenoising | FlowMatching:
    """What the pipeline's denoiser is trained to predict, by the kind of denoiser it has."""
    transformer = getattr(pipe, "transformer", None)
    if isinstance(transformer, SD3Transformer2DModel | FluxTransformer2DModel):
        return FlowMatching(pipe)
    if getattr(pipe, "unet", None) is not None:
        return UNetDenoising(pipe)
    denoiser = type(transformer).__name__ if transformer is not None else "none"
    raise ValueError(
        f"{type(pipe).__name__} has a denoiser ({denoiser}) this training does not know: LoRAs "
        "are trained for SD 1.x/2.x, SDXL, SD3 and FLUX pipelines."
    )


class UNetDenoising:
    """A UNet's noise-prediction objective on the scheduler's DDPM training schedule."""

    component = "unet"

    def __init__(self, pipe: Any):
        self.pipe = pipe
        self.scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
        self.prediction_type = str(self.scheduler.config.prediction_type)

    def loss(
        self,
        batch: list[Example],
        latents: torch.Tensor,
        device: torch.device,
        dtype: torch.dtype,
        generator: torch.Generator,
    ) -> torch.Tensor:
        pipe, scheduler = self.pipe, self.scheduler
        captions = [example.caption for example in batch]
        with torch.no_grad():
            noise = randn_tensor(latents.shape, generator=generator, device=device, dtype=dtype)
            timesteps = torch.randint(
                0, scheduler.config.num_train_timesteps, (len(batch),), generator=generator
            ).to(device)
            noisy = scheduler.add_noise(latents, noise, timesteps)
            extra: dict[str, Any] = {}
            if getattr(pipe, "text_encoder_2", None) is not None:  # SDXL
                embeds, _, pooled, _ = pipe.encode_prompt(
                    prompt=captions,
                    device=device,
                    num_images_per_prompt=1,
                    do_classifier_free_guidance=False,
                )
                side = batch[0].pixels.shape[-1]
                time_ids = torch.tensor(
                    [[*ex.original_size, *ex.crop_top_left, side, side] for ex in batch],
                    device=device,
                    dtype=embeds.dtype,
                )
                extra["added_cond_kwargs"] = {"text_embeds": pooled, "time_ids": time_ids}
            else:
                embeds, _ = pipe.encode_prompt(captions, device, 1, False)
            if self.prediction_type == "epsilon":
                target = noise
            elif self.prediction_type == "v_prediction":
                target = scheduler.get_velocity(latents, noise, timesteps)
            else:  # "sample"
                target = latents
        prediction = pipe.unet(
            noisy, timesteps, encoder_hidden_states=embeds, return_dict=False, **extra
        )[0]
        return F.mse_loss(prediction.float(), target.float())


class FlowMatching:
    """A transformer's flow-matching objective (SD3/SD3.5 and FLUX): the velocity from the
    latents to the noise, at a noise level of the scheduler's training schedule."""

    component = "transformer"
    prediction_type = FLOW_MATCHING

    def __init__(self, pipe: Any):
        self.pipe = pipe
        scheduler = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config)
        # One noise level per training timestep, highest first: SD3's shifted by its `shift`,
        # FLUX's (dynamic shifting, which depends on the image size) as they are.
        self.sigmas = scheduler.sigmas.flatten()[: scheduler.config.num_train_timesteps].float()
        self.train_timesteps = int(scheduler.config.num_train_timesteps)
        self.flux = isinstance(pipe.transformer, FluxTransformer2DModel)

    def loss(
        self,
        batch: list[Example],
        latents: torch.Tensor,
        device: torch.device,
        dtype: torch.dtype,
        generator: torch.Generator,
    ) -> torch.Tensor:
        pipe = self.pipe
        captions = [example.caption for example in batch]
        size = len(batch)
        with torch.no_grad():
            noise = randn_tensor(latents.shape, generator=generator, device=device, dtype=dtype)
            position = torch.sigmoid(torch.randn(size, generator=generator))
            index = (position * len(self.sigmas)).long().clamp(max=len(self.sigmas) - 1)
            sigmas = self.sigmas[index].to(device)
            sigma = sigmas.view(-1, 1, 1, 1).to(dtype)
            noisy = (1.0 - sigma) * latents + sigma * noise
            target = noise - latents
            if self.flux:
                embeds, pooled, text_ids = pipe.encode_prompt(
                    prompt=captions, prompt_2=None, device=device, num_images_per_prompt=1
                )
                channels, height, width = latents.shape[1:]
                # FLUX sees its latents as a sequence of 2x2 patches with their positions; the
                # loss is taken on the same sequence (a reordering of the same numbers).
                pack = type(pipe)._pack_latents
                noisy = pack(noisy, size, channels, height, width)
                target = pack(target, size, channels, height, width)
                image_ids = type(pipe)._prepare_latent_image_ids(
                    size, height // 2, width // 2, device, dtype
                )
                guidance = None
                if pipe.transformer.config.guidance_embeds:
                    guidance = torch.full((size,), FLUX_TRAIN_GUIDANCE, device=device)
                inputs = {
                    # FLUX's transformer scales its timestep (and guidance) by 1000 itself.
                    "timestep": sigmas.to(dtype),
                    "guidance": guidance,
                    "pooled_projections": pooled,
                    "encoder_hidden_states": embeds,
                    "txt_ids": text_ids,
                    "img_ids": image_ids,
                }
            else:
                embeds, _, pooled, _ = pipe.encode_prompt(
                    prompt=captions,
                    prompt_2=None,
                    prompt_3=None,
                    device=device,
                    num_images_per_prompt=1,
                    do_classifier_free_guidance=False,
                )
                inputs = {
                    # In float32, as the pipeline gives it: bf16 would round 999 to 1000.
                    "timestep": sigmas * self.train_timesteps,
                    "pooled_projections": pooled,
                    "encoder_hidden_states": embeds,
                }
        prediction = pipe.transformer(hidden_states=noisy, return_dict=False, **inputs)[0]
        return F.mse_loss(prediction.float(), target.float())


def _latents(vae: Any, pixels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The images' latents as the denoiser sees them: sampled from the VAE's posterior, shifted
    (SD3 and FLUX's VAEs have a shift factor) and scaled."""
    latents = vae.encode(pixels).latent_dist.sample(generator=generator)
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return (latents - shift) * vae.config.scaling_factor


def _shuffled(count: int, order: random.Random) -> Iterator[int]:
    """Indices of the records, each epoch in a new order, without end."""
    while True:
        indices = list(range(count))
        order.shuffle(indices)
        yield from indices


def _example(record: dict[str, Any], resolution: int) -> Example:
    """The image resized so its shorter side is `resolution`, then center-cropped square."""
    with Image.open(record["path"]) as opened:
        image = opened.convert("RGB")
    width, height = image.size
    scale = resolution / min(width, height)
    size = (max(resolution, round(width * scale)), max(resolution, round(height * scale)))
    image = image.resize(size, Image.Resampling.BICUBIC)
    left, top = (size[0] - resolution) // 2, (size[1] - resolution) // 2
    image = image.crop((left, top, left + resolution, top + resolution))
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return Example(
        pixels=torch.from_numpy(array).permute(2, 0, 1),
        original_size=(height, width),
        crop_top_left=(top, left),
        caption=record["text"],
    )
