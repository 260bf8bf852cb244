"""Chat with a customized model: Tuneyard's inference process against loading per request.

The customized model is SmolLM2-135M-Instruct with a LoRA adapter (r=8 on every linear layer,
random B), applied unmerged. Tuneyard's side streams from the inference process over HTTP, where
the model stays loaded after the first request. The baseline is what the seed product did: load
the base and the PeftModel from disk for every request, then generate (streamed the same way,
with TextIteratorStreamer, in this process). Both run in bfloat16 with greedy decoding and up to
64 new tokens, with the same OpenMP settings, one prompt after the other, alternating sides so
that a busy machine slows both.

For each request: time to the first streamed text (TTFT), the whole request, and the tokens
generated; generation speed is tokens / (whole request - TTFT).

    python benchmarks/chat.py
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _models import smollm2_folder  # noqa: E402

PROMPTS = (
    "Write a short story about a lighthouse keeper.",
    "Explain how a bicycle works, step by step.",
    "Describe the water cycle to a ten-year-old.",
)
MAX_TOKENS = 64
LORA_RANK = 8


def make_adapter(base: Path, out: Path) -> Path:
    """A LoRA on every linear layer of the base, B drawn with a small std so it changes answers."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    config = LoraConfig(r=LORA_RANK, lora_alpha=2 * LORA_RANK, target_modules="all-linear")
    peft_model = get_peft_model(model, config)
    for name, parameter in peft_model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(parameter, std=0.01)
    peft_model.save_pretrained(out)
    return out


def tuneyard_request(url: str, token: str, base: Path, adapter: Path, prompt: str) -> dict:
    """One streamed request to the inference process; timings measured at this client."""
    import httpx

    body = {
        "model": "smollm2-custom",
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": MAX_TOKENS,
        "temperature": 0,
        "stream": True,
        "tuneyard_model": {"model_dir": str(base), "adapter_dir": str(adapter)},
    }
    started = time.monotonic()
    first = None
    pieces, usage = [], {}
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.stream(
        "POST", f"{url}/v1/chat/completions", json=body, headers=headers, timeout=600
    ) as response:
        if response.status_code != 200:
            sys.exit(f"The inference process refused the request: {response.read().decode()}")
        for line in response.iter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line.removeprefix("data: "))
            content = chunk["choices"][0]["delta"].get("content")
            if content and first is None:
                first = time.monotonic() - started
            pieces.append(content or "")
            usage = chunk.get("usage") or usage
    return {
        "ttft": first,
        "total": time.monotonic() - started,
        "tokens": usage["completion_tokens"],
        "text": "".join(pieces),
    }


def naive_request(base: Path, adapter: Path, prompt: str) -> dict:
    """Load the base and the adapter from disk, then stream a greedy answer."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer, TextIteratorStreamer

    started = time.monotonic()
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16)
    model = PeftModel.from_pretrained(model, adapter).eval()
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )["input_ids"]
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    result = {}

    def generate() -> None:
        with torch.inference_mode():
            output = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=MAX_TOKENS,
                do_sample=False,
                streamer=streamer,
            )
        result["tokens"] = output.shape[1] - ids.shape[1]

    worker = threading.Thread(target=generate)
    worker.start()
    first = None
    pieces = []
    for piece in streamer:
        if piece and first is None:
            first = time.monotonic() - started
        pieces.append(piece)
    worker.join()
    return {
        "ttft": first,
        "total": time.monotonic() - started,
        "tokens": result["tokens"],
        "text": "".join(pieces),
    }


def health(url: str, token: str) -> dict:
    import httpx

    headers = {"Authorization": f"Bearer {token}"}
    return httpx.get(f"{url}/health", headers=headers, timeout=30).json()


def speed(runs: list[dict]) -> float:
    return sum(r["tokens"] for r in runs) / sum(r["total"] - r["ttft"] for r in runs)


def main() -> None:
    from tuneyard.config import Settings
    from tuneyard.inference.process import OPENMP_ENV, start_inference, stop_inference

    # Before torch loads: the naive side runs with the OpenMP settings the inference process gets.
    for key, value in OPENMP_ENV.items():
        os.environ.setdefault(key, value)
    import torch

    base = smollm2_folder()
    print(f"Base: {base}; torch threads: {torch.get_num_threads()}")
    with tempfile.TemporaryDirectory(prefix="chat-bench-") as scratch:
        adapter = make_adapter(base, Path(scratch) / "adapter")
        settings = Settings(data_dir=Path(scratch) / "data")
        started = time.monotonic()
        url, token = start_inference(settings, timeout=300)
        print(f"Inference process started in {time.monotonic() - started:.1f} s")
        ours, naive = [], []
        try:
            for prompt in PROMPTS:
                ours.append(tuneyard_request(url, token, base, adapter, prompt))
                naive.append(naive_request(base, adapter, prompt))
            loads = health(url, token)["loads"]
        finally:
            stop_inference(settings)

    print()
    print(f"{'request':>8} | {'side':>9} | {'TTFT s':>7} | {'total s':>7} | {'tokens':>6} | tok/s")
    for index, (mine, theirs) in enumerate(zip(ours, naive, strict=True), start=1):
        for side, run in (("tuneyard", mine), ("naive", theirs)):
            rate = run["tokens"] / (run["total"] - run["ttft"])
            print(
                f"{index:>8} | {side:>9} | {run['ttft']:7.2f} | {run['total']:7.2f} | "
                f"{run['tokens']:>6} | {rate:5.1f}"
            )
    same = sum(mine["text"] == theirs["text"] for mine, theirs in zip(ours, naive, strict=True))
    print(f"\nSame answers on both sides: {same} of {len(PROMPTS)}")
    print(f"Models the inference process loaded for the {len(PROMPTS)} requests: {loads}")
    print(
        "Tuneyard / naive: "
        f"TTFT of request 1 {ours[0]['ttft'] / naive[0]['ttft']:.2f}x, "
        f"TTFT of request 2 {ours[1]['ttft'] / naive[1]['ttft']:.2f}x, "
        f"generation speed {speed(ours) / speed(naive):.2f}x "
        f"({speed(ours):.1f} against {speed(naive):.1f} tokens/s)"
    )


if __name__ == "__main__":
    main()
