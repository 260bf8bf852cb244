"""Training an image LoRA as a job on the tiny pipeline: the adapter it records has a card and
changes the output, each step's loss is a metric of the job, cancel keeps no adapter, and bad
archives (or a model it cannot train) are refused up front with nothing kept; SDXL with
v-prediction trains as well. The transformer pipelines' training is in test_flow_training.py."""

from __future__ import annotations

import io
import time
import zipfile
from pathlib import Path

import pytest

from tests.helpers import user_in, wait_for_job
from tuneyard.storage import Layout

URL = "/api/v1/image-models/tiny-sd/adapters/train"


def png(color: tuple[int, int, int], size: int = 32) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buffer, format="PNG")
    return buffer.getvalue()


def zipped(files: dict[str, bytes | str]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, content in files.items():
            archive.writestr(name, content)
    return buffer.getvalue()


def four_images() -> dict[str, bytes | str]:
    """Two images captioned by .txt files, two by metadata.jsonl, inside one top folder."""
    return {
        "set/red.png": png((220, 20, 20)),
        "set/red.txt": "a red square",
        "set/blue.png": png((20, 20, 220)),
        "set/blue.txt": "a blue square",
        "set/shapes/green.png": png((20, 220, 20)),
        "set/yellow.png": png((220, 220, 20)),
        "set/metadata.jsonl": '{"file_name": "shapes/green.png", "text": "a green square"}\n'
        '{"file_name": "yellow.png", "text": "a yellow square"}\n',
    }


def post_training(client, auth, archive: bytes, **fields):
    form = {"name": "squares", "resolution": "32", **{k: str(v) for k, v in fields.items()}}
    return client.post(
        URL, data=form, files={"archive": ("set.zip", archive, "application/zip")}, headers=auth
    )


def training_sets(project_id: str) -> list[str]:
    folder = Layout().images_dir(project_id) / "training-sets"
    return sorted(path.name for path in folder.iterdir()) if folder.exists() else []


def test_bad_input_is_refused_with_what_to_fix_and_nothing_kept(
    client, auth, tiny_image_model, data_dir, tmp_path, monkeypatch, reachable_hub
):
    from tuneyard.images import training_set

    good = four_images()
    cases = [
        (b"PK not really a zip", "set.zip is not a zip archive"),
        (zipped({"notes.txt": "a caption"}), "set.zip holds no images"),
        (zipped({"a.png": png((1, 2, 3))}), "a.png has no caption: add a.txt beside it"),
        (zipped({"a.png": b"not an image", "a.txt": "x"}), "a.png is not an image Tuneyard can"),
        (zipped({"../a.png": png((1, 2, 3)), "../a.txt": "x"}), "leads outside the archive"),
        (zipped({**good, "set/notes.pdf": b"%PDF"}), "notes.pdf in set.zip is neither an image"),
        (zipped({**good, "set/orphan.txt": "x"}), "orphan.txt is a caption without an image"),
        (
            zipped({"a.png": png((1, 2, 3)), "metadata.jsonl": '{"file_name": "b.png"}\n'}),
            "metadata.jsonl line 1 names b.png, which is not an image in set.zip",
        ),
        (zipped({"a.png": png((1, 2, 3)), "a.txt": "   "}), "The caption of a.png is empty"),
    ]
    for archive, message in cases:
        response = post_training(client, auth, archive)
        assert response.status_code == 422, (message, response.text)
        assert message in response.json()["detail"]

    monkeypatch.setattr(training_set, "MAX_ENTRIES", 4)
    response = post_training(client, auth, zipped(good))
    assert response.status_code == 422
    assert "set.zip holds 7 entries; an archive may hold at most" in response.json()["detail"]
    monkeypatch.undo()
    monkeypatch.setattr(training_set, "MAX_UNPACKED_BYTES", 1024**2)
    bomb = zipped({**good, "set/zeros.png": bytes(2 * 1024**2), "set/zeros.txt": "x"})
    assert len(bomb) < 64 * 1024
    response = post_training(client, auth, bomb)
    assert response.status_code == 422
    assert (
        "set.zip unpacks to 2.0 MB; a training set may unpack to at most 1.0 MB"
        in (response.json()["detail"])
    )
    monkeypatch.undo()

    response = post_training(client, auth, zipped(good), resolution=36)
    assert response.status_code == 422
    assert "resolution 36 is not a multiple of 8" in response.json()["detail"]
    viewer = user_in(client, "1001", "vera", "viewer")
    assert post_training(client, viewer, zipped(good)).status_code == 403

    import torch
    from safetensors.torch import save_file

    # A single file registers without configs where the hub answers (undo() above undid it).
    monkeypatch.setenv("HF_ENDPOINT", reachable_hub)
    flux = tmp_path / "flux.safetensors"
    save_file({"double_blocks.0.img_attn.qkv.weight": torch.zeros(2, 2)}, str(flux))
    added = client.post(
        "/api/v1/image-models", json={"name": "flux", "path": str(flux)}, headers=auth
    )
    assert added.status_code == 201, added.text
    response = client.post(
        "/api/v1/image-models/flux/adapters/train",
        data={"name": "squares"},
        files={"archive": ("set.zip", zipped(good))},
        headers=auth,
    )
    assert response.status_code == 422
    assert (
        "Image model 'flux' is a single FLUX checkpoint file registered without config_path"
        in (response.json()["detail"])
    )
    # Of the transformer families only the text-to-image pipeline trains; other kinds not at all.
    for name, pipeline_class, message in [
        ("fill", "FluxFillPipeline", "adapters are trained for FluxPipeline (text to image) only"),
        ("pixart", "PixArtAlphaPipeline", "adapters are trained for SD 1.x/2.x, SDXL, SD3/SD3.5"),
    ]:
        folder = tmp_path / name
        folder.mkdir()
        (folder / "model_index.json").write_text(f'{{"_class_name": "{pipeline_class}"}}')
        added = client.post(
            "/api/v1/image-models", json={"name": name, "path": str(folder)}, headers=auth
        )
        assert added.status_code == 201, added.text
        response = client.post(
            f"/api/v1/image-models/{name}/adapters/train",
            data={"name": "squares"},
            files={"archive": ("set.zip", zipped(good))},
            headers=auth,
        )
        assert response.status_code == 422
        assert message in response.json()["detail"]

    assert list(data_dir.rglob("training-sets/*")) == []
    assert client.get("/api/v1/jobs", headers=auth).json()["total"] == 0


@pytest.mark.backend_free
@pytest.mark.slow
def test_a_trained_adapter_has_a_card_metrics_and_changes_the_output(
    client, auth, tiny_image_model, tiny_sd_dir, worker
):
    response = post_training(
        client, auth, zipped(four_images()), steps=3, rank=4, alpha=8, learning_rate=0.05, seed=7
    )
    assert response.status_code == 202, response.text
    accepted = response.json()
    assert accepted["images"] == 4
    assert accepted["params"]["resolution"] == 32
    # The name is taken while it trains.
    again = post_training(client, auth, zipped(four_images()))
    assert again.status_code == 409
    assert "has an adapter named 'squares' in training" in again.json()["detail"]

    job = wait_for_job(accepted["job_id"], timeout=300)
    assert job.status == "succeeded", (job.error, job.message)
    metrics = client.get(
        f"/api/v1/jobs/{accepted['job_id']}/events", params={"kind": "metric"}, headers=auth
    ).json()
    assert [event["data"]["step"] for event in metrics] == [1, 2, 3]
    assert all(event["data"]["loss"] > 0 for event in metrics)

    [adapter] = client.get("/api/v1/image-models/tiny-sd/adapters", headers=auth).json()
    assert adapter["id"] == accepted["adapter_id"] == job.result["adapter_id"]
    card = adapter["card"]
    assert {key: card[key] for key in ("base_model", "method", "rank", "alpha", "steps")} == {
        "base_model": "tiny-sd",
        "method": "lora",
        "rank": 4,
        "alpha": 8,
        "steps": 3,
    }
    assert card["learning_rate"] == 0.05
    assert card["resolution"] == 32
    assert card["images"] == 4
    assert card["captions_from"] == "txt and metadata.jsonl"
    assert card["final_loss"] == metrics[-1]["data"]["loss"]
    assert card["training_job_id"] == accepted["job_id"]
    assert card["prediction_type"] == "epsilon"
    assert training_sets(job.project_id) == []

    assert changes_the_output(tiny_sd_dir, Layout().image_adapter(job.project_id, adapter["id"]))


def changes_the_output(pipeline_dir: Path, lora: Path) -> bool:
    """Whether the pipeline makes other pixels with the LoRA than without (same seed), loading
    it as generation loads an uploaded one."""
    from tuneyard.images.card import read_folder_card
    from tuneyard.images.pipeline import LoadedPipeline

    card = read_folder_card(pipeline_dir)
    loaded = LoadedPipeline({"path": str(pipeline_dir), "source": "folder", "card": card})
    recipe = {
        "mode": "text-to-image",
        "prompt": "a red square",
        "negative_prompt": "",
        "seed": 3,
        "steps": 2,
        "guidance": 5.0,
        "width": 32,
        "height": 32,
        "adapters": [],
    }
    files = {"trained": str(lora)}
    plain = loaded.generate(recipe, None, lambda _step: None, files).tobytes()
    styled = {**recipe, "adapters": [{"id": "trained", "weight": 1.0}]}
    return loaded.generate(styled, None, lambda _step: None, files).tobytes() != plain


@pytest.mark.slow
@pytest.mark.nodb
def test_sdxl_with_v_prediction_trains_and_its_lora_loads(tiny_sdxl_dir, tmp_path):
    from PIL import Image

    from tuneyard.images.card import read_folder_card
    from tuneyard.images.service import LORA_TARGET_MODULES
    from tuneyard.images.trainer import train_lora

    records = []
    for index, color in enumerate([(220, 20, 20), (20, 20, 220)]):
        path = tmp_path / f"{index}.png"
        Image.new("RGB", (48, 32), color).save(path)  # not square: cropped, with its time ids
        records.append({"path": path, "text": f"square {index}"})
    spec = {"path": str(tiny_sdxl_dir), "source": "folder", "card": read_folder_card(tiny_sdxl_dir)}
    losses: list[float] = []
    params = {"seed": 1, "rank": 4, "alpha": 4, "target_modules": LORA_TARGET_MODULES["unet"]}
    params.update(learning_rate=0.05, resolution=32, batch_size=2, steps=2)
    trained = train_lora(
        spec, records, params, lambda _step, loss, _s: losses.append(loss), tmp_path
    )
    assert trained.prediction_type == "v_prediction"
    assert len(losses) == 2 and trained.final_loss == losses[-1]
    assert changes_the_output(tiny_sdxl_dir, trained.file)


@pytest.mark.slow
def test_cancel_stops_training_at_the_next_step_and_keeps_no_adapter(
    client, auth, tiny_image_model, worker
):
    response = post_training(client, auth, zipped(four_images()), steps=20000)
    assert response.status_code == 202, response.text
    job_id = response.json()["job_id"]
    deadline = time.monotonic() + 180
    while not client.get(
        f"/api/v1/jobs/{job_id}/events", params={"kind": "metric"}, headers=auth
    ).json():
        assert time.monotonic() < deadline, "no step was reported"
        time.sleep(0.2)
    refused = client.delete("/api/v1/image-models/tiny-sd", headers=auth)
    assert refused.status_code == 409

    assert client.post(f"/api/v1/jobs/{job_id}/cancel", headers=auth).status_code == 200
    job = wait_for_job(job_id, timeout=120)
    assert job.status == "cancelled"
    assert client.get("/api/v1/image-models/tiny-sd/adapters", headers=auth).json() == []
    steps = client.get(f"/api/v1/jobs/{job_id}/events", params={"kind": "metric"}, headers=auth)
    assert 0 < len(steps.json()) < 20000
    assert training_sets(job.project_id) == []
    adapters = Layout().images_dir(job.project_id) / "adapters"
    assert not adapters.exists() or list(adapters.iterdir()) == []
