"""The console's Customized, Complete and Live model pages, Deployment Environments and
Third-party Models, driven in a real browser."""

from __future__ import annotations

import re

import httpx
import pytest

from tests.console_harness import (
    WIDE,
    api_headers,
    check_narrow,
    choose,
    console_url,
    log_in,
    screenshot,
)
from tests.helpers import closed_port

pytestmark = pytest.mark.console

JOB_TIMEOUT_MS = 120_000
COMPLETE_PAGE = re.compile(r".*/console/complete-models/[0-9a-f-]{36}$")
LIVE_PAGE = re.compile(r".*/console/live-models/[0-9a-f-]{36}$")


def field(page, testid: str):
    """The text box of an input with data-testid `testid` (Quasar puts it on the native box)."""
    return page.get_by_test_id(testid)


def register_tiny(server, headers, tiny_model_dir) -> str:
    response = httpx.post(
        f"{server.url}/api/v1/base-models",
        json={"technical_name": "tiny", "path": str(tiny_model_dir)},
        headers=headers,
    )
    assert response.status_code == 201, response.text
    return response.json()["id"]


def test_environment_form_test_edit_and_delete(signed_in, console_server, admin_password, browser):
    page = signed_in
    page.goto(console_url(console_server, "/deploy-environments"))
    page.get_by_text("No deployment environments yet").wait_for()
    screenshot(page, "environments-empty")

    # A name the service would refuse, and an Ollama without its address, are caught inline.
    field(page, "environment-name").fill("my env")
    page.get_by_text("Use only letters, digits").wait_for()
    choose(page, "environment-kind", "Ollama")
    page.get_by_text("Ollama at an address").wait_for()
    page.get_by_role("button", name="Add environment").click()
    page.get_by_text("Required for Ollama and OpenAI-compatible servers").wait_for()

    # The managed llama.cpp: no URL, Tuneyard runs the server.
    field(page, "environment-name").fill("local")
    choose(page, "environment-kind", "llama.cpp")
    page.get_by_text("managed here").first.wait_for()
    page.get_by_role("button", name="Add environment").click()
    table = page.get_by_test_id("environment-table")
    table.get_by_text("managed here").wait_for()
    table.get_by_text("not tested yet").wait_for()

    page.get_by_test_id("probe-local").click()
    result = page.get_by_test_id("environment-test-result")
    result.get_by_text("Ready: a llama.cpp server starts here when a model is deployed.").wait_for()
    table.get_by_text(re.compile(r"^answered ")).wait_for()
    screenshot(page, "environments")
    check_narrow(page, "environments")

    # Edit: the managed one has no address to change; the name does change.
    page.get_by_test_id("edit-local").click()
    page.get_by_text("no address to change").wait_for()
    dialog = page.get_by_role("dialog")
    dialog.get_by_label("Name").fill("here")
    dialog.get_by_role("button", name="Save").click()
    table.get_by_text("here", exact=True).wait_for()

    # Delete: the confirmation says what goes and what stays.
    page.get_by_test_id("drop-here").click()
    confirm = page.get_by_test_id("confirm")
    confirm.get_by_text("The models you deployed from stay in Tuneyard").wait_for()
    confirm.get_by_role("button", name="Delete").click()
    page.get_by_text("No deployment environments yet").wait_for()

    # A member may test environments but not add them: the page says why.
    created = httpx.post(
        f"{console_server.url}/api/v1/users",
        json={"username": "mia", "password": "member-password", "role": "member"},
        headers=api_headers(console_server, admin_password),
    )
    assert created.status_code == 201, created.text
    context = browser.new_context(viewport=WIDE)
    try:
        member = context.new_page()
        log_in(member, console_server, "member-password", username="mia")
        member.goto(console_url(console_server, "/deploy-environments"))
        member.get_by_test_id("cannot").get_by_text(
            "This needs the admin role; you are member."
        ).wait_for()
        assert member.get_by_test_id("environment-form").count() == 0
    finally:
        context.close()


