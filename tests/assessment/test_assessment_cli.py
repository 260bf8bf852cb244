"""`tuneyard assess` against a real server: preview, run with a pairwise judge, show, results,
two runs compared, export, preference pairs, and the errors a person sees."""

from __future__ import annotations

import csv
import io
import json

from typer.testing import CliRunner

from tests.helpers import SUMS, number, scripted_pairwise
from tests.openai_double import OpenAIDouble, last_user
from tuneyard.cli import app

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, list(args))


def add_model(name: str, double: OpenAIDouble) -> None:
    added = invoke(
        "thirdparty",
        "add",
        name,
        "--provider",
        "openai-compatible",
        "--model",
        double.model,
        "--url",
        double.url,
    )
    assert added.exit_code == 0, added.output


def test_preview_run_show_results_export_and_prefs(cli, worker, tmp_path):
    data = tmp_path / "qa.jsonl"
    data.write_text("\n".join(json.dumps(record) for record in SUMS))
    assert invoke("data", "add", str(data), "--name", "qa").exit_code == 0
    with (
        OpenAIDouble(lambda m: f"alpha {number(last_user(m))}") as alpha,
        OpenAIDouble(lambda m: f"beta {number(last_user(m))}") as beta,
        OpenAIDouble(scripted_pairwise) as judge,
    ):
        for name, double in (("alpha", alpha), ("beta", beta), ("judge", judge)):
            add_model(name, double)
        options = ["--data", "qa", "--model", "alpha", "--model", "beta", "--judge", "judge"]
        preview = invoke(
            "assess", "run", "--name", "ab", *options, "--size", "3", "--seed", "2", "--preview"
        )
        assert preview.exit_code == 0, preview.output
        assert "candidate B prompt: What is" in preview.stdout
        assert "[A] {{ResponseA}}" not in preview.stdout  # the built-in pairwise prompt
        assert "[Answer A]\n{{ResponseA}}" in preview.stdout
        assert alpha.requests == []
        assert invoke("assess", "list", "--json").stdout.strip() == "[]"

        ran = invoke(
            "assess",
            "run",
            "--name",
            "ab",
            *options,
            "--judge-prompt",
            "Question: {{Question}}\n[A] {{ResponseA}}\n[B] {{ResponseB}}",
            "--wait",
        )
        assert ran.exit_code == 0, ran.output
        assert "verdicts parsed: 7 of 8" in ran.stdout
        assert "wins: A 4, B 1, ties 2" in ran.stdout
        again = invoke(
            "assess", "run", "--name", "ab2", *options, "--size", "4",
            "--judge-prompt", "Question: {{Question}}\n[A] {{ResponseA}}\n[B] {{ResponseB}}",
            "--wait",
        )  # fmt: skip
        assert again.exit_code == 0, again.output

    # The same judge on the same answers: every verdict read in both is the same.
    compared = invoke("assess", "compare", "ab", "ab2")
    assert compared.exit_code == 0, compared.output
    assert "records in both: 4; only in ab: 4; only in ab2: 0" in compared.stdout
    assert "per record, ab2 against ab: 0 better, 0 worse, 3 the same, 1 not judged in both" in (
        compared.stdout
    )
    assert (
        "win rate (ties count half): ab 50%, ab2 50% over 3 rows in both; difference +0 points"
        in compared.stdout
    )
    assert "within noise" in compared.stdout and "alpha 3" in compared.stdout
    found = json.loads(invoke("assess", "compare", "ab", "ab2", "--json").stdout)
    assert found["total"] == 8 and found["items"][5]["second"] is None
    assert [row["changed"] for row in found["items"][:4]] == ["same", "same", "same", None]
    worse = invoke("assess", "compare", "ab", "ab2", "--changed", "worse", "--json").stdout
    assert json.loads(worse)["items"] == []
    refused = invoke("assess", "compare", "ab", "ab2", "--candidate", "2")
    assert refused.exit_code == 1 and "ab has 2 candidates; choose 0 to 1." in refused.output
    assert invoke("assess", "rm", "ab2").exit_code == 0

    shown = json.loads(invoke("assess", "show", "ab", "--json").stdout)
    assert shown["status"] == "succeeded" and shown["summary"]["judge"]["flips"] == 1
    assert "verdicts parsed: 7 of 8" in invoke("assess", "show", "ab").stdout
    table = invoke("assess", "results", "ab").stdout
    assert "alpha 1" in table and "unparsed" in table
    rows = json.loads(invoke("assess", "results", "ab", "--json").stdout)
    assert len(rows) == 8 and rows[0]["answers"][1]["text"] == "beta 1"

    target = tmp_path / "ab.csv"
    exported = invoke("assess", "export", "ab", "--output", str(target))
    assert exported.exit_code == 0, exported.output
    exported_rows = list(csv.DictReader(io.StringIO(target.read_text())))
    assert [row["winner"] for row in exported_rows][:3] == ["A", "B", "tie"]
    lines = invoke("assess", "export", "ab", "--format", "jsonl").stdout.splitlines()
    assert len(lines) == 8 and json.loads(lines[0])["verdict"]["winner"] == "A"

    prefs = invoke("assess", "prefs", "ab", "--name", "ab-prefs")
    assert prefs.exit_code == 0, prefs.output
    assert "Dataset ab-prefs: 5 preference pairs." in prefs.stdout
    assert invoke("assess", "rm", "ab").exit_code == 0
    assert invoke("assess", "list", "--json").stdout.strip() == "[]"


def test_errors_read_as_the_server_says_them(cli, worker, tmp_path):
    data = tmp_path / "qa.jsonl"
    data.write_text("\n".join(json.dumps(record) for record in SUMS))
    assert invoke("data", "add", str(data), "--name", "qa").exit_code == 0
    with OpenAIDouble(lambda m: "ok") as alpha:
        add_model("alpha", alpha)
        bad = invoke(
            "assess", "run", "--name", "x", "--data", "qa", "--model", "alpha",
            "--prompt", "{{question}}",
        )  # fmt: skip
        assert bad.exit_code == 1
        assert "Unknown placeholder in candidates[0].prompt: {{question}}" in bad.output
        assert alpha.requests == []
    missing = invoke("assess", "run", "--data", "qa")
    assert missing.exit_code == 1 and "Give --name, --data" in missing.output
    unknown = invoke("assess", "show", "nothing")
    assert unknown.exit_code == 1 and "No assessment 'nothing'" in unknown.output
    no_stages = invoke("assess", "fidelity", "nobody")
    assert no_stages.exit_code == 1 and "No customized model 'nobody'" in no_stages.output
