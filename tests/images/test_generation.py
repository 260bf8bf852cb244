"""Generation through the API as jobs on the tiny pipeline: recipes in the database and in the
PNG, the same seed again gives the same pixels, vary changes them, image-to-image keeps the
source's shape, cancel stops at the next step, and another project cannot see the images."""

from __future__ import annotations

import json
import time

import pytest

from tests.helpers import user_in, wait_for_job
from tests.images.conftest import generated, png_of
from tuneyard.db import session_scope
from tuneyard.images.process import release_remote
from tuneyard.models import Job
from tuneyard.storage import Layout

pytestmark = pytest.mark.slow


def pixels(image) -> bytes:
    return image.convert("RGB").tobytes()


@pytest.mark.backend_free
def test_generate_again_vary_and_image_to_image(client, auth, tiny_image_model, worker):
    accepted, images = generated(
        client,
        auth,
        model="tiny-sd",
        prompt="a red square",
        negative_prompt="blurry",
        steps=3,
        guidance=5.0,
        seed=1234,
        count=2,
        width=32,
        height=48,
    )
    first, second = images
    assert [first["recipe"]["seed"], second["recipe"]["seed"]] == [1234, 1235]
    recipe = first["recipe"]
    assert recipe == {
        **accepted["recipe"],
        "model_id": tiny_image_model["id"],
        "model_name": "tiny-sd",
        "mode": "text-to-image",
        "prompt": "a red square",
        "negative_prompt": "blurry",
        "seed": 1234,
        "steps": 3,
        "guidance": 5.0,
        "width": 32,
        "height": 48,
        "strength": None,
        "source_digest": None,
        "scheduler": "DDIMScheduler",
        "adapters": [],
    }
    png = png_of(client, auth, first["id"])
    assert png.size == (32, 48)
    # The recipe travels inside the PNG and loads back whole.
    assert json.loads(png.text["tuneyard.recipe"]) == recipe
    assert pixels(png) != pixels(png_of(client, auth, second["id"]))
    job = client.get(f"/api/v1/jobs/{accepted['job_id']}", headers=auth).json()
    assert job["progress"] == 100
    assert job["result"]["device"] == "cpu"
    # The image process loaded the pipeline for the first image and kept it.
    assert job["result"]["pipeline_reused"] == [False, True]

    again_job, [again] = generated(client, auth, recipe_from=first["id"])
    result = client.get(f"/api/v1/jobs/{again_job['job_id']}", headers=auth).json()["result"]
    assert result["pipeline_reused"] == [True]
    assert again["recipe"] == recipe
    assert pixels(png_of(client, auth, again["id"])) == pixels(png)

    _, [varied] = generated(client, auth, recipe_from=first["id"], vary=True)
    assert varied["recipe"]["seed"] != 1234
    assert {**varied["recipe"], "seed": 1234} == recipe
    assert pixels(png_of(client, auth, varied["id"])) != pixels(png)

    _, [edited] = generated(
        client,
        auth,
        model="tiny-sd",
        prompt="a blue square",
        source_image_id=first["id"],
        strength=0.5,
        steps=4,
        seed=5,
    )
    assert edited["recipe"]["mode"] == "image-to-image"
    assert edited["recipe"]["source_digest"] == first["digest"]
    assert (edited["width"], edited["height"]) == (32, 48)
    assert png_of(client, auth, edited["id"]).size == (32, 48)

    # Another project's member cannot read them; a viewer of this one can, but not delete.
    other = user_in(client, "2002", "mallory", "member")
    assert client.get(f"/api/v1/images/{first['id']}", headers=other).status_code == 404
    assert client.get(f"/api/v1/images/{first['id']}/png", headers=other).status_code == 404
    assert client.get("/api/v1/images", headers=other).json()["total"] == 0
    assert client.delete(f"/api/v1/images/{first['id']}", headers=other).status_code == 404
    viewer = user_in(client, "1001", "vera", "viewer")
    assert client.get(f"/api/v1/images/{first['id']}", headers=viewer).status_code == 200
    assert client.delete(f"/api/v1/images/{first['id']}", headers=viewer).status_code == 403

    response = client.delete(f"/api/v1/images/{first['id']}", headers=auth)
    assert response.status_code == 204
    assert client.get(f"/api/v1/images/{first['id']}", headers=auth).status_code == 404
    assert client.get("/api/v1/images", headers=auth).json()["total"] == 4

    # A training on this machine first makes the image process drop its pipeline; the next
    # request loads it again and makes the same pixels.
    assert release_remote() is True
    assert release_remote() is False
    reloaded_job, [reloaded] = generated(client, auth, recipe_from=second["id"])
    result = client.get(f"/api/v1/jobs/{reloaded_job['job_id']}", headers=auth).json()["result"]
    assert result["pipeline_reused"] == [False]
    assert pixels(png_of(client, auth, reloaded["id"])) == pixels(
        png_of(client, auth, second["id"])
    )


def test_cancel_stops_at_the_next_step_and_keeps_no_partial_png(
    client, auth, tiny_image_model, worker
):
    response = client.post(
        "/api/v1/images",
        json={
            "model": "tiny-sd",
            "prompt": "a slow one",
            "steps": 150,
            "count": 4,
            "width": 192,
            "height": 192,
        },
        headers=auth,
    )
    assert response.status_code == 202, response.text
    job_id = response.json()["job_id"]
    deadline = time.monotonic() + 120
    while True:
        with session_scope() as session:
            job = session.get_one(Job, job_id)
            message, status = job.message, job.status
        if "step" in message or status not in ("queued", "running"):
            break
        assert time.monotonic() < deadline, message
        time.sleep(0.1)
    assert status == "running", message
    refused = client.delete(f"/api/v1/image-models/{tiny_image_model['id']}", headers=auth)
    assert refused.status_code == 409
    assert "in use by images.generate job" in refused.json()["detail"]

    assert client.post(f"/api/v1/jobs/{job_id}/cancel", headers=auth).status_code == 200
    job = wait_for_job(job_id, timeout=60)
    assert job.status == "cancelled"
    assert job.progress < 100
    images = client.get("/api/v1/images", params={"job_id": job_id}, headers=auth).json()
    assert images["total"] < 4
    folder = Layout().images_dir(job.project_id) / job_id
    on_disk = sorted(path.name for path in folder.iterdir()) if folder.exists() else []
    assert on_disk == sorted(f"{image['id']}.png" for image in images["items"])
