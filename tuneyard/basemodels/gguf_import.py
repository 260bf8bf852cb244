"""Turn a GGUF file into a clean HF folder that trains: float safetensors, no quantization mark."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

from tuneyard.errors import Invalid

GGUF_MAGIC = b"GGUF"


def check_gguf_file(path: Path) -> None:
    """Refuse anything that is not a readable GGUF file, before a job is queued for it."""
    if not path.exists():
        raise Invalid(f"{path} does not exist: give the path of a .gguf file on this machine.")
    if not path.is_file():
        raise Invalid(f"{path} is not a file: give the path of a .gguf file.")
    if path.suffix.lower() != ".gguf":
        raise Invalid(
            f"{path} does not end in .gguf: give a GGUF model file "
            "(like SmolLM2-135M-Instruct.Q4_1.gguf), or register a model folder with path."
        )
    try:
        with path.open("rb") as handle:
            magic = handle.read(len(GGUF_MAGIC))
    except OSError as exc:
        raise Invalid(f"{path} cannot be read ({exc.strerror}).") from None
    if magic != GGUF_MAGIC:
        raise Invalid(
            f"{path} is not a GGUF file: it does not start with the GGUF magic bytes "
            f"(it starts with {magic!r}). Check that the download completed."
        )


def convert_gguf(
    gguf_path: Path,
    out_dir: Path,
    model_type: str,
    progress: Callable[[float, str], None],
) -> None:
    """Dequantize `gguf_path` with transformers and write a trainable HF folder into `out_dir`.

    The weights are written in float32: dequantized GGUF blocks are exact in float32, so the
    folder answers exactly as the GGUF does, while bfloat16 would round them again. float32
    is also what CPU training runs fastest and most safely in; the cost is twice the disk of
    bfloat16.
    """
    import torch
    from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

    source = str(gguf_path.parent)
    auto_class = AutoModelForCausalLM if model_type == "chat" else AutoModel
    progress(5, f"Reading the tokenizer from {gguf_path.name}")
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=gguf_path.name)
    progress(10, f"Dequantizing {gguf_path.name} (about a minute for a small model)")
    quantized = auto_class.from_pretrained(source, gguf_file=gguf_path.name, dtype=torch.float32)
    progress(60, "Building a clean model from its config")
    # The loaded model's config still says quant_method "gguf", and trainers refuse a model
    # marked as quantized; a model built from a config without that mark saves clean.
    config = copy.deepcopy(quantized.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.float32
    clean = auto_class.from_config(config, dtype=torch.float32)
    clean.load_state_dict(quantized.state_dict(), strict=True)
    clean.generation_config = quantized.generation_config
    del quantized
    progress(75, "Writing safetensors weights")
    clean.save_pretrained(out_dir)
    progress(90, "Saving the tokenizer and its chat template")
    tokenizer.save_pretrained(out_dir)
