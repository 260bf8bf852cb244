"""What a diffusion pipeline is, read from its files without loading a weight: the pipeline
class, native size and the multiple sizes must be of, parameter count, size on disk; and what
running it here needs (preflight)."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import psutil

from tuneyard.basemodels.card import (
    SAFETENSORS_DTYPES,
    format_bytes,
    format_count,
    read_safetensors_header,
)
from tuneyard.cards import folder_size
from tuneyard.errors import Invalid

FOLDER_CONTENTS = (
    "a diffusers pipeline folder holds model_index.json (naming the pipeline class and its "
    "components) and one folder per component with its config (unet/, vae/, text_encoder/, "
    "scheduler/ ...)"
)
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")
# Bytes per parameter of each dtype a pipeline is run in.
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
# Activations, the VAE decode and the framework's own share, on top of the weights.
MEMORY_OVERHEAD = 1.25
NVIDIA_SMI_TIMEOUT_SECONDS = 5
# The PNG text chunk that carries an image's recipe.
PNG_RECIPE_KEY = "tuneyard.recipe"

# Families by pipeline class name: how they are sized and which dtype suits them on a GPU.
FAMILIES = (
    ("Flux", "flux"),
    ("StableDiffusion3", "sd3"),
    ("StableDiffusionXL", "sdxl"),
    ("StableDiffusion", "sd"),
)
GPU_DTYPES = {"flux": "bfloat16", "sd3": "float16", "sdxl": "float16", "sd": "float16"}
# Single checkpoint files: the family by a key only that family's state dict has, checked in
# this order (an SDXL file has the SD UNet's keys as well).
SINGLE_FILE_KEYS = (
    ("double_blocks.0.img_attn.qkv.weight", "flux", "FluxPipeline"),
    ("model.diffusion_model.joint_blocks.0.context_block.attn.qkv.weight", "sd3", None),
    ("conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight", "sdxl", None),
    ("model.diffusion_model.input_blocks.0.0.weight", "sd", None),
)
SINGLE_FILE_PIPELINES = {
    "flux": "FluxPipeline",
    "sd3": "StableDiffusion3Pipeline",
    "sdxl": "StableDiffusionXLPipeline",
    "sd": "StableDiffusionPipeline",
}
SINGLE_FILE_NATIVE = {"flux": 1024, "sd3": 1024, "sdxl": 1024, "sd": 512}


def family_of(pipeline_class: str) -> str:
    for marker, family in FAMILIES:
        if marker in pipeline_class:
            return family
    return "other"


def read_folder_card(folder: Path) -> dict[str, Any]:
    """The card of a diffusers folder; Invalid, naming what is wrong, if it is not one."""
    if not folder.exists():
        raise Invalid(f"{folder} does not exist: give the path of a diffusers folder or file.")
    if not folder.is_dir():
        raise Invalid(f"{folder} is not a folder: {FOLDER_CONTENTS}.")
    index_path = folder / "model_index.json"
    if not index_path.is_file():
        raise Invalid(f"{folder} has no model_index.json: {FOLDER_CONTENTS}.")
    index = _read_json(index_path)
    pipeline_class = index.get("_class_name")
    if not isinstance(pipeline_class, str) or not pipeline_class:
        raise Invalid(
            f"{index_path} names no pipeline class (_class_name): {FOLDER_CONTENTS}; fix the file."
        )
    components = {
        name: spec[1]
        for name, spec in index.items()
        if not name.startswith("_") and isinstance(spec, list) and len(spec) == 2 and spec[1]
    }
    missing = [name for name in components if not (folder / name).is_dir()]
    if missing:
        raise Invalid(
            f"{folder} lacks the folder of {', '.join(missing)}, which model_index.json lists: "
            f"{FOLDER_CONTENTS}."
        )
    configs = {name: _component_config(folder / name) for name in components}
    vae_blocks = configs.get("vae", {}).get("block_out_channels") or [0, 0, 0, 0]
    vae_scale = 2 ** (len(vae_blocks) - 1)
    family = family_of(pipeline_class)
    if "transformer" in components:
        denoiser = configs["transformer"]
        # The transformer patches latents 2x2 (FLUX packs them the same way).
        multiple = vae_scale * max(2, int(denoiser.get("patch_size") or 1))
        native = int(denoiser.get("sample_size") or 128) * vae_scale
    else:
        denoiser = configs.get("unet", {})
        multiple = vae_scale
        native = int(denoiser.get("sample_size") or 64) * vae_scale
    parameters, dtypes, counted = 0, Counter[str](), True
    for name in components:
        count, by_dtype = _count_component(folder / name)
        if count is None:
            counted = counted and not _has_weights(folder / name)
            continue
        parameters += count
        dtypes.update(by_dtype)
    weights_dtype = dtypes.most_common(1)[0][0] if dtypes else None
    return {
        "pipeline_class": pipeline_class,
        "family": family,
        "components": components,
        "scheduler": components.get("scheduler"),
        "native_size": native,
        "size_multiple": multiple,
        "parameter_count": parameters if counted else None,
        "parameters": format_count(parameters if counted else None),
        "dtype": SAFETENSORS_DTYPES.get(weights_dtype, weights_dtype) if weights_dtype else None,
        "size_bytes": folder_size(folder),
        "size": format_bytes(folder_size(folder)),
    }


def read_single_file_card(path: Path, config: Path | None) -> dict[str, Any]:
    """The card of one checkpoint file; with `config` (a diffusers folder without weights, or
    with), its pipeline class and sizes come from that folder."""
    if not path.is_file():
        raise Invalid(f"{path} is not a file: give a .safetensors or .ckpt checkpoint.")
    if path.suffix not in SINGLE_FILE_SUFFIXES:
        raise Invalid(
            f"{path.name} is not a checkpoint file: give a .safetensors or .ckpt file, or a "
            "diffusers folder."
        )
    parameters: int | None = None
    weights_dtype: str | None = None
    family = "sd"
    if path.suffix == ".safetensors":
        header = read_safetensors_header(path)
        for key, found, _class in SINGLE_FILE_KEYS:
            if key in header:
                family = found
                break
        else:
            raise Invalid(
                f"{path.name} holds no Stable Diffusion, SDXL, SD3 or FLUX weights that Tuneyard "
                "recognizes; give its diffusers folder instead."
            )
        parameters = sum(math.prod(entry["shape"]) for entry in header.values())
        by_dtype = Counter[str]()
        for entry in header.values():
            by_dtype[entry["dtype"]] += math.prod(entry["shape"])
        top = by_dtype.most_common(1)[0][0] if by_dtype else None
        weights_dtype = SAFETENSORS_DTYPES.get(top, top) if top else None
    card: dict[str, Any] = {
        "pipeline_class": SINGLE_FILE_PIPELINES[family],
        "family": family,
        "components": {},
        "scheduler": None,
        "native_size": SINGLE_FILE_NATIVE[family],
        "size_multiple": 16 if family in ("flux", "sd3") else 8,
    }
    if config is not None:
        folder_card = read_folder_card(config)
        card.update(
            {
                key: folder_card[key]
                for key in (
                    "pipeline_class",
                    "family",
                    "components",
                    "scheduler",
                    "native_size",
                    "size_multiple",
                )
            }
        )
    size = path.stat().st_size
    card.update(
        {
            "parameter_count": parameters,
            "parameters": format_count(parameters),
            "dtype": weights_dtype,
            "size_bytes": size,
            "size": format_bytes(size),
        }
    )
    return card


def preflight(card: dict[str, Any]) -> dict[str, Any]:
    """What running the pipeline here needs and has: a GPU in half precision (offloading to
    the CPU when it does not fit), else the CPU in float32, with a warning about speed."""
    parameters = card.get("parameter_count")
    gpu = _gpu_memory()
    warnings: list[str] = []
    if gpu is not None:
        device, dtype = "cuda", GPU_DTYPES.get(card.get("family", ""), "float16")
        available, total = gpu
    else:
        device, dtype = "cpu", "float32"
        memory = psutil.virtual_memory()
        available, total = memory.available, memory.total
    needed = (
        int(parameters * DTYPE_BYTES[dtype] * MEMORY_OVERHEAD) if parameters is not None else None
    )
    offload = False
    fits: bool | None = None
    if needed is not None:
        fits = needed <= available
        if device == "cuda" and not fits:
            offload = True
            warnings.append(
                f"About {format_bytes(needed)} needed, {format_bytes(available)} of GPU memory "
                "free: the pipeline runs with model CPU offload (slower)."
            )
        elif not fits:
            warnings.append(
                f"About {format_bytes(needed)} needed, {format_bytes(available)} of memory "
                "free: generation may fail for lack of memory."
            )
    else:
        warnings.append("The parameter count is unknown (pickled weights): no memory estimate.")
    if device == "cpu":
        warnings.append(
            "No GPU here: the pipeline runs on the CPU in float32, minutes per image for a real "
            "model."
        )
    return {
        "device": device,
        "dtype": dtype,
        "estimated_bytes": needed,
        "estimated": format_bytes(needed),
        "available_bytes": available,
        "total_bytes": total,
        "fits": fits,
        "cpu_offload": offload,
        "warnings": warnings,
    }


def _gpu_memory() -> tuple[int, int] | None:
    """(free, total) bytes of the first NVIDIA GPU, asked of nvidia-smi (no torch import)."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        out = subprocess.run(
            [smi, "--query-gpu=memory.free,memory.total", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=NVIDIA_SMI_TIMEOUT_SECONDS,
            check=True,
        ).stdout
        free, total = (int(part) * 1024 * 1024 for part in out.splitlines()[0].split(","))
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None
    return free, total


def _component_config(folder: Path) -> dict[str, Any]:
    for name in ("config.json", "scheduler_config.json"):
        if (folder / name).is_file():
            return _read_json(folder / name)
    return {}


def _has_weights(folder: Path) -> bool:
    return any(folder.glob("*.bin")) or any(folder.glob("*.safetensors"))


def _count_component(folder: Path) -> tuple[int | None, Counter[str]]:
    """Parameters of one component by its safetensors headers; a variant (`*.fp16.*`) counts
    only where no main file is there."""
    files = sorted(folder.glob("*.safetensors"))
    main = [path for path in files if len(path.name.split(".")) == 2]
    chosen = main or files
    if not chosen:
        return None, Counter()
    total = 0
    by_dtype = Counter[str]()
    for path in chosen:
        for entry in read_safetensors_header(path).values():
            count = math.prod(entry["shape"])
            total += count
            by_dtype[entry["dtype"]] += count
    return total, by_dtype


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise Invalid(f"{path} is not valid JSON ({exc}); fix or replace the file.") from None
    if not isinstance(data, dict):
        raise Invalid(f"{path} should hold a JSON object; fix or replace the file.")
    return data
