"""Training a LoRA of a transformer pipeline (SD3, FLUX) by flow matching, on tiny pipelines:
through the real job, the adapter it records has a flow-matching card and, through the
generation jobs, changes the image while leaving it out gives back the same pixels; the tiny
pipelines generate through the same path as any; and the training brings the loss down."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import wait_for_job
from tests.images.conftest import generated, png_of
from tests.images.test_training import four_images, zipped

FAMILIES = ["sd3", "flux"]


def _spec(pipeline_dir: Path) -> dict:
    from tuneyard.images.card import read_folder_card

    card = read_folder_card(pipeline_dir)
    return {"path": str(pipeline_dir), "source": "folder", "card": card}


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_a_transformer_lora_trains_as_a_job_and_changes_the_generated_image(
    family, request, client, auth, worker
):
    pipeline_dir = request.getfixturevalue(f"tiny_{family}_dir")
    name = f"tiny-{family}"
    added = client.post(
        "/api/v1/image-models", json={"name": name, "path": str(pipeline_dir)}, headers=auth
    )
    assert added.status_code == 201, added.text
    form = {"name": "squares", "resolution": "32", "steps": "3", "rank": "4", "alpha": "8"}
    form.update(learning_rate="0.01", seed="7")
    response = client.post(
        f"/api/v1/image-models/{name}/adapters/train",
        data=form,
        files={"archive": ("set.zip", zipped(four_images()), "application/zip")},
        headers=auth,
    )
    assert response.status_code == 202, response.text
    accepted = response.json()
    assert accepted["params"]["target"] == "transformer"
    assert "add_q_proj" in accepted["params"]["target_modules"]

    job = wait_for_job(accepted["job_id"], timeout=300)
    assert job.status == "succeeded", (job.error, job.message)
    metrics = client.get(
        f"/api/v1/jobs/{accepted['job_id']}/events", params={"kind": "metric"}, headers=auth
    ).json()
    assert [event["data"]["step"] for event in metrics] == [1, 2, 3]
    assert all(0 < event["data"]["loss"] < 100 for event in metrics)
    [adapter] = client.get(f"/api/v1/image-models/{name}/adapters", headers=auth).json()
    card = adapter["card"]
    assert card["prediction_type"] == "flow_matching"
    assert (
        card["pipeline_class"]
        == {"sd3": "StableDiffusion3Pipeline", "flux": "FluxPipeline"}[family]
    )
    assert card["final_loss"] == metrics[-1]["data"]["loss"]

    body = {"model": name, "prompt": "a red square", "steps": 2, "seed": 9, "width": 32}
    body["height"] = 32
    _, [plain] = generated(client, auth, **body)
    _, [styled] = generated(client, auth, **body, adapters=[{"adapter": "squares", "weight": 1}])
    _, [without] = generated(client, auth, **body)
    assert styled["recipe"]["adapters"][0]["id"] == adapter["id"]
    image = png_of(client, auth, plain["id"])
    assert image.size == (32, 32)
    assert png_of(client, auth, styled["id"]).tobytes() != image.tobytes()
    # The adapter was unloaded after its image: the pipeline makes the same pixels as before.
    assert png_of(client, auth, without["id"]).tobytes() == image.tobytes()


@pytest.mark.slow
@pytest.mark.nodb
@pytest.mark.parametrize("family", FAMILIES)
def test_flow_matching_brings_the_loss_down(family, request, tmp_path):
    import math
    import statistics

    from PIL import Image

    from tuneyard.images.service import LORA_TARGET_MODULES
    from tuneyard.images.trainer import train_lora

    pipeline_dir = request.getfixturevalue(f"tiny_{family}_dir")
    records = []
    for index, color in enumerate([(220, 20, 20), (20, 20, 220)]):
        path = tmp_path / f"{index}.png"
        Image.new("RGB", (48, 32), color).save(path)
        records.append({"path": path, "text": f"square {index}"})
    params = {
        "seed": 1,
        "rank": 4,
        "alpha": 8,
        "target_modules": LORA_TARGET_MODULES["transformer"],
    }
    params.update(learning_rate=0.02, resolution=32, batch_size=2, steps=12)
    losses: list[float] = []
    trained = train_lora(
        _spec(pipeline_dir), records, params, lambda _s, loss, _t: losses.append(loss), tmp_path
    )
    assert trained.prediction_type == "flow_matching"
    assert len(losses) == 12 and all(math.isfinite(loss) for loss in losses)
    assert statistics.mean(losses[-4:]) < 0.95 * statistics.mean(losses[:4]), losses
    assert trained.min_loss == min(losses)
