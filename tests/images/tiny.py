"""A small CLIP tokenizer vocabulary, for the tiny pipelines of the tests and the benchmark."""

from __future__ import annotations

import json
import string
from pathlib import Path


def write_clip_tokenizer_files(folder: Path) -> None:
    """vocab.json and merges.txt of a small byte-level BPE vocabulary: every letter, digit and
    punctuation mark alone and word-final, and a few merges."""
    symbols = string.ascii_lowercase + string.digits + string.punctuation
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for symbol in symbols:
        for token in (symbol, f"{symbol}</w>"):
            vocab.setdefault(token, len(vocab))
    merges = ["t h", "th e</w>", "a n", "an d</w>", "o f</w>"]
    for merge in merges:
        vocab.setdefault(merge.replace(" ", ""), len(vocab))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")


# The tiny UNet's shape (native size 64 px with the VAE's scale of 2); SDXL's adds to it.
TINY_UNET = {
    "block_out_channels": (32, 64),
    "layers_per_block": 1,
    "sample_size": 32,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
}
# Stable Diffusion's training noise schedule.
SD_BETAS = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}


def tiny_vae(**extra):
    """A VAE of scale 2 (two blocks) with SD's 4 latent channels, unless `extra` says else."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=[32, 64],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
        **{"latent_channels": 4, **extra},
    )


def tiny_clip_config(**extra):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        bos_token_id=0,
        eos_token_id=2,
        pad_token_id=1,
        hidden_size=32,
        intermediate_size=37,
        layer_norm_eps=1e-05,
        num_attention_heads=4,
        num_hidden_layers=2,
        vocab_size=1000,
        **extra,
    )


def clip_tokenizer(folder: Path):
    """A CLIP tokenizer of the small vocabulary, its files written to `folder`."""
    from transformers import CLIPTokenizer

    write_clip_tokenizer_files(folder)
    return CLIPTokenizer(
        str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77
    )


def save_sd_pipeline(out: Path, unet, vae, text_config, tokenizer, dtype=None) -> Path:
    """A Stable Diffusion 1.x pipeline of these parts (DDIM, no safety checker), saved as a
    diffusers folder at `out`."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline
    from transformers import CLIPTextModel

    pipeline = StableDiffusionPipeline(
        unet=unet,
        vae=vae,
        text_encoder=CLIPTextModel(text_config),
        tokenizer=tokenizer,
        scheduler=DDIMScheduler(
            **SD_BETAS, clip_sample=False, set_alpha_to_one=False, steps_offset=1
        ),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    if dtype is not None:
        pipeline.to(dtype=dtype)
    pipeline.save_pretrained(out, safe_serialization=True)
    return out


def build_tiny_sd(out: Path, vocab_dir: Path, dtype=None) -> Path:
    """The tiny Stable Diffusion pipeline of the tests, with random weights (seed 0)."""
    import torch
    from diffusers import UNet2DConditionModel

    tokenizer = clip_tokenizer(vocab_dir)
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**TINY_UNET, cross_attention_dim=32)
    return save_sd_pipeline(out, unet, tiny_vae(), tiny_clip_config(), tokenizer, dtype)


# SD3's and FLUX's VAE: 16 latent channels, shifted and scaled (their real factors), no quant
# convolutions.
FLOW_VAE_FACTORS = {"sd3": (0.0609, 1.5035), "flux": (0.1159, 0.3611)}


def tiny_flow_vae(family: str):
    """The tiny VAE of a transformer pipeline (scale 2, as the UNet pipelines' tiny VAE)."""
    shift, scaling = FLOW_VAE_FACTORS[family]
    return tiny_vae(
        latent_channels=16,
        shift_factor=shift,
        scaling_factor=scaling,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )


def build_tiny_sd3(out: Path, vocab_dir: Path) -> Path:
    """A tiny Stable Diffusion 3 pipeline with random weights (seed 0): a joint-attention
    transformer of two layers (the last one's text stream ends, as SD3's does), the two CLIP
    encoders with projection and no T5 (diffusers then gives zeros in its place); native size
    64 px."""
    import torch
    from diffusers import (
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )
    from transformers import CLIPTextModelWithProjection

    tokenizer = clip_tokenizer(vocab_dir)
    torch.manual_seed(0)
    transformer = SD3Transformer2DModel(
        sample_size=32,
        patch_size=2,
        in_channels=16,
        out_channels=16,
        num_layers=2,
        attention_head_dim=8,
        num_attention_heads=4,
        caption_projection_dim=32,
        joint_attention_dim=64,  # the two CLIP encoders' 32 each
        pooled_projection_dim=64,
        pos_embed_max_size=32,
    )
    config = tiny_clip_config(projection_dim=32)
    pipeline = StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=tiny_flow_vae("sd3"),
        text_encoder=CLIPTextModelWithProjection(config),
        tokenizer=tokenizer,
        text_encoder_2=CLIPTextModelWithProjection(config),
        tokenizer_2=tokenizer,
        text_encoder_3=None,
        tokenizer_3=None,
    )
    pipeline.save_pretrained(out, safe_serialization=True)
    return out


def t5_tokenizer():
    """A T5 tokenizer of a small Unigram vocabulary (T5's special tokens first, then the
    letters, digits and punctuation, alone and word-initial), built without any download."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import T5TokenizerFast

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    for symbol in string.ascii_lowercase + string.digits + string.punctuation:
        pieces += [(symbol, -3.0), (f"\u2581{symbol}", -3.5)]
    pieces += [("\u2581the", -1.0), ("\u2581a", -1.0), ("\u2581square", -1.0)]
    backend = Tokenizer(models.Unigram(pieces, unk_id=2))
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.decoder = decoders.Metaspace()
    backend.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    return T5TokenizerFast(
        tokenizer_object=backend,
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_ids=0,
        model_max_length=512,
    )


def build_tiny_flux(out: Path, vocab_dir: Path) -> Path:
    """A tiny FLUX pipeline with random weights (seed 0): a transformer of one double-stream and
    one single-stream block taking guidance (as FLUX.1-dev), 2x2-packed latents of the 16-channel
    VAE, a CLIP encoder for the pooled prompt and a small T5 encoder for its tokens."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel, T5Config, T5EncoderModel

    tokenizer = clip_tokenizer(vocab_dir)
    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=64,  # the VAE's 16 channels, packed 2x2
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,  # the T5 encoder's width
        pooled_projection_dim=32,  # the CLIP encoder's
        guidance_embeds=True,
        axes_dims_rope=(4, 4, 8),
    )
    t5 = T5Config(
        vocab_size=1000,
        d_model=32,
        d_kv=8,
        d_ff=37,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    pipeline = FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(
            shift=3.0,
            use_dynamic_shifting=True,
            base_shift=0.5,
            max_shift=1.15,
            base_image_seq_len=256,
            max_image_seq_len=4096,
        ),
        vae=tiny_flow_vae("flux"),
        text_encoder=CLIPTextModel(tiny_clip_config()),
        tokenizer=tokenizer,
        text_encoder_2=T5EncoderModel(t5),
        tokenizer_2=t5_tokenizer(),
        transformer=transformer,
    )
    pipeline.save_pretrained(out, safe_serialization=True)
    return out
