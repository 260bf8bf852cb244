"""Image models: registering a diffusers folder (its card read without loading it), bad folders
refused with nothing kept, and the API's bad-input answers for generation."""

from __future__ import annotations

import base64
import io
import json
import shutil

from tests.helpers import user_in
from tests.images.conftest import NATIVE


def _jobs(client, auth) -> int:
    return client.get("/api/v1/jobs", headers=auth).json()["total"]


class TestRegister:
    def test_a_folder_is_registered_with_its_card_and_preflight(
        self, client, auth, tiny_image_model
    ):
        card = tiny_image_model["card"]
        assert tiny_image_model["pipeline_class"] == "StableDiffusionPipeline"
        assert card["family"] == "sd"
        assert card["native_size"] == NATIVE
        assert card["size_multiple"] == 2
        assert card["scheduler"] == "DDIMScheduler"
        assert card["dtype"] == "float32"
        assert card["parameter_count"] > 100_000
        assert card["size_bytes"] > card["parameter_count"] * 4
        plan = tiny_image_model["preflight"]
        assert plan["device"] == "cpu"
        assert plan["dtype"] == "float32"
        assert plan["fits"] is True
        assert plan["estimated_bytes"] >= card["parameter_count"] * 4
        assert any("CPU" in warning for warning in plan["warnings"])
        by_name = client.get("/api/v1/image-models/tiny-sd", headers=auth).json()
        assert by_name["id"] == tiny_image_model["id"]
        listed = client.get("/api/v1/image-models", params={"limit": 1}, headers=auth).json()
        assert listed["total"] == 1
        assert listed["items"][0]["name"] == "tiny-sd"

    def test_a_name_is_unique_in_its_project(self, client, auth, tiny_image_model, tiny_sd_dir):
        again = client.post(
            "/api/v1/image-models",
            json={"name": "tiny-sd", "path": str(tiny_sd_dir)},
            headers=auth,
        )
        assert again.status_code == 409
        assert "already exists" in again.json()["detail"]

    def test_a_broken_model_index_is_refused_and_nothing_is_kept(
        self, client, auth, tiny_sd_dir, tmp_path
    ):
        broken = tmp_path / "broken"
        shutil.copytree(tiny_sd_dir, broken)
        (broken / "model_index.json").write_text("{not json")
        response = client.post(
            "/api/v1/image-models", json={"name": "broken", "path": str(broken)}, headers=auth
        )
        assert response.status_code == 422
        assert "model_index.json is not valid JSON" in response.json()["detail"]
        (broken / "model_index.json").unlink()
        response = client.post(
            "/api/v1/image-models", json={"name": "broken", "path": str(broken)}, headers=auth
        )
        assert response.status_code == 422
        assert "has no model_index.json" in response.json()["detail"]
        (broken / "model_index.json").write_text(
            json.dumps({"_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "X"]})
        )
        shutil.rmtree(broken / "unet")
        response = client.post(
            "/api/v1/image-models", json={"name": "broken", "path": str(broken)}, headers=auth
        )
        assert response.status_code == 422
        assert "lacks the folder of unet" in response.json()["detail"]
        assert client.get("/api/v1/image-models", headers=auth).json()["total"] == 0

    def test_a_path_outside_the_model_roots_is_refused(self, client, auth, data_dir):
        response = client.post(
            "/api/v1/image-models", json={"name": "x", "path": str(data_dir)}, headers=auth
        )
        assert response.status_code == 422
        assert "outside the folders models are registered from" in response.json()["detail"]

    def test_a_single_checkpoint_file_gets_a_card_from_its_header(
        self, client, auth, tmp_path, reachable_hub
    ):
        import torch
        from safetensors.torch import save_file

        checkpoint = tmp_path / "model.safetensors"
        save_file(
            {
                "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(8, 4, 3, 3),
                "first_stage_model.decoder.conv_in.weight": torch.zeros(8, 4, 3, 3),
            },
            str(checkpoint),
        )
        response = client.post(
            "/api/v1/image-models", json={"name": "one", "path": str(checkpoint)}, headers=auth
        )
        assert response.status_code == 201, response.text
        body = response.json()
        assert body["source"] == "single_file"
        assert body["pipeline_class"] == "StableDiffusionPipeline"
        assert body["card"]["parameter_count"] == 2 * 8 * 4 * 3 * 3
        assert body["card"]["native_size"] == 512

    def test_delete_unregisters_and_keeps_the_folder(
        self, client, auth, tiny_image_model, tiny_sd_dir
    ):
        response = client.delete(f"/api/v1/image-models/{tiny_image_model['id']}", headers=auth)
        assert response.status_code == 204
        assert client.get("/api/v1/image-models/tiny-sd", headers=auth).status_code == 404
        assert (tiny_sd_dir / "model_index.json").is_file()


class TestBadGenerationRequests:
    def test_each_bad_input_is_named_and_queues_nothing(self, client, auth, tiny_image_model):
        cases = [
            ({"width": 63, "height": 64}, 422, "width 63 is not a multiple of 2"),
            ({"aspect_ratio": "5:4"}, 422, "Unknown aspect ratio '5:4'"),
            ({"steps": 0}, 422, "steps"),
            ({"count": 5}, 422, "count"),
            ({"width": 64}, 422, "Give both width and height"),
            ({"strength": 0.5}, 422, "strength is for image-to-image"),
            ({"source_image": "not base64!"}, 422, "source_image is not base64"),
            (
                {"source_image": base64.b64encode(b"plain text").decode()},
                422,
                "not an image Tuneyard can read",
            ),
            ({"model": "no-such-model"}, 404, "No image model 'no-such-model'"),
            ({"prompt": "  "}, 422, "Give a prompt"),
            ({"recipe_from": "no-such-image"}, 404, "No image 'no-such-image'"),
        ]
        for change, status, words in cases:
            body = {"model": "tiny-sd", "prompt": "a red square", **change}
            response = client.post("/api/v1/images", json=body, headers=auth)
            assert response.status_code == status, (change, response.text)
            assert words in response.json()["detail"], (change, response.json())
        response = client.post("/api/v1/images", json={"prompt": "x"}, headers=auth)
        assert response.status_code == 422
        assert "Give model" in response.json()["detail"]
        assert _jobs(client, auth) == 0

    def test_presets_follow_the_native_size_and_multiple(self, client, auth, tiny_image_model):
        sizes = {}
        for ratio in ("1:1", "4:3", "3:4", "16:9", "9:16", "21:9"):
            response = client.post(
                "/api/v1/images",
                json={"model": "tiny-sd", "prompt": "a", "aspect_ratio": ratio},
                headers=auth,
            )
            assert response.status_code == 202, response.text
            recipe = response.json()["recipe"]
            sizes[ratio] = (recipe["width"], recipe["height"])
        assert sizes == {
            "1:1": (64, 64),
            "4:3": (74, 56),
            "3:4": (56, 74),
            "16:9": (86, 48),
            "9:16": (48, 86),
            "21:9": (98, 42),
        }
        assert all(w % 2 == 0 and h % 2 == 0 for w, h in sizes.values())

    def test_a_job_is_queued_with_its_priority(self, client, auth, tiny_image_model):
        response = client.post(
            "/api/v1/images",
            json={"model": "tiny-sd", "prompt": "a", "priority": 5, "seed": 7, "count": 3},
            headers=auth,
        )
        assert response.status_code == 202
        assert response.json()["seeds"] == [7, 8, 9]
        job = client.get(f"/api/v1/jobs/{response.json()['job_id']}", headers=auth).json()
        assert job["priority"] == 5
        assert job["status"] == "queued"


class TestWhoMay:
    def test_a_viewer_cannot_generate_or_register(self, client, auth, tiny_image_model):
        viewer = user_in(client, "1001", "vera", "viewer")
        response = client.post(
            "/api/v1/images", json={"model": "tiny-sd", "prompt": "a"}, headers=viewer
        )
        assert response.status_code == 403
        assert "you are viewer" in response.json()["detail"]
        assert client.get("/api/v1/image-models/tiny-sd", headers=viewer).status_code == 200
        assert _jobs(client, auth) == 0

    def test_another_project_sees_no_model(self, client, auth, tiny_image_model):
        other = user_in(client, "2002", "mallory", "member")
        assert client.get("/api/v1/image-models/tiny-sd", headers=other).status_code == 404
        assert client.get("/api/v1/image-models", headers=other).json()["total"] == 0
        response = client.post(
            "/api/v1/images", json={"model": tiny_image_model["id"], "prompt": "a"}, headers=other
        )
        assert response.status_code == 404


def _png_b64(width: int, height: int) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_an_uploaded_source_sets_image_to_image_at_its_size(client, auth, tiny_image_model):
    response = client.post(
        "/api/v1/images",
        json={"model": "tiny-sd", "prompt": "a", "source_image": _png_b64(48, 33)},
        headers=auth,
    )
    assert response.status_code == 202, response.text
    recipe = response.json()["recipe"]
    assert recipe["mode"] == "image-to-image"
    assert (recipe["width"], recipe["height"]) == (48, 32)
    assert recipe["strength"] == 0.8
    assert len(recipe["source_digest"]) == 64
