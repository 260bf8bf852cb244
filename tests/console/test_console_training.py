"""The console's training pages in a real browser: guidance, profiles, methods, a run, compare."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest

from tests.console_harness import check_narrow, choose, console_url, echart_series, screenshot
from tests.helpers import CHAT, FAST, LORA_SCRIPT, wait_for_job

pytestmark = pytest.mark.console

TRAINING_TIMEOUT_MS = 240_000

# A script that reads fine but has no train function: add_method says what is missing.
NO_TRAIN_SCRIPT = b"""
DESCRIPTION = "Forgot the train function."
FORMATS = ["chat"]
RESULT = "adapter"
PARAMETERS = {}
"""

REWARD_SCRIPT = b"""
def reward(completions, **columns):
    return [float(len(c) < 50) for c in completions]
"""


# -- setting up through the API ---------------------------------------------------------------


@contextmanager
def api(server, password: str) -> Iterator[httpx.Client]:
    """An API client signed in as the first admin."""
    with httpx.Client(base_url=f"{server.url}/api/v1", timeout=60) as client:
        response = client.post(
            "/auth/login",
            json={"project_code": "1001", "username": "admin", "password": password},
        )
        assert response.status_code == 200, response.text
        client.headers["Authorization"] = f"Bearer {response.json()['token']}"
        yield client


def add_base_and_dataset(client: httpx.Client, tiny_model_dir) -> tuple[str, str]:
    response = client.post(
        "/base-models", json={"technical_name": "tiny", "path": str(tiny_model_dir)}
    )
    assert response.status_code == 201, response.text
    base_id = response.json()["id"]
    body = "\n".join(json.dumps(r) for r in CHAT).encode()
    response = client.post(
        "/datasets",
        data={"name": "codes"},
        files={"file": ("codes.jsonl", body, "application/json")},
    )
    assert response.status_code == 202, response.text
    assert wait_for_job(response.json()["job_id"]).status == "succeeded"
    return base_id, response.json()["id"]


# -- the tests --------------------------------------------------------------------------------


def test_empty_project_says_what_training_needs(signed_in, console_server):
    page = signed_in
    page.goto(console_url(console_server, "/trainings"))
    guidance = page.get_by_test_id("needs")
    guidance.wait_for()
    assert "A training needs a base model and a dataset first." in guidance.inner_text()
    assert page.get_by_role("link", name="Add a base model").is_visible()
    assert page.get_by_role("link", name="Add a dataset").is_visible()
    assert page.get_by_test_id("new-training").is_disabled()
    assert "No trainings yet" in page.get_by_test_id("trainings-table").inner_text()
    for tab in ("Runs", "Compare", "Profiles", "Methods"):
        assert page.get_by_test_id("training-tabs").get_by_role("link", name=tab).is_visible()
    screenshot(page, "training-list-empty")
    check_narrow(page, "training-list-empty")

    page.goto(console_url(console_server, "/trainings/new"))
    page.get_by_test_id("needs").wait_for()
    assert page.get_by_test_id("start-training").is_disabled()
    # The method's parameters are there to read even before anything can start.
    page.get_by_label("learning_rate", exact=True).wait_for()
    screenshot(page, "training-new-empty")

    page.goto(console_url(console_server, "/trainings/compare"))
    assert "Comparing needs at least two trainings." in page.get_by_test_id("needs").inner_text()


def test_profiles_and_methods(code_uploads, signed_in, console_server):
    page = signed_in
    page.goto(console_url(console_server, "/training/profiles"))
    page.get_by_text("No profiles yet").wait_for()
    page.get_by_test_id("new-profile").get_by_text("New profile").click()
    page.get_by_label("Profile name").fill("quick")
    choose(page, "profile-method", "sft")
    page.get_by_label("Parameters (JSON object)").fill('{"learning_rate": 5}')
    page.get_by_test_id("create-profile").click()
    # The service's own words for a bad parameter.
    page.get_by_text(re.compile(r"Invalid parameters for sft: learning_rate")).wait_for()
    page.get_by_label("Parameters (JSON object)").fill('{"learning_rate": 0.001, "epochs": 2}')
    page.get_by_label("Description").fill("Two quick epochs")
    page.get_by_test_id("create-profile").click()
    table = page.get_by_test_id("profiles-table")
    table.get_by_text("Two quick epochs").wait_for()
    assert "learning_rate=0.001" in table.inner_text()
    screenshot(page, "training-profiles")
    check_narrow(page, "training-profiles")

    table.get_by_text("quick", exact=True).click()
    dialog = page.get_by_test_id("edit-profile")
    dialog.get_by_label("Description").fill("Two careful epochs")
    dialog.get_by_test_id("save-profile").click()
    table.get_by_text("Two careful epochs").wait_for()
    table.get_by_text("quick", exact=True).click()
    page.get_by_test_id("delete-profile").click()
    confirmation = page.get_by_test_id("confirm")
    assert "keep their parameters" in confirmation.inner_text()
    confirmation.get_by_role("button", name="Delete profile").click()
    table.get_by_text("No profiles yet").wait_for()

    page.goto(console_url(console_server, "/training/methods"))
    for name in ("sft", "dpo", "orpo", "kto", "grpo"):
        page.get_by_test_id(f"method-{name}").wait_for()
    page.get_by_label("Method name").fill("broken")
    page.get_by_test_id("method-upload").locator("input[type=file]").set_input_files(
        files=[{"name": "broken.py", "mimeType": "text/x-python", "buffer": NO_TRAIN_SCRIPT}]
    )
    page.get_by_test_id("method-error").get_by_text(
        "The method script must define `def train(config, output_dir, report):`", exact=False
    ).wait_for()
    page.get_by_label("Method name").fill("handloop")
    page.get_by_test_id("method-upload").locator("input[type=file]").set_input_files(
        files=[{"name": "loop.py", "mimeType": "text/x-python", "buffer": LORA_SCRIPT.encode()}]
    )
    card = page.get_by_test_id("method-handloop")
    card.wait_for()
    assert "LoRA with a hand-written loop." in card.inner_text()
    page.get_by_label("Reward file name (empty: the file's name)").fill("short_answers")
    page.get_by_test_id("reward-upload").locator("input[type=file]").set_input_files(
        files=[{"name": "short.py", "mimeType": "text/x-python", "buffer": REWARD_SCRIPT}]
    )
    page.get_by_test_id("reward-file-list").get_by_text("file:short_answers").wait_for()
    screenshot(page, "training-methods")
    check_narrow(page, "training-methods")

    card.get_by_role("button", name="Delete").click()
    page.get_by_test_id("confirm").get_by_role("button", name="Delete method").click()
    card.wait_for(state="detached")


@pytest.mark.slow
def test_train_from_the_form_and_watch_it_succeed(
    signed_in, console_server, admin_password, tiny_model_dir
):
    page = signed_in
    with api(console_server, admin_password) as client:
        add_base_and_dataset(client, tiny_model_dir)

    page.goto(console_url(console_server, "/trainings"))
    page.get_by_test_id("new-training").click()
    page.wait_for_url(re.compile(r".*/trainings/new$"))
    page.get_by_test_id("training-form").wait_for()
    # One base model and one dataset: both are picked already.
    assert page.get_by_label("Base model").input_value() == "tiny"
    assert page.get_by_label("Dataset").input_value().startswith("codes")

    page.get_by_label("Name", exact=True).fill("bad name!")
    page.get_by_test_id("start-training").click()
    page.get_by_test_id("form-error").get_by_text("A train name is").wait_for()

    page.get_by_label("Name", exact=True).fill("codes-run")
    for name, value in FAST.items():
        page.get_by_label(name, exact=True).fill(str(value))
    page.get_by_label("learning_rate", exact=True).fill("5")
    page.get_by_test_id("start-training").click()
    page.get_by_test_id("form-error").get_by_text(
        re.compile(r"Invalid parameters for sft: learning_rate")
    ).wait_for()
    screenshot(page, "training-new-error")
    check_narrow(page, "training-new")

    page.get_by_label("learning_rate", exact=True).fill(str(FAST["learning_rate"]))
    page.get_by_test_id("start-training").click()
    page.wait_for_url(re.compile(r".*/trainings/[0-9a-f-]{36}$"))
    training_id = page.url.rsplit("/", 1)[1]
    status = page.get_by_test_id("training-status")
    page.wait_for_function(
        "() => document.querySelector('[data-testid=\"training-status\"]')"
        ".innerText.trim() === 'succeeded'",
        timeout=TRAINING_TIMEOUT_MS,
    )
    assert status.inner_text().strip() == "succeeded"
    page.get_by_test_id("result-customized").wait_for()
    loss = {s["name"]: s["points"] for s in echart_series(page, "loss-chart")}
    assert loss["loss"] == FAST["max_steps"]
    lr = echart_series(page, "lr-chart")
    assert lr[0]["points"] == FAST["max_steps"]
    log_text = page.get_by_test_id("log-tail").inner_text()
    assert log_text.strip() and "(the log is empty so far)" not in log_text
    assert page.get_by_test_id("training-parameters").get_by_text("max_steps:").is_visible()
    effective = f"{FAST['batch_size'] * FAST['grad_accum_steps']} ({FAST['batch_size']} per worker"
    assert page.get_by_test_id("training-parameters").get_by_text(effective).is_visible()
    assert page.get_by_test_id("resume-training").count() == 0
    screenshot(page, "training-detail")
    check_narrow(page, "training-detail")

    # The last step's checkpoint is kept: it can become a customized model of its own.
    page.get_by_test_id("promote-6").click()
    page.wait_for_url(re.compile(r".*/customized-models/[0-9a-f-]{36}$"))
    page.get_by_test_id("model-card").get_by_text("checkpoint_step").wait_for()
    href = page.get_by_test_id("download").get_attribute("href")
    assert href == f"/console/download/customized-models/{page.url.rsplit('/', 1)[1]}"
    page.go_back()
    page.wait_for_url(re.compile(r".*/trainings/[0-9a-f-]{36}$"))

    page.get_by_test_id("copy-settings").click()
    page.wait_for_url(re.compile(rf".*/trainings/new\?copy_from={training_id}$"))
    assert page.get_by_label("Name", exact=True).input_value() == "codes-run-copy"
    assert page.get_by_label("max_steps", exact=True).input_value() == str(FAST["max_steps"])

    page.goto(console_url(console_server, "/trainings"))
    row = page.get_by_test_id("trainings-table").get_by_role("row").filter(has_text="codes-run")
    assert "succeeded" in row.inner_text()
    choose(page, "status-filter", "failed")
    page.get_by_test_id("trainings-table").get_by_text("No failed trainings.").wait_for()
    choose(page, "status-filter", "succeeded")
    row.wait_for()
    screenshot(page, "training-list")
    check_narrow(page, "training-list")


@pytest.mark.slow
def test_compare_two_trainings(signed_in, console_server, admin_password, tiny_model_dir):
    page = signed_in
    with api(console_server, admin_password) as client:
        base_id, dataset_id = add_base_and_dataset(client, tiny_model_dir)
        started = []
        for name, rate in (("fast-lr", 2e-2), ("slow-lr", 1e-3)):
            response = client.post(
                "/trainings",
                json={
                    "name": name,
                    "method": "sft",
                    "base_model_id": base_id,
                    "dataset_id": dataset_id,
                    "params": {**FAST, "learning_rate": rate},
                },
            )
            assert response.status_code == 202, response.text
            started.append(response.json())
    for training in started:
        assert wait_for_job(training["job_id"], timeout=240).status == "succeeded"

    ids = ",".join(t["id"] for t in started)
    page.goto(console_url(console_server, f"/trainings/compare?ids={ids}"))
    page.get_by_test_id("compare-summary").get_by_text("fast-lr").wait_for()
    series = {s["name"]: s["points"] for s in echart_series(page, "compare-chart")}
    assert series == {"fast-lr": FAST["max_steps"], "slow-lr": FAST["max_steps"]}
    screenshot(page, "training-compare")
    check_narrow(page, "training-compare")

    choose(page, "compare-metric", "learning_rate")
    page.wait_for_function(
        """() => {
            const element = document.querySelector('[data-testid="compare-chart"]');
            return getElement(element).chart.getOption().yAxis[0].name === "learning_rate";
        }"""
    )
    series = {s["name"]: s["points"] for s in echart_series(page, "compare-chart")}
    assert series == {"fast-lr": FAST["max_steps"], "slow-lr": FAST["max_steps"]}
