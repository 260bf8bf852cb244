"""A new user's whole journey in the console, in a real browser, on a tiny model: log in,
register a base model, upload a dataset and see its preview, train and watch the loss chart,
save, deploy to a llama.cpp environment, and chat with the live model as its answer streams."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeout
from playwright.sync_api import expect

from tests.console_harness import (
    check_narrow,
    choose,
    echart_series,
    follow,
    jobs_said,
    log_in,
    screenshot,
    upload_dataset,
    write_jsonl,
)
from tests.helpers import CHAT, FAST

pytestmark = pytest.mark.console

JOB_TIMEOUT_MS = 240_000
ANSWER_TIMEOUT_MS = 120_000
UUID = "[0-9a-f-]{36}"

# Records every text the answer bubble shows while it is written, to see it arrive in pieces.
WATCH_ANSWER = """() => {
    window.answerTexts = [];
    new MutationObserver(() => {
        const bubbles = document.querySelectorAll('[data-testid="answer-text"]');
        if (bubbles.length) window.answerTexts.push(bubbles[bubbles.length - 1].textContent);
    }).observe(document.body, {subtree: true, childList: true, characterData: true});
}"""


def step(page, name: str) -> None:
    """Keep a screenshot of this step at 1280x800, and check it fits a phone-sized window."""
    screenshot(page, f"journey-{name}")
    check_narrow(page, f"journey-{name}")


@pytest.mark.slow
@pytest.mark.journey
def test_a_new_users_journey(
    stop_servers, page, console_server, admin_password, tiny_model_dir, tmp_path
):
    log_in(page, console_server, admin_password)
    step(page, "01-dashboard")

    # Register the base model from its folder.
    page.get_by_role("link", name="Base Models").first.click()
    page.get_by_label("Technical name").fill("tiny")
    page.get_by_label("Folder path").fill(str(tiny_model_dir))
    follow(
        page,
        page.get_by_role("button", name="Register"),
        re.compile(rf".*/console/base-models/{UUID}$"),
    )
    page.get_by_test_id("model-card").wait_for()
    step(page, "02-base-model")

    # Upload a dataset and read its preview.
    page.get_by_role("link", name="Datasets").first.click()
    upload_dataset(page, "support-chats", write_jsonl(tmp_path / "chats.jsonl", CHAT))
    page.wait_for_url(re.compile(rf".*/console/datasets/{UUID}$"), timeout=JOB_TIMEOUT_MS)
    preview = page.get_by_test_id("preview")
    preview.get_by_text("The code word is pineapple.").first.wait_for()
    page.get_by_test_id("token-histogram").wait_for()
    step(page, "03-dataset")

    # Start a training from the dataset and watch it finish with its loss chart.
    follow(
        page,
        page.get_by_role("link", name="Train on this dataset"),
        re.compile(r".*/console/trainings/new\?dataset_id=.+"),
    )
    page.get_by_label("Name", exact=True).fill("first-run")
    for name, value in FAST.items():
        page.get_by_label(name, exact=True).fill(str(value))
    step(page, "04-new-training")
    follow(
        page, page.get_by_test_id("start-training"), re.compile(rf".*/console/trainings/{UUID}$")
    )
    expect(page.get_by_test_id("training-status")).to_have_text("succeeded", timeout=JOB_TIMEOUT_MS)
    series = {s["name"]: s["points"] for s in echart_series(page, "loss-chart")}
    assert series["loss"] == FAST["max_steps"]
    step(page, "05-training")

    # The customized model it made: save it as a complete model.
    follow(
        page,
        page.get_by_test_id("result-customized"),
        re.compile(rf".*/console/customized-models/{UUID}$"),
    )
    page.get_by_test_id("model-card").wait_for()
    step(page, "06-customized-model")
    page.get_by_role("button", name="Save as complete model").click()
    saved = page.get_by_test_id("saved-link")  # shown once the save ended, however it ended
    try:
        saved.wait_for(timeout=JOB_TIMEOUT_MS)
    except PlaywrightTimeout:
        raise AssertionError(
            "the save did not end: " + jobs_said(console_server, admin_password, "complete.save")
        ) from None
    assert saved.inner_text().startswith("Open complete model"), jobs_said(
        console_server, admin_password, "complete.save"
    )
    expect(
        page.get_by_test_id("save-progress").get_by_text("succeeded", exact=True)
    ).to_be_visible()
    follow(
        page, page.get_by_test_id("saved-link"), re.compile(rf".*/console/complete-models/{UUID}$")
    )
    expect(page.get_by_test_id("complete-status")).to_have_text("ready")
    complete_url = page.url
    step(page, "07-complete-model")

    # A llama.cpp environment that Tuneyard runs on this machine.
    page.get_by_role("link", name="Deployment Environments").first.click()
    page.get_by_test_id("environment-name").fill("local")
    choose(page, "environment-kind", "llama.cpp")
    page.get_by_role("button", name="Add environment").click()
    page.get_by_test_id("environment-table").get_by_text("managed here").wait_for()
    step(page, "08-environments")

    # Deploy the complete model there: it becomes a live model.
    page.goto(complete_url)
    page.get_by_role("button", name="Deploy", exact=True).click()
    dialog = page.get_by_test_id("deploy-dialog")
    dialog.get_by_text("local (llama.cpp, managed here)").wait_for()
    choose(page, "deploy-quantization", "q8_0: 8-bit, about half the size, nearly lossless")
    follow(
        page,
        dialog.get_by_role("button", name="Deploy"),
        re.compile(rf".*/console/live-models/{UUID}$"),
    )
    expect(page.get_by_test_id("live-status")).to_have_text("live", timeout=JOB_TIMEOUT_MS)
    step(page, "09-live-model")

    # Chat with the live model: the answer arrives in pieces, then its timing shows.
    follow(
        page, page.get_by_test_id("live-chat"), re.compile(r".*/console/deeptext\?model=live:.+")
    )
    page.evaluate(WATCH_ANSWER)
    page.get_by_test_id("prompt").fill("What is the code word?")
    page.get_by_test_id("prompt").press("Enter")
    stats = page.get_by_test_id("answer-stats").last
    stats.wait_for(state="visible", timeout=ANSWER_TIMEOUT_MS)
    assert "first token" in stats.inner_text()
    answer = page.get_by_test_id("answer-text").last.text_content()
    assert answer.strip()
    seen = {text for text in page.evaluate("window.answerTexts") if text}
    assert len(seen) >= 2, f"the answer did not stream: {seen}"
    step(page, "10-deeptext")

    # The dashboard counts what the journey made.
    page.get_by_role("link", name="Dashboard").first.click()
    for key in ("base_models", "datasets", "trainings", "customized_models", "live_models"):
        assert page.get_by_test_id(f"count-{key}").inner_text().startswith("1")
    # Every piece of long work was a job: parse, train, save, deploy; each has its log.
    jobs = page.get_by_test_id("recent-jobs")
    for kind in ("dataset: parse", "training: run", "complete: save", "deploy: model"):
        assert "succeeded" in jobs.get_by_role("row").filter(has_text=kind).inner_text()
    step(page, "11-dashboard-after")
    follow(
        page,
        jobs.get_by_role("row").filter(has_text="training: run"),
        re.compile(rf".*/console/jobs/{UUID}$"),
    )
    page.get_by_test_id("job-log").get_by_text("job succeeded").wait_for()
    step(page, "12-job")
