"""The console's Base Models and Datasets pages, driven in a real browser."""

from __future__ import annotations

import re

import httpx
import pytest

from tests.console_harness import (
    api_headers,
    check_narrow,
    console_url,
    screenshot,
    upload_dataset,
    write_jsonl,
)
from tests.helpers import CHAT, closed_port

pytestmark = pytest.mark.console

MODEL_PAGE = re.compile(r".*/console/base-models/[0-9a-f-]{36}$")
DATASET_PAGE = re.compile(r".*/console/datasets/[0-9a-f-]{36}$")
JOB_TIMEOUT_MS = 90_000


@pytest.fixture(autouse=True)
def server_environment(monkeypatch):
    """A model hub that cannot be reached, as on an offline machine."""
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed_port()}")


def test_register_folder_edit_and_delete(signed_in, console_server, tiny_model_dir):
    page = signed_in
    page.goto(console_url(console_server, "/base-models"))
    page.get_by_text("No base models yet. Register one below").wait_for()
    screenshot(page, "base-models-empty")

    # A name the service would refuse is caught as it is typed.
    page.get_by_label("Technical name").fill("tiny model/1")
    page.get_by_text("no spaces or slashes").wait_for()
    page.get_by_role("button", name="Register").click()
    assert "/base-models/" not in page.url

    # The service's own words when it refuses: the path is read on the server's machine.
    page.get_by_label("Technical name").fill("tiny")
    page.get_by_label("Folder path").fill("models/tiny")
    page.get_by_role("button", name="Register").click()
    page.get_by_text("Give path as an absolute path").wait_for()

    # The hub cannot be reached from here: the service says so at once, and what to do instead.
    page.get_by_role("button", name="Hub id").click()
    page.get_by_label("Hub model id").fill("HuggingFaceTB/SmolLM2-135M-Instruct")
    page.get_by_role("button", name="Register").click()
    page.get_by_text("Cannot reach the model hub").wait_for()
    page.get_by_role("button", name="Local HF folder").click()

    page.get_by_label("Display name (optional)").fill("Tiny llama")
    page.get_by_label("Folder path").fill(str(tiny_model_dir))
    page.get_by_role("button", name="Register").click()
    page.wait_for_url(MODEL_PAGE)
    card = page.get_by_test_id("model-card")
    card.get_by_text("LlamaForCausalLM").first.wait_for()
    assert page.get_by_test_id("status-ready").is_visible()
    assert page.get_by_text(str(tiny_model_dir)).first.is_visible()
    assert "{{" in page.get_by_test_id("template").input_value()
    train = page.get_by_role("link", name="Train on this model")
    assert "/trainings/new?base_model_id=" in train.get_attribute("href")
    screenshot(page, "base-model")

    page.get_by_test_id("display-name").fill("Tiny llama v2")
    page.get_by_role("button", name="Save", exact=True).click()
    page.get_by_text("Display name saved").wait_for()
    check_narrow(page, "base-model")

    page.goto(console_url(console_server, "/base-models"))
    row = page.get_by_role("row").filter(has_text="Tiny llama v2")
    row.wait_for()
    assert "ready" in row.inner_text() and "params" in row.inner_text()
    screenshot(page, "base-models")
    check_narrow(page, "base-models")

    # A fresh list after the resizes: the row is opened as a user would come to it.
    page.goto(console_url(console_server, "/base-models"))
    row.click()
    page.wait_for_url(MODEL_PAGE)
    page.get_by_test_id("delete").click()
    dialog = page.get_by_test_id("confirm")
    dialog.get_by_text("registered in place and stays on disk").wait_for()
    assert "keep their records" in dialog.inner_text()
    dialog.get_by_role("button", name="Delete").click()
    page.wait_for_url(re.compile(r".*/console/base-models$"))
    page.get_by_text("No base models yet. Register one below").wait_for()
    assert (tiny_model_dir / "config.json").is_file()


