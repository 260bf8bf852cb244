"""The console's frame in a real browser: signing in and out, the dashboard, and every page
of the navigation read well at 1280x800 and on a phone-sized window."""

from __future__ import annotations

import re
import socket

import httpx
import pytest

from tests.console_harness import (
    NARROW,
    WIDE,
    api_headers,
    console_url,
    log_in,
    no_horizontal_scroll,
    screenshot,
)
from tuneyard.console.shell import NAV, TRAINING_TABS

pytestmark = pytest.mark.console


class TestSignIn:
    def test_wrong_password_then_in_and_out(self, page, console_server, admin_password, data_dir):
        page.goto(console_url(console_server, "/datasets"))
        # Signed out: any page leads to the login page, which shows no path of the server.
        page.wait_for_url(re.compile(r".*/console/login$"))
        page.get_by_text("First start: the server printed user admin's password").wait_for()
        assert str(data_dir) not in page.content()
        page.get_by_label("Username").fill("admin")
        page.get_by_label("Password").fill("not-the-password")
        page.get_by_role("button", name="Log in").click()
        page.get_by_text("Wrong project code, username or password.").wait_for()
        screenshot(page, "login")

        log_in(page, console_server, admin_password)
        page.get_by_text("admin · admin · project 1001").wait_for()
        page.get_by_role("button", name="Log out").click()
        page.wait_for_url(re.compile(r".*/console/login$"))
        page.goto(console_url(console_server, "/"))
        page.wait_for_url(re.compile(r".*/console/login$"))

    def test_the_root_opens_the_console(self, console_server):
        response = httpx.get(console_server.url + "/", follow_redirects=False)
        assert response.status_code == 307
        assert response.headers["location"] == "/console/"


class TestDashboard:
    def test_counts_and_next_steps(self, signed_in, console_server, admin_password, tiny_model_dir):
        page = signed_in
        page.get_by_text("Register a base model").wait_for()
        assert page.get_by_test_id("count-base_models").inner_text().startswith("0")
        created = httpx.post(
            f"{console_server.url}/api/v1/base-models",
            json={"technical_name": "tiny", "path": str(tiny_model_dir)},
            headers=api_headers(console_server, admin_password),
        )
        assert created.status_code == 201, created.text
        page.reload()
        assert page.get_by_test_id("count-base_models").inner_text().startswith("1")
        # The server's own worker, on this host, running nothing.
        workers = page.get_by_test_id("workers")
        workers.get_by_text("Workers (1 alive)").wait_for()
        assert socket.gethostname() in workers.inner_text() and "idle" in workers.inner_text()
        # The base model now shows in the usage chart, and the next step is the dataset.
        page.get_by_test_id("usage-chart").wait_for()
        assert page.get_by_text("Register a base model").count() == 0
        page.get_by_text("Upload a dataset").wait_for()
        page.get_by_test_id("count-base_models").click()
        page.wait_for_url(re.compile(r".*/console/base-models$"))


PAGES = [(item.label, item.path) for item in NAV] + [
    (f"Training {label}", path) for label, path in TRAINING_TABS[1:]
]


class TestEveryPage:
    def test_each_page_wide_and_narrow(self, signed_in, console_server):
        """Every page of the navigation opens on an empty project, says what to do first,
        and fits a 390 px window; a screenshot of each is kept."""
        page = signed_in
        for label, path in PAGES:
            name = re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")
            for size, suffix in ((WIDE, "wide"), (NARROW, "narrow")):
                page.set_viewport_size(size)
                page.goto(console_url(console_server, path))
                page.get_by_test_id("page-title").wait_for()
                page.wait_for_load_state("networkidle")
                assert no_horizontal_scroll(page), f"{label} scrolls sideways at {size}"
                screenshot(page, f"page-{name}-{suffix}")
            # The navigation is a menu on a narrow window, opened with the header's button.
            page.get_by_role("button", name="Menu").click()
            page.get_by_role("link", name="Dashboard").first.wait_for()


class TestDownloads:
    def test_adapter_archive_for_the_signed_in_browser_only(
        self, signed_in, console_server, admin_password, tiny_model_dir, made_adapter_dir
    ):
        import io
        import tarfile

        from tests.helpers import make_customized

        created = httpx.post(
            f"{console_server.url}/api/v1/base-models",
            json={"technical_name": "tiny", "path": str(tiny_model_dir)},
            headers=api_headers(console_server, admin_password),
        )
        made = make_customized(created.json()["id"], made_adapter_dir)
        url = console_url(console_server, f"/download/customized-models/{made['id']}")

        # The browser's own session (its cookie) is enough: a link works.
        response = signed_in.request.get(url)
        assert response.status == 200
        assert made["name"] in response.headers["content-disposition"]
        with tarfile.open(fileobj=io.BytesIO(response.body())) as archive:
            names = archive.getnames()
        assert f"{made['name']}/adapter_model.safetensors" in names

        # Not signed in: the login page; an unknown model or format: the service's words.
        outsider = httpx.get(url, follow_redirects=False)
        assert outsider.status_code == 307
        assert outsider.headers["location"] == "/console/login"
        unknown = signed_in.request.get(url.replace(made["id"], "nope"))
        assert unknown.status == 404 and "nope" in unknown.text()
        zipped = signed_in.request.get(url + "?format=zip")
        assert zipped.status == 422 and "tar.gz" in zipped.text()


class TestTrainingFreeMode:
    @pytest.fixture
    def training_free(self, monkeypatch):
        monkeypatch.setenv("TUNEYARD_TRAINING_ENABLED", "false")

    def test_training_pages_say_why_nothing_trains(
        self, training_free, signed_in, console_server, admin_password, tiny_model_dir
    ):
        created = httpx.post(
            f"{console_server.url}/api/v1/base-models",
            json={"technical_name": "tiny", "path": str(tiny_model_dir)},
            headers=api_headers(console_server, admin_password),
        )
        assert created.status_code == 201, created.text
        page = signed_in
        page.goto(console_url(console_server, "/trainings"))
        reason = "Training is disabled (training-free mode). Set TUNEYARD_TRAINING_ENABLED=true"
        page.get_by_test_id("cannot").get_by_text(reason).wait_for()
        assert page.get_by_test_id("new-training").is_disabled()
        screenshot(page, "training-free-mode")