def test_third_party_name_error_create_test_and_delete(signed_in, console_server):
    page = signed_in
    page.goto(console_url(console_server, "/third-party-models"))
    page.get_by_text("No third-party models yet").wait_for()

    field(page, "third-party-name").fill("bad name!")
    page.get_by_text("Use only letters, digits and . _ : / -").wait_for()
    field(page, "third-party-model-name").fill("qwen")
    page.get_by_role("button", name="Add third-party model").click()
    # Refused before it reaches the service: nothing is listed.
    assert page.get_by_text("No third-party models yet").is_visible()

    # openai-compatible needs its base URL; one where nothing listens fails its test.
    port = closed_port()
    field(page, "third-party-name").fill("mine")
    choose(page, "third-party-provider", "openai-compatible")
    page.get_by_role("button", name="Add third-party model").click()
    page.get_by_text("Required for openai-compatible").wait_for()
    field(page, "third-party-url").fill(f"http://127.0.0.1:{port}/v1")
    field(page, "third-party-api-key").fill("sk-secret-key")
    page.get_by_role("button", name="Add third-party model").click()
    table = page.get_by_test_id("third-party-table")
    table.get_by_text("mine", exact=True).wait_for()
    assert page.get_by_text("sk-secret-key").count() == 0

    page.get_by_test_id("probe-mine").click()
    result = page.get_by_test_id("third-party-test-result")
    result.get_by_text(f"Cannot reach 127.0.0.1:{port}").wait_for()
    assert "connection refused" in result.inner_text()
    assert page.get_by_test_id("chat-mine").is_visible()
    screenshot(page, "third-party-models")
    check_narrow(page, "third-party-models")

    # A duplicate name: the service's own words.
    field(page, "third-party-name").fill("mine")
    choose(page, "third-party-provider", "openai")
    field(page, "third-party-model-name").fill("gpt-4o-mini")
    page.get_by_role("button", name="Add third-party model").click()
    page.get_by_text("A third-party model named 'mine' exists").wait_for()

    page.get_by_test_id("drop-mine").click()
    page.get_by_test_id("confirm").get_by_text("its stored API key").wait_for()
    page.get_by_test_id("confirm").get_by_role("button", name="Delete").click()
    page.get_by_text("No third-party models yet").wait_for()


@pytest.fixture
def offline_hub(monkeypatch) -> str:
    """A hub address where nothing listens, for the server to be started with."""
    endpoint = f"http://127.0.0.1:{closed_port()}"
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    return endpoint


@pytest.mark.slow
def test_customized_card_save_and_delete(
    offline_hub, signed_in, console_server, admin_password, tiny_model_dir, made_adapter_dir
):
    from tests.helpers import make_customized

    page = signed_in
    base_id = register_tiny(
        console_server, api_headers(console_server, admin_password), tiny_model_dir
    )
    made = make_customized(base_id, made_adapter_dir)

    page.goto(console_url(console_server, "/customized-models"))
    page.get_by_test_id("customized-table").get_by_text(made["name"]).click()
    page.wait_for_url(re.compile(rf".*/console/customized-models/{made['id']}$"))
    page.get_by_test_id("model-card").get_by_text("adapter_digest").wait_for()
    base_link = page.get_by_test_id("lineage").get_by_role("link", name="tiny", exact=True)
    assert base_link.get_attribute("href").endswith(f"/base-models/{base_id}")
    chat = page.get_by_test_id("chat")
    assert chat.get_attribute("href").endswith(f"/deeptext?model=customized:{made['id']}")

    # No environment yet: the deploy dialog says so and where to add one.
    page.get_by_role("button", name="Deploy", exact=True).click()
    dialog = page.get_by_test_id("deploy-dialog")
    dialog.get_by_test_id("cannot").get_by_text("No deployment environment yet").wait_for()
    assert dialog.get_by_role("link", name="Add a deployment environment").is_visible()
    dialog.get_by_role("button", name="Close").click()
    screenshot(page, "customized-model")
    check_narrow(page, "customized-model")

    # Save as fp32, watched live on the page, then a link to the new complete model.
    choose(page, "save-dtype", "fp32 (full precision, twice the size)")
    page.get_by_role("button", name="Save as complete model").click()
    progress = page.get_by_test_id("save-progress")
    progress.get_by_text("succeeded", exact=True).wait_for(timeout=JOB_TIMEOUT_MS)
    screenshot(page, "customized-model-saved")
    page.get_by_test_id("saved-link").click()
    page.wait_for_url(COMPLETE_PAGE)
    complete_url = page.url
    assert page.get_by_test_id("complete-status").inner_text() == "ready"
    page.get_by_test_id("model-card").get_by_text("fp32").first.wait_for()
    assert page.get_by_test_id("lineage").get_by_role("link", name=made["name"]).is_visible()
    screenshot(page, "complete-model")
    check_narrow(page, "complete-model")

    # The hub cannot be reached: said at once, in the service's words.
    page.get_by_test_id("push-repo").fill("me/tiny")
    page.get_by_role("button", name="Push").click()
    page.get_by_text(f"Cannot reach the model hub ({offline_hub}").wait_for()
    page.get_by_role("button", name="Delete").click()
    page.get_by_test_id("confirm").get_by_text(
        "Live models deployed from it keep their own copies and stay."
    ).wait_for()
    page.get_by_test_id("confirm").get_by_role("button", name="Cancel").click()

    page.goto(console_url(console_server, "/complete-models"))
    page.get_by_test_id("complete-table").get_by_text("ready").wait_for()
    screenshot(page, "complete-models")
    check_narrow(page, "complete-models")

    # Deleting the customized model: the confirmation says what stays, and it does.
    page.goto(console_url(console_server, f"/customized-models/{made['id']}"))
    page.get_by_test_id("lineage").get_by_text("Saved as complete models (1)").wait_for()
    page.get_by_role("button", name="Delete").click()
    confirm = page.get_by_test_id("confirm")
    confirm.get_by_text("Complete models saved from it stay and still load").wait_for()
    assert "live models deployed from it stay" in confirm.inner_text()
    confirm.get_by_role("button", name="Delete").click()
    page.wait_for_url(re.compile(r".*/console/customized-models$"))
    page.get_by_text("No customized models yet").wait_for()
    screenshot(page, "customized-models-empty")
    check_narrow(page, "customized-models-empty")
    page.goto(complete_url)
    assert page.get_by_test_id("complete-status").inner_text() == "ready"
    page.get_by_text("(no longer here)").wait_for()


