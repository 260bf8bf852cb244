"""A model's GGUF file as a deploy ships it: exported at f16 by Tuneyard's exporter, then
quantized by llama.cpp's quantizer; an adapter a GGUF LoRA cannot carry is merged in first."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tuneyard.deploy.quantization import NO_QUANTIZATION

Progress = Callable[[float, str], None]


def write_model_gguf(model_dir: Path, out: Path, quantization: str, progress: Progress) -> None:
    """`out`: the model as one GGUF file at `quantization` (f16 for no_quantization).

    `progress` gets fractions of this step (export 0-0.9, quantizing 0.9-1).
    """
    from tuneyard.deploy.gguf_export import export_gguf
    from tuneyard.deploy.quantize import quantize_gguf

    f16 = out.with_name(f"{out.stem}-f16.gguf")
    progress(0.0, "Exporting GGUF (f16)")
    export_gguf(model_dir, f16, "f16", lambda f, m: progress(0.9 * f, m))
    if quantization == NO_QUANTIZATION:
        f16.rename(out)
        return
    progress(0.9, f"Quantizing to {quantization}")
    try:
        quantize_gguf(f16, out, quantization)
    finally:
        f16.unlink(missing_ok=True)


def merge_adapter_for_export(base_dir: Path, adapter_dir: Path, out_dir: Path) -> None:
    """A merged fp16 copy of base + adapter in `out_dir`, for adapters that ship merged."""
    from tuneyard.complete.merge import (
        merge_adapter_into_base,
        merge_with_peft,
        plan_merge,
        read_adapter,
        write_model_files,
    )

    adapter = read_adapter(adapter_dir)
    out_dir.mkdir(parents=True)
    if adapter.method == "peft":
        merge_with_peft(base_dir, adapter, out_dir, "fp16", lambda *_: None)
    else:
        merge_adapter_into_base(plan_merge(base_dir, adapter, "fp16"), out_dir, lambda *_: None)
    write_model_files(base_dir, adapter_dir, out_dir, "fp16")
