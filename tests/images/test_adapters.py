"""Image LoRAs: upload, list, stack into a generation with a weight, and unload again."""

from __future__ import annotations

import pytest

from tests.images.conftest import generated, png_of


def _upload(client, auth, content: bytes, name: str = "style"):
    return client.post(
        "/api/v1/image-models/tiny-sd/adapters",
        data={"name": name},
        files={"file": (f"{name}.safetensors", content)},
        headers=auth,
    )


def test_an_adapter_is_kept_listed_and_refused_when_not_a_lora(
    client, auth, tiny_image_model, tiny_lora_file, tiny_sd_dir, data_dir
):
    response = _upload(client, auth, tiny_lora_file.read_bytes())
    assert response.status_code == 201, response.text
    adapter = response.json()
    assert adapter["size_bytes"] == tiny_lora_file.stat().st_size
    assert _upload(client, auth, tiny_lora_file.read_bytes()).status_code == 409
    listed = client.get("/api/v1/image-models/tiny-sd/adapters", headers=auth).json()
    assert [row["name"] for row in listed] == ["style"]

    not_lora = (tiny_sd_dir / "vae" / "diffusion_pytorch_model.safetensors").read_bytes()
    refused = _upload(client, auth, not_lora, name="vae")
    assert refused.status_code == 422
    assert "holds no LoRA weights" in refused.json()["detail"]
    garbage = _upload(client, auth, b"not a safetensors file", name="junk")
    assert garbage.status_code == 422
    adapters_dir = data_dir / "images"
    kept = sorted(path.name for path in adapters_dir.rglob("*") if path.is_file())
    assert kept == [f"{adapter['id']}.safetensors"]

    missing = client.post(
        "/api/v1/images",
        json={"model": "tiny-sd", "prompt": "a", "adapters": [{"adapter": "nope"}]},
        headers=auth,
    )
    assert missing.status_code == 404
    assert "has no adapter 'nope'" in missing.json()["detail"]

    response = client.delete(f"/api/v1/image-models/tiny-sd/adapters/{adapter['id']}", headers=auth)
    assert response.status_code == 204
    assert client.get("/api/v1/image-models/tiny-sd/adapters", headers=auth).json() == []
    assert not any(path.is_file() for path in adapters_dir.rglob("*"))


@pytest.mark.slow
@pytest.mark.nodb
def test_a_lora_changes_the_output_and_unloading_restores_it(tiny_sd_dir, tiny_lora_file):
    from tuneyard.images.card import read_folder_card
    from tuneyard.images.pipeline import LoadedPipeline

    card = read_folder_card(tiny_sd_dir)
    loaded = LoadedPipeline(
        {"path": str(tiny_sd_dir), "source": "folder", "pipeline_class": "", "card": card}
    )
    recipe = {
        "mode": "text-to-image",
        "prompt": "a red square",
        "negative_prompt": "",
        "seed": 9,
        "steps": 2,
        "guidance": 5.0,
        "width": 32,
        "height": 32,
        "strength": None,
        "adapters": [],
    }
    files = {"style": str(tiny_lora_file)}
    styled = {**recipe, "adapters": [{"id": "style", "weight": 1.0}]}

    def pixels(one: dict) -> bytes:
        return loaded.generate(one, None, lambda _step: None, files).tobytes()

    plain = pixels(recipe)
    with_lora = pixels(styled)
    assert with_lora != plain
    assert pixels({**recipe, "adapters": [{"id": "style", "weight": 0.5}]}) not in (
        plain,
        with_lora,
    )
    assert pixels(recipe) == plain
    assert pixels(styled) == with_lora


@pytest.mark.slow
def test_generation_stacks_the_adapter_into_its_recipe(
    client, auth, tiny_image_model, tiny_lora_file, worker
):
    adapter = _upload(client, auth, tiny_lora_file.read_bytes()).json()
    body = {"model": "tiny-sd", "prompt": "a red square", "steps": 2, "seed": 9, "width": 32}
    body["height"] = 32
    _, [plain] = generated(client, auth, **body)
    _, [styled] = generated(client, auth, **body, adapters=[{"adapter": "style", "weight": 0.8}])
    assert styled["recipe"]["adapters"] == [
        {"id": adapter["id"], "name": "style", "weight": 0.8, "digest": adapter["digest"]}
    ]
    assert (
        png_of(client, auth, styled["id"]).tobytes() != png_of(client, auth, plain["id"]).tobytes()
    )
    # Again with the same seed keeps the adapter and its weight: the same pixels.
    _, [again] = generated(client, auth, recipe_from=styled["id"])
    assert again["recipe"] == styled["recipe"]
    assert (
        png_of(client, auth, again["id"]).tobytes() == png_of(client, auth, styled["id"]).tobytes()
    )
