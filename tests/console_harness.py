"""Driving the web console in a real browser: Debian's chromium under Playwright.

`tuneyard serve` runs as a child process on the test's own data dir and database (the
environment the data_dir fixture set), so the console is exercised exactly as users run it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
from playwright.sync_api import TimeoutError as PlaywrightTimeout

CHROMIUM = os.environ.get("TUNEYARD_TEST_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(os.environ.get("TUNEYARD_TEST_ARTIFACTS", "test-artifacts")) / "console"
# The flags a sandboxed, offline machine needs: no background calls to Google's hosts.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]
WIDE = {"width": 1280, "height": 800}
NARROW = {"width": 390, "height": 844}
START_TIMEOUT_S = 60.0


class ConsoleServer:
    """`tuneyard serve` (API, console and job worker) on a free port."""

    def __init__(self, port: int, log_path: Path):
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = log_path
        tuneyard = shutil.which("tuneyard", path=str(Path(sys.executable).parent))
        # The tests' job kinds (TUNEYARD_PLUGINS=tests.jobkinds) import from the checkout.
        root = str(Path(__file__).resolve().parent.parent)
        python_path = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
        self.process = subprocess.Popen(
            [tuneyard, "serve", "--host", "127.0.0.1", "--port", str(port)],
            stdout=log_path.open("wb"),
            stderr=subprocess.STDOUT,
            env={**os.environ, "GOMP_SPINCOUNT": "10000", "PYTHONPATH": python_path},
        )

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"tuneyard serve exited:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/console/login", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"tuneyard serve did not answer in {START_TIMEOUT_S} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def console_url(server: ConsoleServer, path: str = "/") -> str:
    return f"{server.url}/console{path}"


def api_headers(server: ConsoleServer, password: str, username: str = "admin") -> dict[str, str]:
    """Bearer headers for the API of the same server (to set up data a test is not about)."""
    response = httpx.post(
        f"{server.url}/api/v1/auth/login",
        json={"project_code": "1001", "username": username, "password": password},
    )
    response.raise_for_status()
    return {"Authorization": f"Bearer {response.json()['token']}"}


def jobs_said(server: ConsoleServer, password: str, kind: str) -> str:
    """The jobs of `kind` as the API shows them (status, message, error): what a console test
    says when a job it waits for on a page does not end as it should."""
    response = httpx.get(
        f"{server.url}/api/v1/jobs",
        params={"kind": kind},
        headers=api_headers(server, password),
    )
    response.raise_for_status()
    jobs = [
        f"{job['status']}: {job['message']!r} {job.get('error') or ''}".strip()
        for job in response.json()["items"]
    ]
    return f"{kind} jobs: {'; '.join(jobs) or 'none'}"


def log_in(page, server: ConsoleServer, password: str, username: str = "admin") -> None:
    page.goto(console_url(server, "/login"))
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(re.compile(r".*/console/$"))
    page.get_by_test_id("page-title").wait_for()


def screenshot(page, name: str) -> Path:
    """Keep a full-page screenshot as a test artifact (test-artifacts/console/NAME.png).

    It scrolls back up first: the header is fixed, so a shot taken scrolled down shows it
    across the middle of the page.
    """
    page.evaluate("window.scrollTo(0, 0)")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def no_horizontal_scroll(page, timeout_ms: float = 3000) -> bool:
    """True when the page fits its window's width (reads well on a narrow window), once the
    layout has settled after a resize (the drawer slides, the grid reflows)."""
    try:
        page.wait_for_function(
            "document.documentElement.scrollWidth <= document.documentElement.clientWidth + 1",
            timeout=timeout_ms,
        )
    except PlaywrightTimeout:
        return False
    return True


# Resolves once the page's content stops moving: no CSS transition or animation running (a
# spinner's never ends, so at most about a second) and the same content box two frames running.
_SETTLED = """async () => {
    let last = null;
    for (let frame = 0; frame < 60; frame++) {
        await new Promise((resolve) => requestAnimationFrame(resolve));
        const box = document.querySelector('.q-page-container')?.getBoundingClientRect();
        const now = box ? `${box.left},${box.width}` : '';
        const moving = document.getAnimations()
            .some((a) => a.effect?.getTiming().iterations !== Infinity);
        if (now === last && !moving) return;
        last = now;
    }
}"""


def resize(page, size: dict) -> None:
    """A new window size, once the layout has settled (the drawer slides in or out): a click
    right after a resize could land where a moving button was."""
    page.set_viewport_size(size)
    page.evaluate(_SETTLED)


def check_narrow(page, name: str) -> None:
    """The page as it is fits a phone-sized window: a screenshot NAME-narrow (from the top),
    then back to 1280x800."""
    resize(page, NARROW)
    screenshot(page, f"{name}-narrow")
    assert no_horizontal_scroll(page), f"{name} scrolls sideways at 390 px"
    resize(page, WIDE)


def follow(page, target, url: re.Pattern, timeout_ms: float = 60_000) -> None:
    """Click `target` (a link or a button that navigates) and wait for the page at `url`.

    The wait is longer than an element's: on a loaded machine the new page's first build can
    take a while. When it does not come, the error says where the browser is instead and
    whether the page it was on reloaded meanwhile (its click then went to a page being replaced).
    """
    page.evaluate("window.__beforeFollow = true")
    target.click()
    try:
        page.wait_for_url(url, timeout=timeout_ms)
    except PlaywrightTimeout:
        reloaded = not page.evaluate("window.__beforeFollow === true")
        raise AssertionError(
            f"no page at {url.pattern} {timeout_ms / 1000:.0f} s after the click: the browser is "
            f"at {page.url}" + (", a page that reloaded after the click" if reloaded else "")
        ) from None


def choose(page, testid: str, option: str) -> None:
    """Pick the option named exactly `option` in the select with data-testid `testid`."""
    page.get_by_test_id(testid).click()
    page.get_by_role("option", name=option, exact=True).click()
    page.locator(".q-menu").wait_for(state="detached")  # closed before the next one opens


def echart_series(page, testid: str) -> list[dict]:
    """The series an echart on the page draws: [{"name", "points"}], read from the chart."""
    return page.evaluate(
        """(testid) => {
            const element = document.querySelector(`[data-testid="${testid}"]`);
            const chart = getElement(element).chart;
            return chart.getOption().series.map(s => ({name: s.name, points: s.data.length}));
        }""",
        testid,
    )


def write_jsonl(path, records: list[dict]) -> str:
    path.write_text("\n".join(json.dumps(record) for record in records) + "\n")
    return str(path)


def upload_dataset(page, name: str, file_path: str) -> None:
    """Fill the upload form, send the file and press Create dataset."""
    page.get_by_label("Name", exact=True).fill(name)
    page.locator("input[type=file]").set_input_files(file_path)
    page.get_by_text("is uploaded; press Create dataset").wait_for()
    page.get_by_role("button", name="Create dataset").click()
