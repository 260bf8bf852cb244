"""DeepImage generation: Tuneyard's pipeline runner against a bare diffusers pipeline call on the
same model, seed and steps, in one run; and what keeping the pipeline loaded saves a second
request against loading it per request.

The model is built from configs with random weights (no weights can be downloaded here) and
saved as a diffusers folder: `--model tiny` is the tests' tiny Stable Diffusion (64 px native),
`--model sd15` has Stable Diffusion 1.5's architecture (860M-parameter UNet, 512 px), for a GPU.
On a GPU both sides run in float16; on a CPU in float32.

Bare: `pipe(prompt, num_inference_steps, guidance_scale, generator)` and a PNG save.
Tuneyard: `LoadedPipeline.generate` (a per-step callback that checks for cancel and reports
progress) and the PNG with its recipe in a text chunk. Each is timed `--runs` times after one
warm-up, alternating, and the medians compared (target: at most 1.05x).

Second request: load the pipeline from disk and generate (what a job that loads per request
pays), against generating on the pipeline already loaded.

    python benchmarks/images.py [--model tiny|sd15] [--steps 20] [--size 512] [--runs 5]
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PROMPT = "a lighthouse on a cliff at dusk, oil painting"
SEED = 1234


def build_pipeline(kind: str, out: Path, dtype) -> None:
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig

    from tests.images.tiny import build_tiny_sd, clip_tokenizer, save_sd_pipeline

    if kind == "tiny":
        build_tiny_sd(out, out.parent / "vocab", dtype)
        return
    # Stable Diffusion 1.5's shapes (diffusers' defaults are SD 1.x but for these).
    tokenizer = clip_tokenizer(out.parent / "vocab")
    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768)
    vae = AutoencoderKL(
        block_out_channels=[128, 256, 512, 512],
        down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4,
        latent_channels=4,
        layers_per_block=2,
    )
    text = CLIPTextConfig(
        hidden_size=768,
        intermediate_size=3072,
        num_attention_heads=12,
        num_hidden_layers=12,
        vocab_size=49408,
    )
    save_sd_pipeline(out, unet, vae, text, tokenizer, dtype)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=("tiny", "sd15"), default="tiny")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--size", type=int, default=None, help="Side in px (native if left out).")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    import torch
    from diffusers import DiffusionPipeline

    from tuneyard.images.card import read_folder_card
    from tuneyard.images.pipeline import LoadedPipeline, png_bytes

    cuda = torch.cuda.is_available()
    dtype = torch.float16 if cuda else torch.float32
    device = "cuda" if cuda else "cpu"

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "pipeline"
        started = time.perf_counter()
        build_pipeline(args.model, folder, dtype)
        print(f"built {args.model} in {time.perf_counter() - started:.1f} s", flush=True)
        card = read_folder_card(folder)
        size = args.size or card["native_size"]
        print(
            f"{card['pipeline_class']} {card['parameters']} parameters, {size}x{size}, "
            f"{args.steps} steps, {device} {str(dtype).removeprefix('torch.')}",
            flush=True,
        )
        recipe = {
            "mode": "text-to-image",
            "prompt": PROMPT,
            "negative_prompt": "",
            "seed": SEED,
            "steps": args.steps,
            "guidance": 7.5,
            "width": size,
            "height": size,
            "strength": None,
        }
        spec = {"path": str(folder), "source": "folder", "pipeline_class": "", "card": card}

        bare = DiffusionPipeline.from_pretrained(folder, dtype=dtype).to(device)
        bare.set_progress_bar_config(disable=True)
        ours = LoadedPipeline(spec)
        print(f"Tuneyard runs it on {ours.plan['device']} in {ours.plan['dtype']}", flush=True)

        def run_bare() -> bytes:
            generator = torch.Generator(device="cpu").manual_seed(SEED)
            image = bare(
                PROMPT,
                num_inference_steps=args.steps,
                guidance_scale=7.5,
                width=size,
                height=size,
                generator=generator,
            ).images[0]
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            return image.tobytes()

        def run_ours() -> bytes:
            image = ours.generate(recipe, None, lambda _step: None)
            png_bytes(image, recipe)
            return image.tobytes()

        def timed(run) -> tuple[float, bytes]:
            sync()
            start = time.perf_counter()
            pixels = run()
            sync()
            return time.perf_counter() - start, pixels

        timed(run_bare)
        timed(run_ours)
        bare_times, our_times = [], []
        for _ in range(args.runs):
            seconds, bare_pixels = timed(run_bare)
            bare_times.append(seconds)
            seconds, our_pixels = timed(run_ours)
            our_times.append(seconds)
        bare_median, our_median = statistics.median(bare_times), statistics.median(our_times)
        print(
            f"generation: bare diffusers {bare_median:.3f} s, Tuneyard {our_median:.3f} s "
            f"(median of {args.runs}); ratio {our_median / bare_median:.3f}x (target <= 1.05x); "
            f"same pixels: {bare_pixels == our_pixels}",
            flush=True,
        )

        def load_and_generate() -> bytes:
            return LoadedPipeline(spec).generate(recipe, None, lambda _step: None).tobytes()

        loaded = LoadedPipeline(spec)
        cold = [timed(load_and_generate)[0] for _ in range(2)]
        warm = [timed(lambda: loaded.generate(recipe, None, lambda _s: None).tobytes())[0]]
        warm += [timed(lambda: loaded.generate(recipe, None, lambda _s: None).tobytes())[0]]
        print(
            f"second request: loading per request {statistics.median(cold):.3f} s, pipeline "
            f"kept loaded {statistics.median(warm):.3f} s; ratio "
            f"{statistics.median(cold) / statistics.median(warm):.2f}x",
            flush=True,
        )


if __name__ == "__main__":
    main()
