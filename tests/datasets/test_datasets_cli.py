"""`tuneyard data` against a real server: add (following the parse), list, show, preview, rm."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from tests.helpers import QA, flat, jsonl
from tuneyard.cli import app
from tuneyard.storage import Layout

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, list(args))


def listed() -> list[dict]:
    result = invoke("data", "list", "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


class TestAdd:
    def test_add_parses_and_shows_the_dataset(self, cli, worker, tmp_path):
        path = tmp_path / "qa.jsonl"
        path.write_bytes(jsonl(*QA))
        result = invoke("data", "add", str(path), "--name", "qa", "--description", "Quiz")
        assert result.exit_code == 0, result.output
        assert "Dataset 'qa' is ready: 3 records, prompt_completion" in flat(result.output)
        assert "prompt_completion" in result.stdout
        [dataset] = listed()
        assert (dataset["name"], dataset["description"]) == ("qa", "Quiz")
        assert (dataset["status"], dataset["record_count"]) == ("ready", 3)

    def test_map_renames_fields(self, cli, worker, tmp_path):
        path = tmp_path / "qa.csv"
        path.write_text("question,response\nWhat is 2+2?,4\n")
        result = invoke(
            "data", "add", str(path), "-n", "qa", "--map", "question=prompt",
            "--map", "response=completion",
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        [dataset] = listed()
        assert dataset["format"] == "prompt_completion"
        assert dataset["column_mapping"] == {"question": "prompt", "response": "completion"}

    def test_a_bad_map_is_refused(self, cli, tmp_path):
        path = tmp_path / "qa.jsonl"
        path.write_bytes(jsonl(*QA))
        result = invoke("data", "add", str(path), "-n", "qa", "--map", "question")
        assert result.exit_code == 1
        assert "--map takes SOURCE=FIELD" in flat(result.output)
        assert listed() == []

    def test_a_bad_file_exits_1_and_prints_its_errors(self, cli, worker, tmp_path):
        path = tmp_path / "bad.jsonl"
        path.write_bytes(jsonl(QA[0]) + b"[1]\nnope\n")
        result = invoke("data", "add", str(path), "--name", "bad")
        assert result.exit_code == 1
        assert "2 problems in the file; the first: Line 2: not a JSON object (got a list)" in flat(
            result.output
        )
        assert "  Line 2: not a JSON object (got a list)\n" in result.output
        assert "  Line 3: not valid JSON (Expecting value at column 1)\n" in result.output
        [dataset] = listed()
        assert dataset["status"] == "failed"
        assert not Layout().dataset_dir(dataset["id"]).exists()

    def test_an_unknown_file_type_exits_1(self, cli, tmp_path):
        path = tmp_path / "qa.txt"
        path.write_bytes(jsonl(*QA))
        result = invoke("data", "add", str(path), "--name", "qa")
        assert result.exit_code == 1
        assert "the file type must be one of .jsonl, .json, .csv, .parquet" in flat(result.output)

    def test_no_wait_queues_the_parse(self, cli, tmp_path):
        path = tmp_path / "qa.jsonl"
        path.write_bytes(jsonl(*QA))
        result = invoke("data", "add", str(path), "--name", "qa", "--no-wait")
        assert result.exit_code == 0, result.output
        [dataset] = listed()
        assert dataset["status"] == "parsing"
        assert f"is being parsed by job {dataset['job_id']}" in flat(result.output)


class TestInspectAndRemove:
    def test_show_preview_rm_by_name_or_id(self, cli, worker, tmp_path):
        path = tmp_path / "qa.jsonl"
        path.write_bytes(jsonl(*QA))
        assert invoke("data", "add", str(path), "--name", "qa").exit_code == 0
        [dataset] = listed()

        for ref in ("qa", dataset["id"]):
            shown = invoke("data", "show", ref, "--json")
            assert shown.exit_code == 0, shown.output
            assert json.loads(shown.stdout)["id"] == dataset["id"]
        table = invoke("data", "show", "qa")
        assert "prompt_completion" in table.stdout and dataset["id"] in table.stdout

        preview = invoke("data", "preview", "qa", "--limit", "2", "--offset", "1", "--json")
        assert json.loads(preview.stdout) == {"items": QA[1:3], "total": 3}
        table = invoke("data", "preview", dataset["id"], "--limit", "1")
        assert "What is 2+2?" in table.stdout and "Paris" not in table.stdout

        removed = invoke("data", "rm", "qa")
        assert removed.exit_code == 0, removed.output
        assert "Removed dataset 'qa'." in removed.stdout
        assert listed() == []
        assert not Layout().dataset_dir(dataset["id"]).exists()

    def test_show_a_failed_dataset_lists_its_errors(self, cli, worker, tmp_path):
        path = tmp_path / "bad.jsonl"
        path.write_bytes(b"[1]\n")
        invoke("data", "add", str(path), "--name", "bad")
        result = invoke("data", "show", "bad")
        assert result.exit_code == 0
        assert "Errors:\n  Line 1: not a JSON object (got a list)" in result.output

    def test_unknown_dataset_exits_1(self, cli):
        result = invoke("data", "show", "nope")
        assert result.exit_code == 1
        assert "No dataset 'nope'. List them with `tuneyard data list`." in flat(result.output)

    def test_rm_refused_while_parsing(self, cli, tmp_path):
        path = tmp_path / "qa.jsonl"
        path.write_bytes(jsonl(*QA))
        invoke("data", "add", str(path), "--name", "qa", "--no-wait")
        result = invoke("data", "rm", "qa")
        assert result.exit_code == 1
        assert "Dataset 'qa' is in use by dataset.parse job" in flat(result.output)
        assert len(listed()) == 1
