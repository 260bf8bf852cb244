"""DeepText (chat, sessions, side by side, grounded in a knowledge base) and Users (users, API
tokens) in a real browser."""

from __future__ import annotations

import re
import time

import httpx
import pytest
from playwright.sync_api import expect

from tests.console_harness import (
    NARROW,
    WIDE,
    api_headers,
    check_narrow,
    choose,
    console_url,
    log_in,
    no_horizontal_scroll,
    resize,
    screenshot,
)
from tests.openai_double import OpenAIDouble

pytestmark = pytest.mark.console

# The first answer starts the inference process: loading torch and the model takes a while.
ANSWER_TIMEOUT_MS = 120_000
GUIDE = """# Greenhouse guide

## Watering

Tomatoes want deep watering twice a week; shallow daily sprinkles keep their roots lazy.

## Pruning

Pinch the side shoots of cordon tomatoes every week, before they grow longer than a thumb.
"""


def register_base(server, headers: dict[str, str], name: str, folder) -> str:
    response = httpx.post(
        f"{server.url}/api/v1/base-models",
        json={"technical_name": name, "path": str(folder)},
        headers=headers,
        timeout=60,
    )
    assert response.status_code == 201, response.text
    return response.json()["id"]


def wait_for_answer(page, testid: str) -> str:
    """Wait for the stats line that shows once the answer is done; the answer's text."""
    stats = page.get_by_test_id(f"{testid}-stats").last
    stats.wait_for(state="visible", timeout=ANSWER_TIMEOUT_MS)
    assert "tokens/s" in stats.inner_text()
    assert "first token" in stats.inner_text()
    text = page.get_by_test_id(f"{testid}-text").last.text_content()
    assert text  # random tiny weights: any tokens, even only spaces
    return text


