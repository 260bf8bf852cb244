"""`tuneyard base` against a real server: add, list, show, template, rm, and errors a person
can act on."""

from __future__ import annotations

import json
import shutil

from typer.testing import CliRunner

from tests.helpers import flat
from tuneyard.cli import app

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, ["base", *args])


class TestAdd:
    def test_add_list_show_rm(self, cli, tiny_model_dir):
        added = invoke("add", str(tiny_model_dir), "--name", "tiny", "--model-name", "Tiny")
        assert added.exit_code == 0, added.output
        assert "LlamaForCausalLM" in added.stdout

        listed = json.loads(invoke("list", "--json").stdout)
        assert [(m["technical_name"], m["model_name"], m["status"]) for m in listed] == [
            ("tiny", "Tiny", "ready")
        ]
        by_id = json.loads(invoke("show", listed[0]["id"], "--json").stdout)
        assert by_id["path"] == str(tiny_model_dir)

        shown = invoke("show", "tiny")
        assert shown.exit_code == 0, shown.output
        text = flat(shown.stdout)
        for expected in (
            "Model card",
            "Parameters 3.2M (3,219,776)",
            "Context length 512",
            "Chat template yes (chat_template.jinja)",
            "Deployment template derived:chat_template",
            "<|im_start|>user {{ .Content }}<|im_end|>",
        ):
            assert expected in text

        removed = invoke("rm", "tiny")
        assert removed.exit_code == 0, removed.output
        assert flat(removed.stdout) == (
            f"Removed base model tiny; its folder {tiny_model_dir} was left in place."
        )
        assert (tiny_model_dir / "model.safetensors").is_file()
        assert json.loads(invoke("list", "--json").stdout) == []

    def test_relative_path_is_taken_from_the_current_folder(self, cli, tiny_model_dir, monkeypatch):
        monkeypatch.chdir(tiny_model_dir.parent)
        added = invoke("add", tiny_model_dir.name, "--name", "tiny", "--type", "embedding")
        assert added.exit_code == 0, added.output
        shown = json.loads(invoke("show", "tiny", "--json").stdout)
        assert (shown["path"], shown["model_type"]) == (str(tiny_model_dir), "embedding")

    def test_folder_missing_config_exits_1_with_the_message(self, cli, tiny_model_dir, tmp_path):
        broken = shutil.copytree(tiny_model_dir, tmp_path / "broken")
        (broken / "config.json").unlink()
        result = invoke("add", str(broken), "--name", "broken")
        assert result.exit_code == 1
        assert flat(result.stderr).startswith(f"Error: {broken} has no config.json: ")
        assert json.loads(invoke("list", "--json").stdout) == []

    def test_unknown_model(self, cli):
        result = invoke("show", "nope")
        assert result.exit_code == 1
        assert flat(result.stderr) == (
            "Error: No base model 'nope'. List them with `tuneyard base list`."
        )


class TestTemplate:
    def test_print_and_set_from_a_file(self, cli, tiny_model_dir, tmp_path):
        invoke("add", str(tiny_model_dir), "--name", "tiny")
        printed = invoke("template", "tiny")
        assert printed.exit_code == 0
        assert printed.stdout.startswith("{{ if not .System }}<|im_start|>system\n")

        new = tmp_path / "template.txt"
        new.write_text("[INST] {{ .Prompt }} [/INST]")
        updated = invoke("template", "tiny", "--set-file", str(new))
        assert updated.exit_code == 0, updated.output
        assert invoke("template", "tiny").stdout == "[INST] {{ .Prompt }} [/INST]\n"

    def test_empty_file_is_refused(self, cli, tiny_model_dir, tmp_path):
        invoke("add", str(tiny_model_dir), "--name", "tiny")
        empty = tmp_path / "empty.txt"
        empty.write_text("\n")
        result = invoke("template", "tiny", "--set-file", str(empty))
        assert result.exit_code == 1
        assert "The deployment template is empty" in flat(result.stderr)
        assert invoke("template", "tiny").stdout.startswith("{{ if not .System }}")

    def test_file_over_64_kib_is_refused(self, cli, tiny_model_dir, tmp_path):
        invoke("add", str(tiny_model_dir), "--name", "tiny")
        long = tmp_path / "long.txt"
        long.write_text("{{ .Prompt }}" + " " * 70_000)
        result = invoke("template", "tiny", "--set-file", str(long))
        assert result.exit_code == 1
        assert "the limit is 65536 bytes (64 KiB)" in flat(result.stderr)
        assert invoke("template", "tiny").stdout.startswith("{{ if not .System }}")


class TestImport:
    def test_import_without_waiting_queues_the_job(self, cli, smollm2_gguf):
        queued = invoke("import-gguf", str(smollm2_gguf), "--name", "smol", "--no-wait")
        assert queued.exit_code == 0, queued.output
        assert flat(queued.stdout).startswith("Queued job ")
        listed = json.loads(invoke("list", "--json").stdout)
        assert [(m["technical_name"], m["status"]) for m in listed] == [("smol", "importing")]

    def test_import_of_a_file_that_is_not_gguf(self, cli, tmp_path):
        bad = tmp_path / "model.gguf"
        bad.write_text("hello")
        result = invoke("import-gguf", str(bad), "--name", "bad")
        assert result.exit_code == 1
        assert flat(result.stderr).startswith(f"Error: {bad} is not a GGUF file")
