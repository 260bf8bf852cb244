"""The console's DeepImage page in a real browser: the tiny Stable Diffusion registered by
path (an adapter added and removed on its page, one trained there), one 64x64 image generated
in 2 steps and followed live, its recipe reused in the form and generated again, varied, seen
by a viewer who cannot change anything, and deleted."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from tests.console_harness import WIDE, check_narrow, choose, console_url, log_in, screenshot
from tests.images.conftest import (  # noqa: F401 (fixtures)
    stop_image_process,
    tiny_lora_file,
    tiny_sd_dir,
)
from tests.images.test_training import four_images, zipped
from tuneyard.auth.service import create_user, local_principal
from tuneyard.db import session_scope

pytestmark = [pytest.mark.console, pytest.mark.slow]

JOB_TIMEOUT_MS = 120_000
MODEL_PAGE = re.compile(r".*/console/deepimage/models/[0-9a-f-]{36}$")


def test_register_generate_reuse_and_delete(
    signed_in,
    console_server,
    tiny_sd_dir,  # noqa: F811
    tiny_lora_file,  # noqa: F811
    tmp_path,
):
    page = signed_in
    page.goto(console_url(console_server, "/deepimage"))
    page.get_by_text("No image models yet. Register one below.").wait_for()
    page.get_by_text("No images yet.").wait_for()

    page.get_by_test_id("image-model-name").fill("tiny-sd")
    page.get_by_test_id("image-model-path").fill(str(tiny_sd_dir))
    page.get_by_test_id("image-model-register").click()
    row = page.get_by_test_id("image-model-table").get_by_role("row").filter(has_text="tiny-sd")
    row.wait_for()
    assert re.search(
        r"tiny-sd\s+StableDiffusionPipeline\s+64 px\s+\S+\s+\S+ [KM]B\s+0", row.inner_text()
    )

    # The model's card: pipeline, native size, parameters, size on disk, where it runs.
    row.click()
    page.wait_for_url(MODEL_PAGE)
    facts = page.get_by_test_id("image-model-facts")
    facts.wait_for()
    shown = facts.inner_text()
    assert "StableDiffusionPipeline" in shown, shown
    assert re.search(r"PARAMETERS\s+\d", shown, re.IGNORECASE), shown
    assert re.search(r"RUNS ON\s+cpu", shown, re.IGNORECASE), shown
    adapters = page.get_by_test_id("adapter-table")
    adapters.get_by_text("No adapters yet.").wait_for()
    page.get_by_test_id("adapter-upload").locator("input[type=file]").set_input_files(
        str(tiny_lora_file)
    )
    adapters.get_by_text("pytorch_lora_weights").wait_for()
    adapters.get_by_test_id("drop-adapter-pytorch_lora_weights").click()
    page.get_by_test_id("confirm").get_by_role("button", name="Delete").click()
    adapters.get_by_text("No adapters yet.").wait_for()

    # An adapter trained on a zip of captioned images joins the table when its job ends.
    archive = tmp_path / "squares.zip"
    archive.write_bytes(zipped(four_images()))
    form = page.get_by_test_id("train-form")
    form.get_by_test_id("train-upload").locator("input[type=file]").set_input_files(str(archive))
    form.get_by_text("Images: squares.zip").wait_for()
    page.get_by_test_id("train-name").fill("squares")
    page.get_by_test_id("train-steps").fill("2")
    page.get_by_test_id("train-start").click()
    page.get_by_test_id("train-jobs").get_by_test_id("status-succeeded").wait_for(
        timeout=JOB_TIMEOUT_MS
    )
    adapters.get_by_text("trained: LoRA r8, 2 steps on 4 images").wait_for()
    page.go_back()

    choose(page, "gen-model", "tiny-sd")
    page.get_by_test_id("gen-prompt").fill("a red square")
    page.get_by_test_id("gen-negative").fill("blurry")
    choose(page, "gen-aspect", "Explicit size")
    page.get_by_test_id("gen-width").fill("64")
    page.get_by_test_id("gen-height").fill("64")
    page.get_by_test_id("gen-steps").fill("2")
    page.get_by_test_id("gen-seed").fill("5")
    page.get_by_test_id("generate").click()
    # The job is followed live, and its image joins the grid when it ends.
    page.get_by_test_id("gen-jobs").get_by_test_id("status-succeeded").wait_for(
        timeout=JOB_TIMEOUT_MS
    )
    grid = page.get_by_test_id("image-grid")
    card = grid.get_by_test_id("image-card").filter(has_text="a red square").first
    card.get_by_test_id("image-details").wait_for()
    expect(card.get_by_test_id("image-details")).to_contain_text(
        "tiny-sd · 64x64 · seed 5 · 2 steps"
    )
    picture = card.get_by_test_id("image-picture").locator("img")
    page.wait_for_function(
        "(img) => img.complete && img.naturalWidth === 64", arg=picture.element_handle()
    )
    screenshot(page, "deepimage")

    # Reuse recipe fills the form from the image's recipe.
    page.get_by_test_id("gen-prompt").fill("")
    card.get_by_test_id("image-reuse").click()
    expect(page.get_by_test_id("gen-prompt")).to_have_value("a red square")
    expect(page.get_by_test_id("gen-negative")).to_have_value("blurry")
    expect(page.get_by_test_id("gen-seed")).to_have_value("5")
    expect(page.get_by_test_id("gen-width")).to_have_value("64")
    expect(page.get_by_test_id("gen-steps")).to_have_value("2")
    page.get_by_test_id("gen-recipe-from").get_by_text("Starting from the recipe").wait_for()
    check_narrow(page, "deepimage")

    # A viewer sees the models and images, and can download, but not generate or delete.
    with session_scope() as session:
        create_user(session, local_principal(session), "onlooker", "password-123", "viewer")
    context = page.context.browser.new_context(viewport=WIDE)
    try:
        viewer = context.new_page()
        log_in(viewer, console_server, "password-123", username="onlooker")
        viewer.goto(console_url(console_server, "/deepimage"))
        viewer.get_by_test_id("cannot").get_by_text("Registering models and generating").wait_for()
        viewer.get_by_test_id("image-grid").get_by_test_id("image-download").wait_for()
        assert viewer.get_by_test_id("generate").count() == 0
        assert viewer.get_by_test_id("image-delete").count() == 0
        assert viewer.get_by_test_id("image-reuse").count() == 0
    finally:
        context.close()

    # Generating from the reused recipe keeps its seed; Vary draws a new one.
    page.get_by_test_id("generate").click()
    done = page.get_by_test_id("gen-jobs").get_by_test_id("status-succeeded")
    expect(done).to_have_count(2, timeout=JOB_TIMEOUT_MS)
    cards = grid.get_by_test_id("image-card").filter(has_text="a red square")
    expect(cards).to_have_count(2)
    expect(grid.get_by_text("seed 5 ·")).to_have_count(2)
    cards.first.get_by_test_id("image-vary").click()
    expect(done).to_have_count(3, timeout=JOB_TIMEOUT_MS)
    expect(cards).to_have_count(3)
    expect(grid.get_by_text("seed 5 ·")).to_have_count(2)

    cards.first.get_by_test_id("image-delete").click()
    page.get_by_test_id("confirm").get_by_text("images made from its recipe stay").wait_for()
    page.get_by_test_id("confirm").get_by_role("button", name="Delete").click()
    expect(cards).to_have_count(2)
