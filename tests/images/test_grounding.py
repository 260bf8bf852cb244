"""Image prompts grounded in a knowledge base through the API: the passages retrieved for the
prompt are appended within the token budget, the recipe keeps the prompt used so that again
makes the same image, and another project's knowledge base is refused."""

from __future__ import annotations

import pytest

from tests.helpers import user_in, wait_for_job
from tests.images.conftest import generated, png_of
from tuneyard.basemodels.service import add_demo_embedding
from tuneyard.db import session_scope
from tuneyard.images.grounding import estimate_clip_tokens, grounding_text

pytestmark = pytest.mark.slow  # the embedding model loads in the job and the server

KB_API = "/api/v1/knowledge-bases"
STYLE_GUIDE = b"""# House style

## Lighthouses

Lighthouses are painted with red and white stripes under a stormy violet sky at dusk.

## Orchards

Apple orchards glow in golden morning light with dew on every leaf.
"""


@pytest.fixture
def style_kb(client, auth, principal) -> dict:
    with session_scope() as session:
        embedding = f"base:{add_demo_embedding(session, principal).id}"
    created = client.post(
        KB_API,
        json={
            "name": "style",
            "embedding_model": embedding,
            "chunking": {"splitter": "markdown", "size": 64, "overlap": 8},
        },
        headers=auth,
    )
    assert created.status_code == 201, created.text
    accepted = client.post(
        f"{KB_API}/style/documents", files={"file": ("style.md", STYLE_GUIDE)}, headers=auth
    )
    assert accepted.status_code == 202, accepted.text
    assert wait_for_job(accepted.json()["job_id"]).status == "succeeded"
    return created.json()


class TestBudget:
    def test_words_are_kept_while_the_estimate_fits(self):
        passages = [{"text": "## red and white stripes"}, {"text": "under a stormy sky"}]
        assert grounding_text(passages, 100) == ("red and white stripes under a stormy sky", 2)
        assert grounding_text(passages, 5) == ("red and white stripes", 1)
        assert grounding_text(passages, 6) == ("red and white stripes under", 2)
        assert grounding_text(passages, 3) == ("red and white", 1)
        assert grounding_text(passages, 0) == ("", 0)
        # Long words count a token per six letters, digits one each, marks one a run.
        assert estimate_clip_tokens("lighthouses, 1984!") == 2 + 1 + 4 + 1


def test_the_prompt_is_grounded_within_the_budget_and_again_reuses_it(
    client, auth, worker, tiny_image_model, style_kb
):
    accepted, [image] = generated(
        client,
        auth,
        model="tiny-sd",
        prompt="a lighthouse",
        knowledge_base_ids=[style_kb["id"]],
        grounding_tokens=12,
        steps=2,
        width=64,
        height=64,
        seed=7,
    )
    grounding = image["recipe"]["grounding"]
    assert image["recipe"]["prompt"] == "a lighthouse"
    assert grounding["knowledge_base_ids"] == [style_kb["id"]]
    assert grounding["knowledge_bases"] == ["style"]
    assert grounding["budget_tokens"] == 12
    final = grounding["final_prompt"]
    # The passage's heading and text, its Markdown marks left out.
    assert final.startswith("a lighthouse, Lighthouses Lighthouses are painted with red")
    added = final.removeprefix("a lighthouse, ")
    assert added == grounding["added_text"]
    assert 0 < estimate_clip_tokens(added) <= 12
    assert "violet" not in final  # past the budget
    assert grounding["passages"][0]["filename"] == "style.md"
    assert png_of(client, auth, image["id"]).size == (64, 64)

    # Again and vary keep the grounded prompt as it was, whatever the base holds by then.
    _, [again] = generated(client, auth, recipe_from=image["id"])
    assert again["recipe"] == image["recipe"]
    _, [varied] = generated(client, auth, recipe_from=image["id"], vary=True)
    assert varied["recipe"]["grounding"] == grounding
    # A new prompt retrieves again; no knowledge base drops the grounding.
    _, [orchard] = generated(
        client, auth, recipe_from=image["id"], prompt="an apple orchard", grounding_tokens=40
    )
    assert "golden morning light" in orchard["recipe"]["grounding"]["final_prompt"]
    assert estimate_clip_tokens(orchard["recipe"]["grounding"]["added_text"]) <= 40
    _, [plain] = generated(client, auth, recipe_from=image["id"], knowledge_base_ids=[])
    assert "grounding" not in plain["recipe"]


def test_grounding_is_refused_outside_the_project_and_without_bases(
    client, auth, worker, tiny_image_model, style_kb
):
    other = user_in(client, "2002", "painter")
    registered = client.post(
        "/api/v1/image-models",
        json={"name": "tiny-sd", "path": tiny_image_model["path"]},
        headers=other,
    )
    assert registered.status_code == 201, registered.text
    refused = client.post(
        "/api/v1/images",
        json={"model": "tiny-sd", "prompt": "a lighthouse", "knowledge_base_ids": [style_kb["id"]]},
        headers=other,
    )
    assert refused.status_code == 404, refused.text
    assert "No knowledge base" in refused.json()["detail"]

    budget_alone = client.post(
        "/api/v1/images",
        json={"model": "tiny-sd", "prompt": "a lighthouse", "grounding_tokens": 10},
        headers=auth,
    )
    assert budget_alone.status_code == 422, budget_alone.text
    assert "knowledge_base_ids" in budget_alone.json()["detail"]
    too_many = client.post(
        "/api/v1/images",
        json={"model": "tiny-sd", "prompt": "a lighthouse", "grounding_tokens": 76},
        headers=auth,
    )
    assert too_many.status_code == 422
