"""The console's Knowledge page in a real browser: a knowledge base with the demo embedding
model, a Markdown document uploaded and followed to ready, a phrase searched in the retrieval
playground, and its passage opened in the document's text."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from tests.console_harness import check_narrow, choose, console_url, screenshot

pytestmark = [pytest.mark.console, pytest.mark.slow]

JOB_TIMEOUT_MS = 120_000
BASE_PAGE = re.compile(r".*/console/knowledge/[0-9a-f-]{36}$")
GUIDE = """# Greenhouse guide

## Watering

Tomatoes want deep watering twice a week; shallow daily sprinkles keep their roots lazy.

## Pruning

Pinch the side shoots of cordon tomatoes every week, before they grow longer than a thumb.

## Harvest

Pick the fruit when the shoulders turn fully red and the skin gives a little under the thumb.
"""


@pytest.fixture
def demo_embedding(admin_password, principal) -> str:
    from tuneyard.basemodels.service import add_demo_embedding
    from tuneyard.db import session_scope

    with session_scope() as session:
        return add_demo_embedding(session, principal).model_name


def test_create_upload_search_and_open_a_passage(
    signed_in, console_server, demo_embedding, tmp_path
):
    page = signed_in
    guide = tmp_path / "greenhouse.md"
    guide.write_text(GUIDE)

    page.goto(console_url(console_server, "/knowledge"))
    page.get_by_text("No knowledge bases yet. Create one below.").wait_for()
    page.get_by_test_id("kb-name").fill("garden")
    choose(page, "kb-model", f"{demo_embedding} (base)")
    choose(page, "kb-splitter", "Markdown (headings first)")
    page.get_by_test_id("kb-size").fill("64")
    page.get_by_test_id("kb-overlap").fill("8")
    page.get_by_test_id("kb-create").click()
    page.wait_for_url(BASE_PAGE)
    facts = page.get_by_test_id("kb-facts")
    facts.get_by_text(demo_embedding).wait_for()
    facts.get_by_text("markdown, 64 tokens, 8 overlap").wait_for()

    page.get_by_test_id("kb-upload").locator("input[type=file]").set_input_files(str(guide))
    # The upload follows its job to the end, and the table shows the document ready.
    page.get_by_test_id("upload-jobs").get_by_test_id("status-succeeded").wait_for(
        timeout=JOB_TIMEOUT_MS
    )
    row = page.get_by_test_id("document-table").get_by_role("row").filter(has_text="greenhouse.md")
    row.get_by_text("ready").wait_for()
    chunks = re.search(r"ready\s+1\s+([1-9]\d*)", row.inner_text())
    assert chunks, row.inner_text()
    # The base's counts and its active version's follow, without reloading the page.
    expect(facts).to_contain_text(re.compile(rf"Documents\s*1\s*Chunks\s*{chunks[1]}\s*Index"))
    version = page.get_by_test_id("index-table").get_by_role("row").filter(has_text=demo_embedding)
    assert re.search(
        rf"384\s+markdown, 64 tokens, 8 overlap\s+1\s+{chunks[1]}\s", version.inner_text()
    )

    page.get_by_test_id("search-query").fill("pinch the side shoots")
    page.get_by_test_id("search").click()
    first = page.get_by_test_id("passage-1")
    first.get_by_test_id("passage-text").get_by_text("Pinch the side shoots", exact=False).wait_for(
        timeout=JOB_TIMEOUT_MS
    )
    assert first.get_by_text("greenhouse.md").is_visible()
    assert "Greenhouse guide > Pruning" in first.inner_text()
    scores = first.get_by_test_id("passage-scores").inner_text()
    # Found by both searches: a cosine similarity and a BM25 score, each with its rank.
    assert re.search(r"Fused: 0\.\d{4}", scores), scores
    assert re.search(r"Vector: 0\.\d{4} \(#1\)", scores), scores
    assert re.search(r"BM25: \d+\.\d{4} \(#1\)", scores), scores
    screenshot(page, "knowledge-base")

    first.get_by_test_id("open-passage").click()
    dialog = page.get_by_test_id("document-dialog")
    highlight = dialog.get_by_test_id("passage-highlight")
    highlight.wait_for()
    assert "Pinch the side shoots" in highlight.inner_text()
    # The document's text around it is there too, not highlighted.
    assert "Tomatoes want deep watering" in dialog.inner_text()
    assert "Tomatoes want deep watering" not in highlight.inner_text()
    screenshot(page, "knowledge-passage")
    page.keyboard.press("Escape")
    dialog.wait_for(state="hidden")
    check_narrow(page, "knowledge-base")

    page.goto(console_url(console_server, "/knowledge"))
    listed = page.get_by_test_id("kb-table").get_by_role("row").filter(has_text="garden")
    assert re.search(r"garden\s+1\s", listed.inner_text()), listed.inner_text()
