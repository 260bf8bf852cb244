"""Quantizing an f16 GGUF file with llama.cpp's own quantizer, for the deploy quantizations."""

from __future__ import annotations

from pathlib import Path

from tuneyard.basemodels.gguf_import import GGUF_MAGIC
from tuneyard.deploy.quantization import NO_QUANTIZATION, get_quantization
from tuneyard.errors import Invalid
from tuneyard.storage import atomic_path


def _check_source(src: Path) -> None:
    try:
        with src.open("rb") as handle:
            magic = handle.read(len(GGUF_MAGIC))
    except OSError as exc:
        raise Invalid(f"{src} cannot be read ({exc.strerror}).") from None
    if magic != GGUF_MAGIC:
        raise Invalid(f"{src} is not a GGUF file; quantize an f16 GGUF export.")


def quantize_gguf(src: Path, dst: Path, quantization: str, threads: int | None = None) -> None:
    """Write `src` (an f16 or f32 GGUF) quantized to `quantization` as `dst`, atomically.

    Rows whose length is not a multiple of the k-quant block (256) get llama.cpp's fallback
    type for that quantization, as its quantize tool does.
    """
    import ctypes

    import llama_cpp

    ftype = get_quantization(quantization).llama_ftype
    if ftype is None:
        raise Invalid(
            f"{NO_QUANTIZATION} needs no quantize step: export the model as an f16 GGUF instead."
        )
    _check_source(src)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, ftype)
    params.nthread = threads or 0  # 0: llama.cpp uses every core
    with atomic_path(dst) as staging:
        status = llama_cpp.llama_model_quantize(
            str(src).encode(), str(staging).encode(), ctypes.byref(params)
        )
        if status != 0:
            raise Invalid(
                f"llama.cpp could not quantize {src.name} to {quantization} (status {status}); "
                "quantize an f16 or f32 GGUF export (see the log for llama.cpp's reason)."
            )