@pytest.mark.slow
def test_chat_streams_and_keeps_the_session(
    signed_in, console_server, admin_password, tiny_model_dir
):
    page = signed_in
    headers = api_headers(console_server, admin_password)
    base_id = register_base(console_server, headers, "tiny", tiny_model_dir)

    page.goto(console_url(console_server, "/deeptext"))
    # No knowledge base yet: where one is made, instead of an empty picker.
    hint = page.get_by_test_id("knowledge-hint")
    hint.get_by_role("link", name="create a knowledge base", exact=True).wait_for()
    assert page.get_by_test_id("knowledge-bases").count() == 0
    choose(page, "model-picker", "Base: tiny")

    # A parameter out of ChatParams' range is marked as typed, and nothing is sent.
    page.get_by_test_id("params").click()
    temperature = page.get_by_label("Temperature")
    temperature.fill("5")
    page.get_by_text("Temperature must be between 0 and 2").wait_for()
    page.get_by_test_id("prompt").fill("Hello there")
    page.get_by_test_id("send").click()
    page.get_by_text("Fix the parameters marked in red first.").wait_for()
    assert page.get_by_test_id("user-message").count() == 0
    screenshot(page, "deeptext-bad-parameter")
    temperature.fill("1")
    page.get_by_label("Seed").fill("7")
    page.get_by_label("Max tokens").fill("24")
    page.get_by_test_id("params").locator(".q-expansion-item__container > .q-item").click()

    # Enter sends; the answer streams into the assistant's bubble, then its stats show.
    page.get_by_test_id("prompt").press("Enter")
    page.get_by_test_id("user-message").get_by_text("Hello there").wait_for()
    first = wait_for_answer(page, "answer")
    page.get_by_test_id("session-item").get_by_text("Hello there").wait_for()
    assert page.get_by_test_id("chat-title").inner_text() == "Hello there"
    page.wait_for_url(re.compile(r".*/console/deeptext\?session=.+"))
    screenshot(page, "deeptext-chat")

    # The same chat, reopened from the list: its messages, and it continues with its history.
    page.goto(console_url(console_server, f"/deeptext?model=base:{base_id}"))
    page.get_by_test_id("session-item").first.click()
    page.wait_for_url(re.compile(r".*/deeptext\?session=.+"))
    page.get_by_test_id("user-message").get_by_text("Hello there").wait_for()
    assert page.get_by_test_id("answer-text").text_content() == first
    page.get_by_test_id("prompt").fill("And again")
    page.get_by_test_id("send").click()
    wait_for_answer(page, "answer")
    assert page.get_by_test_id("user-message").count() == 2
    assert page.get_by_test_id("session-item").count() == 1

    # A long answer can be stopped midway; what arrived stays in the chat.
    session_id = page.url.split("session=")[1]
    page.get_by_test_id("params").click()
    page.get_by_test_id("params").get_by_label("Max tokens").fill("400")
    page.get_by_test_id("prompt").fill("Tell me a long story")
    page.get_by_test_id("send").click()
    expect(page.get_by_test_id("answer-text").nth(2)).not_to_have_text("")
    page.get_by_test_id("stop").click()
    expect(page.get_by_test_id("answer-stats").last).to_have_text("stopped")
    expect(page.get_by_test_id("send")).to_be_enabled()
    expect(page.get_by_test_id("stop")).to_be_hidden()
    deadline = time.monotonic() + 30
    while True:
        stored = httpx.get(
            f"{console_server.url}/api/v1/chat/sessions/{session_id}", headers=headers
        ).json()["messages"]
        if len(stored) == 6 or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert stored[-1]["usage"] == {"finish_reason": "stopped"}
    assert stored[-1]["content"]

    # Rename, then delete (after a confirmation that says what is kept).
    page.get_by_test_id("rename-chat").click()
    page.get_by_test_id("rename-title").fill("Greetings")
    page.get_by_role("button", name="Save").click()
    page.get_by_test_id("session-item").get_by_text("Greetings").wait_for()
    page.get_by_test_id("chat-title").get_by_text("Greetings").wait_for()

    check_narrow(page, "deeptext-chat")

    page.get_by_test_id("delete-chat").click()
    page.get_by_test_id("confirm").get_by_text("your other chats are kept").wait_for()
    page.get_by_test_id("confirm").get_by_role("button", name="Delete").click()
    page.get_by_text("No chats yet").wait_for()
    sessions = httpx.get(f"{console_server.url}/api/v1/chat/sessions", headers=headers).json()
    assert sessions["total"] == 0


@pytest.mark.slow
def test_side_by_side_streams_two_answers(
    signed_in, console_server, admin_password, tiny_model_dir
):
    page = signed_in
    headers = api_headers(console_server, admin_password)
    register_base(console_server, headers, "tiny", tiny_model_dir)
    register_base(console_server, headers, "tiny-two", tiny_model_dir)

    page.goto(console_url(console_server, "/deeptext"))
    page.get_by_test_id("mode-side-by-side").click()
    page.wait_for_url(re.compile(r".*/deeptext/compare$"))
    choose(page, "compare-model-0", "Base: tiny")
    choose(page, "compare-model-1", "Base: tiny-two")
    page.get_by_test_id("params").click()
    page.get_by_test_id("params").get_by_label("Max tokens").fill("16")
    # The second column's own parameters override the shared ones.
    page.get_by_test_id("own-params-1").click()
    page.get_by_test_id("own-params-box-1").get_by_label("Max tokens").fill("6")
    page.get_by_test_id("prompt").fill("Say something nice.")
    page.get_by_test_id("send").click()

    first = wait_for_answer(page, "answer-0")
    second = wait_for_answer(page, "answer-1")
    assert first and second
    stats = page.get_by_test_id("answer-1-stats").inner_text()
    assert int(re.search(r"· (\d+) tokens ·", stats).group(1)) <= 6, stats
    assert page.get_by_test_id("column-0").get_by_text("Base: tiny", exact=True).is_visible()
    assert page.get_by_test_id("column-1").get_by_text("Base: tiny-two").is_visible()
    screenshot(page, "deeptext-compare")

    # The answers stay on the page: the navigation is closed first, as on a phone. An answer
    # with a long run of characters and no space (models write such) wraps inside its column.
    page.get_by_role("button", name="Menu").click()
    page.get_by_test_id("answer-0-text").evaluate("node => { node.textContent += 'x'.repeat(300) }")
    resize(page, NARROW)
    assert no_horizontal_scroll(page)
    screenshot(page, "deeptext-compare-narrow")
    resize(page, WIDE)
    # Each answer is a chat of its own that can be continued.
    page.get_by_test_id("column-1").get_by_text("Continue as a chat").click()
    page.wait_for_url(re.compile(r".*/deeptext\?session=.+"))
    page.get_by_test_id("user-message").get_by_text("Say something nice.").wait_for()
    sessions = httpx.get(f"{console_server.url}/api/v1/chat/sessions", headers=headers).json()
    assert sessions["total"] == 2