def test_upload_dataset_preview_stats_and_delete(
    signed_in, console_server, admin_password, tiny_model_dir, tmp_path
):
    page = signed_in
    response = httpx.post(
        f"{console_server.url}/api/v1/base-models",
        json={"technical_name": "tiny", "path": str(tiny_model_dir)},
        headers=api_headers(console_server, admin_password),
    )
    assert response.status_code == 201, response.text
    page.goto(console_url(console_server, "/datasets"))
    page.get_by_text("No datasets yet. Upload a .jsonl, .json, .csv or .parquet file").wait_for()
    screenshot(page, "datasets-empty")

    # The service's own words for a mapping it would refuse, shown as it is typed.
    mapping = page.get_by_label("Column mapping (optional, JSON)")
    mapping.fill("question -> prompt")
    page.get_by_text("column_mapping must be a JSON object").wait_for()
    mapping.fill("")

    upload_dataset(page, "chat-demo", write_jsonl(tmp_path / "chat.jsonl", CHAT))
    page.wait_for_url(DATASET_PAGE, timeout=JOB_TIMEOUT_MS)
    page.get_by_test_id("status-ready").wait_for()
    preview = page.get_by_test_id("preview")
    preview.get_by_text("user: What is the code word number 0?").wait_for()
    assert "assistant: The code word is pineapple." in preview.inner_text()
    assert "1-10 of 16" in preview.inner_text()

    fields = page.get_by_test_id("field-lengths")
    fields.get_by_text("messages").wait_for()
    histogram = page.get_by_test_id("token-histogram")
    histogram.locator("canvas").first.wait_for()
    assert "No record exceeds 1024 tokens." in page.get_by_test_id("over-max").inner_text()
    page.wait_for_timeout(1000)  # the chart's bars grow in
    screenshot(page, "dataset")

    page.get_by_label("Max sequence length").fill("10")
    page.get_by_role("button", name="Count tokens").click()
    page.get_by_text("16 of 16 records exceed 10 tokens").wait_for()
    link = page.get_by_role("link", name="Train on this dataset")
    assert "/trainings/new?dataset_id=" in link.get_attribute("href")
    check_narrow(page, "dataset")

    page.goto(console_url(console_server, "/datasets"))
    row = page.get_by_role("row").filter(has_text="chat-demo")
    row.wait_for()
    assert "16" in row.inner_text() and "ready" in row.inner_text()
    screenshot(page, "datasets")
    check_narrow(page, "datasets")

    row.click()
    page.wait_for_url(DATASET_PAGE)
    page.get_by_test_id("delete").click()
    dialog = page.get_by_test_id("confirm")
    dialog.get_by_text("Trainings that used it keep their records").wait_for()
    dialog.get_by_role("button", name="Delete").click()
    page.wait_for_url(re.compile(r".*/console/datasets$"))
    page.get_by_text("No datasets yet.").wait_for()


def test_failed_parse_is_explained(signed_in, console_server, tmp_path):
    page = signed_in
    page.goto(console_url(console_server, "/datasets"))
    bad = write_jsonl(tmp_path / "notes.jsonl", [{"title": "a", "body": "b"}] * 3)
    upload_dataset(page, "notes", bad)
    page.get_by_text("Parsing did not succeed").wait_for(timeout=JOB_TIMEOUT_MS)
    job = page.locator('[data-testid^="job-"]')
    assert job.locator(".q-badge").inner_text() == "failed"
    assert "column_mapping" in job.inner_text()
    row = page.get_by_role("row").filter(has_text="notes")
    assert "failed" in row.inner_text()
    screenshot(page, "datasets-parse-failed")

    page.get_by_role("link", name="Open the dataset's page").click()
    page.wait_for_url(DATASET_PAGE)
    errors = page.get_by_test_id("parse-errors")
    errors.wait_for()
    assert "column_mapping" in errors.inner_text()
    assert page.get_by_test_id("cannot").is_visible()
    screenshot(page, "dataset-failed")


@pytest.mark.slow
def test_demo_model_imports_with_live_progress(signed_in, console_server, smollm2_gguf):
    page = signed_in
    page.goto(console_url(console_server, "/base-models"))
    page.get_by_role("button", name="Add the demo model").click()
    page.wait_for_url(MODEL_PAGE)
    page.locator('[data-testid^="job-"]').wait_for()
    page.get_by_text("Training, deploying and chatting need the model ready").wait_for()
    screenshot(page, "base-model-importing")
    # The page reloads itself when the import job ends.
    page.get_by_test_id("status-ready").wait_for(timeout=300_000)
    page.get_by_test_id("model-card").get_by_text("LlamaForCausalLM").first.wait_for()
    assert page.get_by_role("link", name="Train on this model").is_visible()
    screenshot(page, "base-model-demo")
