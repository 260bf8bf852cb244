"""Loading a diffusion pipeline and running one recipe on it. Imports torch and diffusers:
only job bodies and the image process import this module."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import diffusers
import torch
from diffusers import AutoPipelineForImage2Image, DiffusionPipeline
from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
from PIL import Image
from PIL.PngImagePlugin import PngInfo
from safetensors.torch import load_file

from tuneyard.images.card import PNG_RECIPE_KEY, preflight
from tuneyard.images.grounding import final_prompt

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def load_pipeline(spec: dict[str, Any], dtype: torch.dtype) -> Any:
    """The registered pipeline (a diffusers folder or a single file), on the CPU."""
    if spec["source"] == "single_file":
        pipeline_class = getattr(diffusers, spec["pipeline_class"])
        kwargs: dict[str, Any] = {"dtype": dtype}
        if spec.get("config_path"):
            kwargs["config"] = spec["config_path"]
            return pipeline_class.from_single_file(spec["path"], **kwargs)
        try:
            return pipeline_class.from_single_file(spec["path"], **kwargs)
        except (LocalEntryNotFoundError, HfHubHTTPError) as exc:
            # Registration checked the hub; it has gone away since, or refuses these configs.
            raise RuntimeError(
                f"{Path(spec['path']).name} holds weights only, and its family's default "
                f"configs could not be had from the model hub ({exc}). Register it again with "
                "config_path, a diffusers folder of the same family and shape."
            ) from None
    return DiffusionPipeline.from_pretrained(
        spec["path"], dtype=dtype, **_left_out(Path(spec["path"]))
    )


def _left_out(folder: Path) -> dict[str, None]:
    """The components the folder was saved without (null in model_index.json, e.g. SD3 without
    its T5 encoder), given as None: diffusers loads an optional one so, but insists on being
    told for the others."""
    index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
    return {
        name: None
        for name, entry in index.items()
        if not name.startswith("_") and isinstance(entry, list) and entry[:1] == [None]
    }


class LoadedPipeline:
    """A pipeline loaded once, its image-to-image twin made on first use (sharing weights)."""

    def __init__(self, spec: dict[str, Any]):
        plan = preflight(spec["card"])
        if plan["device"] == "cuda" and not torch.cuda.is_available():
            plan = {**plan, "device": "cpu", "dtype": "float32", "cpu_offload": False}
        self.plan = plan
        pipe = load_pipeline(spec, DTYPES[plan["dtype"]])
        if plan["device"] == "cuda":
            if plan["cpu_offload"]:
                pipe.enable_model_cpu_offload()
            else:
                pipe.to("cuda")
        pipe.set_progress_bar_config(disable=True)
        # Typed Any: diffusers' pipelines are callables its stubs do not describe.
        self.text_to_image: Any = pipe
        self._image_to_image: Any = None

    @property
    def image_to_image(self) -> Any:
        if self._image_to_image is None:
            self._image_to_image = AutoPipelineForImage2Image.from_pipe(self.text_to_image)
            self._image_to_image.set_progress_bar_config(disable=True)
        return self._image_to_image

    def generate(
        self,
        recipe: dict[str, Any],
        source: Path | None,
        on_step: Callable[[int], None],
        adapter_files: dict[str, str] | None = None,
    ) -> Image.Image:
        """One image of `recipe` (its seed included), with the recipe's adapters (their files
        by id) stacked for this image alone; `on_step` is called after each step and may raise
        to stop it."""
        pipe = self.image_to_image if recipe["mode"] == "image-to-image" else self.text_to_image
        adapters = recipe.get("adapters") or []
        if not adapters:
            return self._run(pipe, recipe, source, on_step)
        files = adapter_files or {}
        names = [f"adapter_{index}" for index in range(len(adapters))]
        try:
            for name, adapter in zip(names, adapters, strict=True):
                pipe.load_lora_weights(load_file(files[adapter["id"]]), adapter_name=name)
            pipe.set_adapters(names, adapter_weights=[float(a["weight"]) for a in adapters])
            return self._run(pipe, recipe, source, on_step)
        finally:
            # The pipeline stays as loaded: the next image gets only its own adapters.
            pipe.unload_lora_weights()

    def _run(
        self,
        pipe: Any,
        recipe: dict[str, Any],
        source: Path | None,
        on_step: Callable[[int], None],
    ) -> Image.Image:

        def step_end(_pipe, step: int, _timestep, tensors: dict[str, Any]) -> dict[str, Any]:
            on_step(step + 1)
            return tensors

        # A CPU generator gives the same noise on any device: a recipe reproduces anywhere.
        generator = torch.Generator(device="cpu").manual_seed(int(recipe["seed"]))
        common: dict[str, Any] = {
            "prompt": final_prompt(recipe),
            "num_inference_steps": int(recipe["steps"]),
            "guidance_scale": float(recipe["guidance"]),
            "generator": generator,
            "callback_on_step_end": step_end,
            "output_type": "pil",
        }
        if recipe["negative_prompt"] and recipe["guidance"] > 1:
            common["negative_prompt"] = recipe["negative_prompt"]
        size = (int(recipe["width"]), int(recipe["height"]))
        if recipe["mode"] == "image-to-image":
            assert source is not None, "image-to-image needs its source"
            with Image.open(source) as opened:
                init = opened.convert("RGB")
            if init.size != size:
                init = init.resize(size, Image.Resampling.LANCZOS)
            result = pipe(image=init, strength=float(recipe["strength"]), **common)
        else:
            result = pipe(width=size[0], height=size[1], **common)
        return result.images[0]


def png_bytes(image: Image.Image, recipe: dict[str, Any]) -> bytes:
    """The image as PNG with its recipe in a text chunk."""
    info = PngInfo()
    info.add_text(PNG_RECIPE_KEY, json.dumps(recipe, sort_keys=True))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()