def grounded_knowledge_base(server, headers: dict[str, str], principal) -> str:
    """A knowledge base "garden" on the demo embedding model, holding the greenhouse guide
    ingested by the server's worker; the guide's document id."""
    from tuneyard.basemodels.service import add_demo_embedding
    from tuneyard.db import session_scope

    with session_scope() as session:
        embedding = f"base:{add_demo_embedding(session, principal).id}"
    api = f"{server.url}/api/v1/knowledge-bases"
    created = httpx.post(
        api,
        json={
            "name": "garden",
            "embedding_model": embedding,
            "chunking": {"splitter": "markdown", "size": 64, "overlap": 8},
        },
        headers=headers,
        timeout=60,
    )
    assert created.status_code == 201, created.text
    accepted = httpx.post(
        f"{api}/garden/documents",
        files={"file": ("greenhouse.md", GUIDE.encode())},
        headers=headers,
        timeout=60,
    )
    assert accepted.status_code == 202, accepted.text
    document = f"{api}/garden/documents/{accepted.json()['id']}"
    deadline = time.monotonic() + ANSWER_TIMEOUT_MS / 1000
    status = "queued"
    while status not in ("ready", "failed") and time.monotonic() < deadline:
        time.sleep(0.5)
        status = httpx.get(document, headers=headers).json()["status"]
    assert status == "ready", httpx.get(document, headers=headers).text
    return accepted.json()["id"]


