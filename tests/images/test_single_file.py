"""A single checkpoint file in the original (LDM) layout, as Civitai and A1111 checkpoints are:
registered with a diffusers folder for its configs, it makes the same pixels as the folder it
was converted from (text-to-image, image-to-image, with a LoRA); without configs, where the
hub cannot give them, it is refused at once."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import pytest

from tests.images.conftest import generated, png_of
from tests.images.ldm import write_ldm_checkpoint


@pytest.fixture(scope="session")
def tiny_ldm_file(tmp_path_factory, tiny_sd_dir) -> Path:
    """The tiny pipeline's UNet, VAE and text encoder as one LDM checkpoint."""
    return write_ldm_checkpoint(
        tiny_sd_dir, tmp_path_factory.mktemp("tiny-ldm") / "tiny-sd.safetensors"
    )


@pytest.fixture(scope="session")
def tiny_sd_configs(tmp_path_factory, tiny_sd_dir) -> Path:
    """The tiny pipeline's folder without its weights: configs and tokenizer only."""
    out = tmp_path_factory.mktemp("tiny-sd-configs") / "configs"
    shutil.copytree(tiny_sd_dir, out, ignore=shutil.ignore_patterns("*.safetensors"))
    return out


def _register(client, auth, name: str, path: Path, config: Path | None = None):
    body = {"name": name, "path": str(path)}
    if config is not None:
        body["config_path"] = str(config)
    return client.post("/api/v1/image-models", json=body, headers=auth)


def test_the_file_card_matches_its_folder(
    client, auth, tiny_sd_dir, tiny_ldm_file, tiny_sd_configs
):
    folder = _register(client, auth, "folder", tiny_sd_dir)
    single = _register(client, auth, "single", tiny_ldm_file, tiny_sd_configs)
    assert folder.status_code == 201, folder.text
    assert single.status_code == 201, single.text
    folder_card, card = folder.json()["card"], single.json()["card"]
    assert single.json()["source"] == "single_file"
    assert single.json()["pipeline_class"] == "StableDiffusionPipeline"
    for key in ("family", "pipeline_class", "native_size", "size_multiple", "scheduler"):
        assert card[key] == folder_card[key], key
    assert card["family"] == "sd"
    assert card["parameter_count"] == folder_card["parameter_count"] > 100_000
    assert card["dtype"] == "float32"
    assert card["size_bytes"] == tiny_ldm_file.stat().st_size
    assert card["config_path"] == str(tiny_sd_configs)


def test_without_configs_the_file_is_refused_where_the_hub_cannot_give_them(
    client, auth, tiny_ldm_file, monkeypatch
):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    response = _register(client, auth, "single", tiny_ldm_file)
    assert response.status_code == 422
    assert response.json()["detail"] == (
        "The model hub is off here (HF_HUB_OFFLINE): tiny-sd.safetensors holds weights only; "
        "give config_path, a diffusers folder of the same family and shape (its configs and "
        "tokenizer are enough, no weights needed)."
    )
    monkeypatch.delenv("HF_HUB_OFFLINE")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    response = _register(client, auth, "single", tiny_ldm_file)
    assert response.status_code == 503
    detail = response.json()["detail"]
    assert detail.startswith(f"Cannot reach the model hub (http://127.0.0.1:{port}: ")
    assert detail.endswith(
        "holds weights only; give config_path, a diffusers folder of the "
        "same family and shape (its configs and tokenizer are enough, no "
        "weights needed)."
    )
    assert client.get("/api/v1/image-models", headers=auth).json()["total"] == 0


def test_without_configs_the_file_is_registered_where_the_hub_answers(
    client, auth, tiny_ldm_file, reachable_hub
):
    response = _register(client, auth, "single", tiny_ldm_file)
    assert response.status_code == 201, response.text
    card = response.json()["card"]
    # Without configs, the card is the family's defaults.
    assert (card["family"], card["native_size"], card["size_multiple"]) == ("sd", 512, 8)
    assert "config_path" not in card


