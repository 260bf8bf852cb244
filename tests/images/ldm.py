"""A diffusers Stable Diffusion 1.x folder written as one checkpoint in the original (LDM) key
layout, as Civitai and A1111 checkpoints are: `model.diffusion_model.*` (the UNet),
`first_stage_model.*` (the VAE), `cond_stage_model.transformer.*` (the CLIP text encoder).

The inverse of the renaming diffusers' single-file loader does, for the block layouts the test
pipelines use (any number of UNet and VAE blocks, any layers per block). Tensors are renamed,
and the VAE's attention projections reshaped to the 1x1 convolutions LDM stores, never changed:
loading the file back gives the folder's weights exactly.
"""

from __future__ import annotations

import json
from pathlib import Path

# Inside a UNet resnet (diffusers name, LDM name).
UNET_RESNET = (
    ("norm1", "in_layers.0"),
    ("conv1", "in_layers.2"),
    ("norm2", "out_layers.0"),
    ("conv2", "out_layers.3"),
    ("time_emb_proj", "emb_layers.1"),
    ("conv_shortcut", "skip_connection"),
)
# Inside a VAE resnet and the VAE's mid-block attention.
VAE_RESNET = (("conv_shortcut", "nin_shortcut"),)
VAE_ATTENTION = (
    ("group_norm", "norm"),
    ("to_q", "q"),
    ("to_k", "k"),
    ("to_v", "v"),
    ("to_out.0", "proj_out"),
)


def write_ldm_checkpoint(folder: Path, out: Path) -> Path:
    """The UNet, VAE and text encoder of the diffusers folder, as one LDM safetensors file."""
    from safetensors.torch import load_file, save_file

    def part(name: str) -> tuple[dict, dict]:
        config = json.loads((folder / name / "config.json").read_text())
        weights = folder / name / "diffusion_pytorch_model.safetensors"
        if not weights.exists():
            weights = folder / name / "model.safetensors"
        return config, load_file(str(weights))

    unet_config, unet = part("unet")
    vae_config, vae = part("vae")
    _, text = part("text_encoder")
    tensors = {
        **_renamed(unet, _unet_blocks(unet_config), "model.diffusion_model."),
        **_renamed(vae, _vae_blocks(vae_config), "first_stage_model."),
        # Original checkpoints hold the whole transformers CLIPTextModel, `text_model.` and all
        # (transformers from 5.6 on saves it without that level).
        **{
            f"cond_stage_model.transformer.text_model.{key.removeprefix('text_model.')}": value
            for key, value in text.items()
        },
    }
    # LDM stores the VAE's attention projections as 1x1 convolutions.
    for key, value in tensors.items():
        if ".mid.attn_1." in key and key.endswith("weight") and value.ndim == 2:
            tensors[key] = value[:, :, None, None]
    save_file({key: value.contiguous() for key, value in tensors.items()}, str(out))
    return out


def _renamed(state: dict, blocks: list[tuple[str, str, tuple]], prefix: str) -> dict:
    """Each key renamed by the longest block prefix it starts with, then by the block's inner
    renames; a key no block covers is a layout this converter does not know."""
    renamed = {}
    for key, value in state.items():
        matches = [block for block in blocks if key.startswith(block[0] + ".")]
        if not matches:
            raise ValueError(f"{key}: no LDM name for it in this converter")
        old, new, inner = max(matches, key=lambda block: len(block[0]))
        rest = key[len(old) :]
        for before, after in inner:
            rest = rest.replace(f".{before}.", f".{after}.")
        renamed[prefix + new + rest] = value
    return renamed


def _unet_blocks(config: dict) -> list[tuple[str, str, tuple]]:
    """(diffusers prefix, LDM prefix, inner renames) of each UNet part. LDM numbers the blocks
    flat: input_blocks.0 is conv_in, then each down block's layers and its downsampler;
    output_blocks hold each up block's layers, the last one also its upsampler."""
    layers = config["layers_per_block"]
    count = len(config["block_out_channels"])
    blocks = [
        ("conv_in", "input_blocks.0.0", ()),
        ("time_embedding.linear_1", "time_embed.0", ()),
        ("time_embedding.linear_2", "time_embed.2", ()),
        ("mid_block.resnets.0", "middle_block.0", UNET_RESNET),
        ("mid_block.attentions.0", "middle_block.1", ()),
        ("mid_block.resnets.1", "middle_block.2", UNET_RESNET),
        ("conv_norm_out", "out.0", ()),
        ("conv_out", "out.2", ()),
    ]
    index = 1
    for block in range(count):
        for layer in range(layers):
            down = f"down_blocks.{block}"
            blocks.append((f"{down}.resnets.{layer}", f"input_blocks.{index}.0", UNET_RESNET))
            blocks.append((f"{down}.attentions.{layer}", f"input_blocks.{index}.1", ()))
            index += 1
        if block < count - 1:
            blocks.append(
                (f"down_blocks.{block}.downsamplers.0.conv", f"input_blocks.{index}.0.op", ())
            )
            index += 1
    index = 0
    for block in range(count):
        up = f"up_blocks.{block}"
        for layer in range(layers + 1):
            blocks.append((f"{up}.resnets.{layer}", f"output_blocks.{index}.0", UNET_RESNET))
            blocks.append((f"{up}.attentions.{layer}", f"output_blocks.{index}.1", ()))
            index += 1
        if block < count - 1:
            # After the layer's attention, where the up block has one.
            position = 2 if "CrossAttn" in config["up_block_types"][block] else 1
            blocks.append((f"{up}.upsamplers.0", f"output_blocks.{index - 1}.{position}", ()))
    return blocks


def _vae_blocks(config: dict) -> list[tuple[str, str, tuple]]:
    """The VAE's parts; LDM numbers the decoder's up blocks from the lowest resolution."""
    layers = config["layers_per_block"]
    count = len(config["block_out_channels"])
    blocks = [("quant_conv", "quant_conv", ()), ("post_quant_conv", "post_quant_conv", ())]
    for coder in ("encoder", "decoder"):
        blocks += [
            (f"{coder}.conv_in", f"{coder}.conv_in", ()),
            (f"{coder}.conv_out", f"{coder}.conv_out", ()),
            (f"{coder}.conv_norm_out", f"{coder}.norm_out", ()),
            (f"{coder}.mid_block.resnets.0", f"{coder}.mid.block_1", VAE_RESNET),
            (f"{coder}.mid_block.resnets.1", f"{coder}.mid.block_2", VAE_RESNET),
            (f"{coder}.mid_block.attentions.0", f"{coder}.mid.attn_1", VAE_ATTENTION),
        ]
    for block in range(count):
        down, up = f"encoder.down.{block}", f"decoder.up.{count - 1 - block}"
        for layer in range(layers):
            blocks.append(
                (
                    f"encoder.down_blocks.{block}.resnets.{layer}",
                    f"{down}.block.{layer}",
                    VAE_RESNET,
                )
            )
        for layer in range(layers + 1):
            blocks.append(
                (f"decoder.up_blocks.{block}.resnets.{layer}", f"{up}.block.{layer}", VAE_RESNET)
            )
        blocks.append((f"encoder.down_blocks.{block}.downsamplers.0", f"{down}.downsample", ()))
        blocks.append((f"decoder.up_blocks.{block}.upsamplers.0", f"{up}.upsample", ()))
    return blocks