@pytest.mark.slow
def test_a_chat_grounded_in_a_knowledge_base_shows_its_sources(
    signed_in, console_server, admin_password, principal
):
    page = signed_in
    headers = api_headers(console_server, admin_password)
    document_id = grounded_knowledge_base(console_server, headers, principal)

    def script(messages):
        sources = messages[0]["content"] if messages[0]["role"] == "system" else ""
        return "Pinch them every week [1]." if "Sources:" in sources else "I do not know."

    with OpenAIDouble(script) as double:
        entry = httpx.post(
            f"{console_server.url}/api/v1/third-party-models",
            json={
                "name": "helper",
                "provider": "openai-compatible",
                "model_name": "scripted",
                "base_url": double.url,
            },
            headers=headers,
        )
        assert entry.status_code == 201, entry.text

        page.goto(console_url(console_server, "/deeptext"))
        choose(page, "model-picker", "Third-party: helper")
        page.get_by_test_id("knowledge-bases").click()
        page.get_by_role("option", name="garden", exact=True).click()
        page.keyboard.press("Escape")
        page.get_by_test_id("knowledge-top-k").fill("2")
        page.get_by_test_id("prompt").fill("When do I pinch the side shoots?")
        page.get_by_test_id("send").click()
        assert wait_for_answer(page, "answer") == "Pinch them every week [1]."
        assert "Pinch the side shoots" in double.requests[-1]["messages"][0]["content"]

        # The answer's sources: the one it cites marked, the other retrieved one dimmed.
        sources = page.get_by_test_id("sources")
        cited = sources.get_by_test_id("source-1")
        expect(cited).to_have_text(re.compile(r"\[1\] greenhouse\.md, text"))
        expect(cited).to_have_attribute("data-cited", "true")
        expect(sources.get_by_test_id("source-2")).to_have_attribute("data-cited", "false")
        screenshot(page, "deeptext-grounded")
        cited.click()
        dialog = page.get_by_test_id("document-dialog")
        highlight = dialog.get_by_test_id("passage-highlight")
        expect(highlight).to_contain_text("Pinch the side shoots")
        assert "Tomatoes want deep watering" in dialog.inner_text()
        screenshot(page, "deeptext-grounded-source")
        page.keyboard.press("Escape")
        dialog.wait_for(state="hidden")

        # The stored chat shows the sources of its past answer.
        page.wait_for_url(re.compile(r".*/deeptext\?session=.+"))
        kept_chat = page.url
        page.reload()
        expect(page.get_by_test_id("sources").get_by_test_id("source-1")).to_have_attribute(
            "data-cited", "true"
        )

        # Side by side, every column's answer is grounded and shows its sources.
        page.goto(console_url(console_server, "/deeptext/compare"))
        choose(page, "compare-model-0", "Third-party: helper")
        choose(page, "compare-model-1", "Third-party: helper")
        page.get_by_test_id("knowledge-bases").click()
        page.get_by_role("option", name="garden", exact=True).click()
        page.keyboard.press("Escape")
        page.get_by_test_id("prompt").fill("When do I pinch the side shoots?")
        page.get_by_test_id("send").click()
        for index in (0, 1):
            column = page.get_by_test_id(f"column-{index}")
            expect(column.get_by_test_id("source-1")).to_have_attribute(
                "data-cited", "true", timeout=ANSWER_TIMEOUT_MS
            )

    # Its document deleted, a kept answer's source still opens: the passage as it was cited.
    deleted = httpx.delete(
        f"{console_server.url}/api/v1/knowledge-bases/garden/documents/{document_id}",
        headers=headers,
    )
    assert deleted.status_code == 204, deleted.text
    page.goto(kept_chat)
    page.get_by_test_id("sources").get_by_test_id("source-1").click()
    dialog = page.get_by_test_id("document-dialog")
    expect(dialog.get_by_test_id("document-missing")).to_contain_text("cannot be shown")
    expect(dialog.get_by_test_id("passage-highlight")).to_contain_text("Pinch the side shoots")


