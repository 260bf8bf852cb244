"""The console's Assessment page in a real browser: a new assessment with its preview, the run's
progress, the summary's win-rate bars, rows filtered by verdict, another run beside it, and the
download."""

from __future__ import annotations

import csv
import io
import json
import re
import time

import httpx
import pytest

from tests.console_harness import api_headers, check_narrow, choose, console_url, screenshot
from tests.helpers import SUMS, number, scripted_pairwise
from tests.openai_double import OpenAIDouble, last_user

pytestmark = pytest.mark.console

JOB_TIMEOUT_MS = 120_000
DETAIL_PAGE = re.compile(r".*/console/assessments/[0-9a-f-]{36}$")
JUDGE_PROMPT = "Question: {{Question}}\n[A] {{ResponseA}}\n[B] {{ResponseB}}"


def setup(server, headers, doubles: dict[str, OpenAIDouble]) -> None:
    """The dataset, parsed, and a third-party model on each double."""
    body = "\n".join(json.dumps(record) for record in SUMS).encode()
    response = httpx.post(
        f"{server.url}/api/v1/datasets",
        data={"name": "qa"},
        files={"file": ("qa.jsonl", body)},
        headers=headers,
    )
    assert response.status_code == 202, response.text
    deadline = time.monotonic() + 60
    while (
        httpx.get(f"{server.url}/api/v1/datasets/{response.json()['id']}", headers=headers).json()[
            "status"
        ]
        != "ready"
    ):
        assert time.monotonic() < deadline, "the dataset did not parse"
        time.sleep(0.2)
    for name, double in doubles.items():
        added = httpx.post(
            f"{server.url}/api/v1/third-party-models",
            json={
                "name": name,
                "provider": "openai-compatible",
                "model_name": double.model,
                "base_url": double.url,
            },
            headers=headers,
        )
        assert added.status_code == 201, added.text


def second_run(server, headers) -> None:
    """Assessment ab2: the first 4 records, the same models and judge; waits for it."""
    response = httpx.post(
        f"{server.url}/api/v1/assessments",
        json={
            "name": "ab2",
            "dataset_id": "qa",
            "sample": {"size": 4},
            "candidates": [
                {"model": "alpha", "prompt": "{{prompt}}"},
                {"model": "beta", "prompt": "{{prompt}}"},
            ],
            "judge": {"model": "judge", "kind": "pairwise", "prompt": JUDGE_PROMPT},
        },
        headers=headers,
    )
    assert response.status_code == 202, response.text
    url = f"{server.url}/api/v1/assessments/{response.json()['id']}"
    deadline = time.monotonic() + JOB_TIMEOUT_MS / 1000
    while (status := httpx.get(url, headers=headers).json()["status"]) != "succeeded":
        assert status in ("queued", "running") and time.monotonic() < deadline, status
        time.sleep(0.2)


def test_new_assessment_preview_run_summary_rows_and_download(
    signed_in, console_server, admin_password
):
    page = signed_in
    headers = api_headers(console_server, admin_password)
    with (
        OpenAIDouble(lambda m: f"alpha {number(last_user(m))}") as alpha,
        OpenAIDouble(lambda m: f"beta {number(last_user(m))}") as beta,
        OpenAIDouble(scripted_pairwise) as judge,
    ):
        setup(console_server, headers, {"alpha": alpha, "beta": beta, "judge": judge})
        page.goto(console_url(console_server, "/assessments"))
        page.get_by_text("No assessments yet").wait_for()
        page.get_by_test_id("assessment-name").fill("ab")
        page.get_by_test_id("assessment-size").fill("8")
        choose(page, "assessment-model-a", "alpha (third-party)")
        choose(page, "assessment-model-b", "beta (third-party)")
        choose(page, "assessment-judge", "judge (third-party)")
        page.get_by_test_id("assessment-judge-prompt").fill(JUDGE_PROMPT)

        # A placeholder that names nothing is refused in the service's words.
        page.get_by_test_id("assessment-prompt").fill("{{question}}")
        page.get_by_test_id("assessment-preview").click()
        page.get_by_test_id("assessment-error").get_by_text(
            "Unknown placeholder in candidates[0].prompt: {{question}}"
        ).wait_for()
        page.get_by_test_id("assessment-prompt").fill("{{prompt}}")
        page.get_by_test_id("assessment-preview").click()
        page.get_by_test_id("preview-record").first.get_by_text(
            "Question: What is 1 plus 1?"
        ).wait_for()
        assert page.get_by_test_id("preview-record").count() == 5
        assert alpha.requests == []
        screenshot(page, "assessment-new")

        page.get_by_test_id("assessment-run").click()
        page.wait_for_url(DETAIL_PAGE)
        summary = page.get_by_test_id("assessment-summary")
        summary.get_by_text("verdicts parsed: 7 of 8").wait_for(timeout=JOB_TIMEOUT_MS)
        second_run(console_server, headers)
    summary.get_by_text("wins: A 4, B 1, ties 2", exact=False).wait_for()
    for label in ("A", "B"):
        page.get_by_test_id(f"win-rate-{label}").wait_for()
    rows = page.get_by_test_id("rows-table")
    rows.get_by_text("beta 8").wait_for()
    choose(page, "rows-winner-filter", "Tie")
    rows.get_by_text("alpha 6").wait_for()
    rows.get_by_text("alpha 1", exact=True).wait_for(state="detached")
    screenshot(page, "assessment")
    check_narrow(page, "assessment")

    # Beside another finished run of the dataset: the same verdicts on the records in both.
    page.reload()
    page.get_by_test_id("compare-other").click()
    page.get_by_role("option", name=re.compile(r"^ab2 ")).click()
    page.get_by_test_id("compare-summary").get_by_text(
        "per record, ab2 against ab: 0 better, 0 worse, 3 the same, 1 not judged in both"
    ).wait_for()

    href = page.get_by_test_id("download-csv").locator("xpath=..").get_attribute("href")
    download = page.request.get(f"{console_server.url}{href}")
    assert download.ok and download.text().startswith("position,record_index,status,prompt")
    table = list(csv.DictReader(io.StringIO(download.text())))
    assert [row["winner"] for row in table] == ["A", "B", "tie", "", "A", "tie", "A", "A"]