def _pixels(client, auth, image: dict) -> bytes:
    return png_of(client, auth, image["id"]).convert("RGB").tobytes()


@pytest.mark.slow
@pytest.mark.backend_free  # pixels from a file or a folder: the database plays no part
def test_the_file_makes_the_folders_pixels(
    client,
    auth,
    tiny_sd_dir,
    tiny_ldm_file,
    tiny_sd_configs,
    tiny_lora_file,
    worker,
):
    """The conversion renames tensors and reshapes the VAE's attention projections only (no
    arithmetic), so the same recipe gives the same bytes, not merely close ones."""
    assert _register(client, auth, "folder", tiny_sd_dir).status_code == 201
    assert _register(client, auth, "single", tiny_ldm_file, tiny_sd_configs).status_code == 201
    recipe = {"prompt": "a red square", "steps": 3, "guidance": 5.0, "seed": 42}
    recipe |= {"width": 32, "height": 48, "negative_prompt": "blurry"}
    _, [from_folder] = generated(client, auth, model="folder", **recipe)
    accepted, [from_file] = generated(client, auth, model="single", **recipe)
    assert _pixels(client, auth, from_file) == _pixels(client, auth, from_folder)
    job = client.get(f"/api/v1/jobs/{accepted['job_id']}", headers=auth).json()
    assert job["result"]["pipeline_reused"] == [False]

    # Image-to-image: the single file's pipeline makes its twin as a folder's does.
    edit = {"prompt": "a blue square", "source_image_id": from_folder["id"], "strength": 0.5}
    edit |= {"steps": 4, "seed": 5}
    _, [edited_folder] = generated(client, auth, model="folder", **edit)
    _, [edited_file] = generated(client, auth, model="single", **edit)
    assert edited_file["recipe"]["mode"] == "image-to-image"
    assert _pixels(client, auth, edited_file) == _pixels(client, auth, edited_folder)
    assert _pixels(client, auth, edited_file) != _pixels(client, auth, from_file)

    # A LoRA of the folder's UNet applies to the file's as well.
    styled = []
    for model in ("folder", "single"):
        response = client.post(
            f"/api/v1/image-models/{model}/adapters",
            data={"name": "style"},
            files={"file": ("style.safetensors", tiny_lora_file.read_bytes())},
            headers=auth,
        )
        assert response.status_code == 201, response.text
        _, [image] = generated(
            client, auth, model=model, **recipe, adapters=[{"adapter": "style", "weight": 0.8}]
        )
        styled.append(_pixels(client, auth, image))
    assert styled[0] == styled[1]
    assert styled[1] != _pixels(client, auth, from_file)


def _spec(path: Path, config: Path | None) -> dict:
    return {
        "source": "single_file",
        "path": str(path),
        "pipeline_class": "StableDiffusionPipeline",
        "config_path": str(config) if config else None,
    }


@pytest.mark.nodb
def test_the_file_loads_in_the_dtype_asked_for(tiny_ldm_file, tiny_sd_configs):
    """Half precision on a GPU: the loader must not drop the dtype and load float32."""
    import torch

    from tuneyard.images.pipeline import load_pipeline

    pipe = load_pipeline(_spec(tiny_ldm_file, tiny_sd_configs), torch.float16)
    assert {pipe.unet.dtype, pipe.vae.dtype, pipe.text_encoder.dtype} == {torch.float16}


@pytest.mark.nodb
def test_without_configs_a_hub_gone_since_is_a_clear_error(tiny_ldm_file, monkeypatch):
    import torch

    from tuneyard.images.pipeline import load_pipeline

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    with pytest.raises(RuntimeError) as raised:
        load_pipeline(_spec(tiny_ldm_file, None), torch.float32)
    message = str(raised.value)
    assert message.startswith(
        "tiny-sd.safetensors holds weights only, and its family's default configs could not "
        "be had from the model hub ("
    )
    assert message.endswith(
        "Register it again with config_path, a diffusers folder of the same family and shape."
    )