def test_users_and_tokens(signed_in, console_server, admin_password):
    page = signed_in
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    page.goto(console_url(console_server, "/users"))
    page.get_by_text("No API tokens yet").wait_for()

    # A token: its secret shows once, with a copy button; then it is revoked.
    page.get_by_test_id("token-name").fill("ci script")
    page.get_by_test_id("token-days").fill("30")
    page.get_by_test_id("create-token").click()
    secret = page.get_by_test_id("token-secret")
    secret.wait_for()
    token = secret.input_value()
    assert token.startswith("ty_")
    page.get_by_test_id("copy-token").click()
    page.get_by_text("Copied to the clipboard").wait_for()
    screenshot(page, "users-token-secret")
    me = httpx.get(
        f"{console_server.url}/api/v1/auth/me", headers={"Authorization": f"Bearer {token}"}
    )
    assert me.status_code == 200 and me.json()["username"] == "admin"
    page.get_by_test_id("close-token").click()
    page.get_by_test_id("token-secret").wait_for(state="detached")
    tokens = page.get_by_test_id("tokens")
    tokens.get_by_text("ci script").wait_for()
    assert token[:10] in tokens.inner_text() and token not in page.content()

    page.get_by_test_id("revoke-ci script").click()
    page.get_by_test_id("confirm").get_by_role("button", name="Revoke").click()
    tokens.get_by_text("revoked", exact=True).wait_for()
    assert page.get_by_test_id("revoke-ci script").count() == 0
    gone = httpx.get(
        f"{console_server.url}/api/v1/auth/me", headers={"Authorization": f"Bearer {token}"}
    )
    assert gone.status_code == 401

    # A user: the username is checked as typed; the service's refusal is shown.
    users = page.get_by_test_id("users")
    username = page.get_by_test_id("new-username")
    username.fill("bad name!")
    page.get_by_test_id("add-user").click()
    page.get_by_text("1-64 letters, digits, '.', '_' or '-'").wait_for()
    username.fill("mia")
    page.get_by_test_id("new-password").fill("long-enough-pw")
    choose(page, "new-role", "member: creates, trains, deploys and chats")
    page.get_by_test_id("add-user").click()
    users.get_by_text("mia", exact=True).wait_for()
    username.fill("mia")
    page.get_by_test_id("new-password").fill("long-enough-pw")
    page.get_by_test_id("add-user").click()
    page.get_by_text("User 'mia' already exists in project 1001.").wait_for()
    assert users.get_by_test_id("delete-user-admin").count() == 0  # not yourself
    screenshot(page, "users")

    check_narrow(page, "users")

    # An admin sets mia's password; she logs in with it.
    page.get_by_test_id("reset-password-mia").click()
    page.get_by_test_id("reset-password").fill("short")
    page.get_by_test_id("reset-password-button").click()
    page.get_by_text("At least 8 characters").wait_for()
    page.get_by_test_id("reset-password").fill("mias-new-password")
    page.get_by_test_id("reset-password-button").click()
    page.get_by_text("Password of mia changed").wait_for()
    api_headers(console_server, "mias-new-password", username="mia")

    page.get_by_test_id("delete-user-mia").click()
    page.get_by_test_id("confirm").get_by_text("are kept in the project").wait_for()
    page.get_by_test_id("confirm").get_by_role("button", name="Delete").click()
    page.get_by_text("User mia deleted").wait_for()
    users.get_by_text("mia", exact=True).wait_for(state="detached")

    # Your own password: the current one is checked; this browser stays signed in.
    page.get_by_test_id("current-password").fill("not-the-password")
    page.get_by_test_id("change-password").fill("admins-new-password")
    page.get_by_test_id("change-password-again").fill("admins-new-password")
    page.get_by_test_id("change-password-button").click()
    page.get_by_text("The current password is wrong; type the one you log in with.").wait_for()
    page.get_by_test_id("current-password").fill(admin_password)
    page.get_by_test_id("change-password-button").click()
    page.get_by_text("Password changed; your other sessions have ended.").wait_for()
    api_headers(console_server, "admins-new-password")
    page.reload()
    page.get_by_test_id("password").wait_for()


def test_guidance_without_models_and_for_members(page, console_server, admin_password):
    headers = api_headers(console_server, admin_password)
    response = httpx.post(
        f"{console_server.url}/api/v1/users",
        json={"username": "sam", "password": "sam-password", "role": "member"},
        headers=headers,
    )
    assert response.status_code == 201, response.text
    log_in(page, console_server, "sam-password", username="sam")

    page.goto(console_url(console_server, "/deeptext"))
    guidance = page.get_by_test_id("needs")
    guidance.get_by_text("Chat needs a base model first.").wait_for()
    assert guidance.get_by_role("link", name="Add a base model").is_visible()
    assert page.get_by_role("link", name="Third-party Models").last.is_visible()
    screenshot(page, "deeptext-no-models")
    page.goto(console_url(console_server, "/deeptext/compare"))
    page.get_by_test_id("needs").wait_for()

    page.goto(console_url(console_server, "/users"))
    page.get_by_test_id("cannot").get_by_text("Only admins add or delete users").wait_for()
    assert page.get_by_test_id("add-user").count() == 0
    assert page.get_by_test_id("users").get_by_text("admin", exact=True).first.is_visible()
    screenshot(page, "users-member")
    resize(page, NARROW)
    assert no_horizontal_scroll(page)
