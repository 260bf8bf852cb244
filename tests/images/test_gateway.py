"""OpenAI's image routes on the gateway, driven by the `openai` SDK unchanged."""

from __future__ import annotations

import base64
import io
import json

import pytest

from tests.helpers import user_in

pytestmark = pytest.mark.slow


def _sdk(client, headers):
    import openai

    token = headers["Authorization"].split()[1]
    return openai.OpenAI(base_url="http://testserver/v1", api_key=token, http_client=client)


def _image(b64: str):
    from PIL import Image

    image = Image.open(io.BytesIO(base64.b64decode(b64)))
    image.load()
    return image


@pytest.mark.backend_free
def test_the_openai_sdk_generates_and_edits(client, auth, tiny_image_model, worker):
    from PIL import Image

    sdk = _sdk(client, auth)
    result = sdk.images.generate(
        model="tiny-sd",
        prompt="a red square",
        size="64x64",
        response_format="b64_json",
        extra_body={"steps": 2, "seed": 3},
    )
    assert len(result.data) == 1
    generated = _image(result.data[0].b64_json)
    assert generated.size == (64, 64)
    recipe = json.loads(generated.text["tuneyard.recipe"])
    assert (recipe["seed"], recipe["steps"], recipe["prompt"]) == (3, 2, "a red square")
    # The image is kept like any other.
    assert client.get("/api/v1/images", headers=auth).json()["total"] == 1

    source = io.BytesIO()
    Image.new("RGB", (48, 32), (20, 200, 20)).save(source, format="PNG")
    edited = sdk.images.edit(
        model="tiny-sd",
        image=("source.png", source.getvalue(), "image/png"),
        prompt="a green field",
        response_format="b64_json",
    )
    image = _image(edited.data[0].b64_json)
    assert image.size == (48, 32)
    assert json.loads(image.text["tuneyard.recipe"])["mode"] == "image-to-image"


def test_the_gateway_answers_errors_in_openai_shape(client, auth, tiny_image_model):
    import openai

    sdk = _sdk(client, auth)
    with pytest.raises(openai.NotFoundError) as missing:
        sdk.images.generate(model="no-such", prompt="a", response_format="b64_json")
    assert "No image model 'no-such'" in missing.value.body["message"]
    with pytest.raises(openai.UnprocessableEntityError) as odd:
        sdk.images.generate(model="tiny-sd", prompt="a", size="65x64")
    assert "width 65 is not a multiple of 2" in odd.value.body["message"]
    with pytest.raises(openai.UnprocessableEntityError) as url:
        sdk.images.generate(model="tiny-sd", prompt="a", response_format="url")
    assert "b64_json" in url.value.body["message"]
    viewer = _sdk(client, user_in(client, "1001", "vera", "viewer"))
    with pytest.raises(openai.PermissionDeniedError):
        viewer.images.generate(model="tiny-sd", prompt="a", response_format="b64_json")
    assert client.get("/api/v1/jobs", headers=auth).json()["total"] == 0