@pytest.mark.slow
def test_deploy_base_to_managed_llamacpp(
    signed_in, console_server, admin_password, tiny_model_dir, stop_servers
):
    from playwright.sync_api import expect

    page = signed_in
    headers = api_headers(console_server, admin_password)
    base_id = register_tiny(console_server, headers, tiny_model_dir)
    created = httpx.post(
        f"{console_server.url}/api/v1/deploy-environments",
        json={"name": "local", "kind": "llama.cpp"},
        headers=headers,
    )
    assert created.status_code == 201, created.text

    page.goto(console_url(console_server, f"/base-models/{base_id}"))
    page.get_by_role("button", name="Deploy", exact=True).click()
    dialog = page.get_by_test_id("deploy-dialog")
    dialog.get_by_text("local (llama.cpp, managed here)").wait_for()
    choose(page, "deploy-quantization", "q8_0: 8-bit, about half the size, nearly lossless")
    dialog.get_by_label("Serving parameters, JSON (optional)").fill("{not json")
    dialog.get_by_role("button", name="Deploy").click()
    dialog.get_by_text("Write a JSON object").wait_for()
    dialog.get_by_label("Serving parameters, JSON (optional)").fill('{"temperature": 0.2}')
    screenshot(page, "deploy-dialog")
    dialog.get_by_role("button", name="Deploy").click()
    page.wait_for_url(LIVE_PAGE)
    live_url = page.url
    screenshot(page, "live-model-deploying")
    expect(page.get_by_test_id("live-status")).to_have_text("live", timeout=JOB_TIMEOUT_MS)
    assert page.get_by_test_id("live-endpoint").inner_text().startswith("http://127.0.0.1:")
    assert page.get_by_test_id("live-model-id").inner_text()
    chat = page.get_by_test_id("live-chat")
    assert "/deeptext?model=live:" in chat.get_attribute("href")

    page.get_by_role("button", name="Check health").click()
    expect(page.get_by_test_id("live-check-result")).to_contain_text("Healthy (live)")

    page.get_by_role("button", name="Register as third-party model").click()
    page.get_by_role("dialog").get_by_role("button", name="Register").click()
    page.get_by_test_id("registered-link").wait_for()
    screenshot(page, "live-model")
    check_narrow(page, "live-model")

    page.get_by_test_id("registered-link").click()
    page.get_by_test_id("shown-entry").get_by_role("link", name="its live model").wait_for()

    page.goto(console_url(console_server, "/live-models"))
    table = page.get_by_test_id("live-table")
    table.get_by_text("local").wait_for()
    choose(page, "live-status-filter", "failed")
    table.get_by_text("No live models here").wait_for()
    choose(page, "live-status-filter", "live")
    table.get_by_role("cell", name="q8_0", exact=True).wait_for()
    screenshot(page, "live-models")
    check_narrow(page, "live-models")

    page.goto(live_url)
    page.get_by_role("button", name="Delete").click()
    confirm = page.get_by_test_id("confirm")
    confirm.get_by_text("third-party model entries registered from it stay").wait_for()
    confirm.get_by_role("button", name="Delete").click()
    page.wait_for_url(re.compile(r".*/console/live-models$"))
    page.get_by_text("No live models here").wait_for()
    page.goto(console_url(console_server, "/third-party-models"))
    page.get_by_test_id("third-party-table").get_by_text("q8_0").first.wait_for()


def test_a_live_models_page_shows_its_fidelity_figure(signed_in, console_server):
    from tests.helpers import finished_fidelity_check, live_model_row

    page = signed_in
    live = live_model_row(quantization="q4_K_M")
    page.goto(console_url(console_server, f"/live-models/{live}"))
    assert page.get_by_test_id("live-fidelity").inner_text() == "not checked"
    check = finished_fidelity_check({live: [True, True, False, True]})
    page.reload()
    figure = page.get_by_test_id("live-fidelity")
    assert figure.inner_text() == "q4_K_M agrees with its source on 3 of 4 prompts"
    assert figure.get_attribute("href").endswith(f"/assessments/{check}")
