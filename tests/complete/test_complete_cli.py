"""`tuneyard save` and `tuneyard complete` against a real server: save, list, show, export, push,
rm."""

from __future__ import annotations

import json
import socket
import tarfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.helpers import build_adapter, flat, folder_files, make_customized
from tuneyard.cli import app
from tuneyard.storage import Layout

runner = CliRunner()


@pytest.fixture
def made(tiny_base, tiny_model_dir, tmp_path) -> dict:
    """A customized model of the tiny base, from a prepared adapter."""
    return make_customized(tiny_base, build_adapter(tmp_path / "adapter", tiny_model_dir))


def invoke(*args: str):
    return runner.invoke(app, list(args))


def listed() -> list[dict]:
    result = invoke("complete", "list", "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


class TestSave:
    def test_save_wait_list_show_export_rm(self, cli, worker, made, tmp_path):
        result = invoke("save", made["name"], "--dtype", "fp32", "--wait")
        assert result.exit_code == 0, result.output
        [model] = listed()
        assert model["name"].startswith(f"{made['name']}_s_")
        assert (model["status"], model["dtype"]) == ("ready", "fp32")
        folder = Layout().complete_model_dir(model["id"])
        assert f"Complete model {model['name']} is ready in {folder}" in flat(result.stdout)

        shown = json.loads(invoke("complete", "show", model["name"], "--json").stdout)
        assert shown["id"] == model["id"]
        assert shown["model_card"]["lineage"]["customized_model"] == made["name"]
        table = invoke("complete", "show", model["id"])
        assert table.exit_code == 0 and "model_card" in table.stdout

        exports = tmp_path / "exports"
        exports.mkdir()
        archive = exports / "model.tar.gz"
        exported = invoke("complete", "export", model["name"], str(archive))
        assert exported.exit_code == 0, exported.output
        assert f"Wrote {archive}" in flat(exported.stdout)
        with tarfile.open(archive) as tar:  # gzip, from the file name
            files = {
                m.name.removeprefix(f"{model['name']}/"): tar.extractfile(m).read()
                for m in tar.getmembers()
                if m.isfile()
            }
        assert files == folder_files(folder)
        into_folder = invoke("complete", "export", model["id"], str(exports))
        assert into_folder.exit_code == 0, into_folder.output
        assert tarfile.is_tarfile(exports / f"{model['name']}.tar")
        assert {p.name for p in exports.iterdir()} == {"model.tar.gz", f"{model['name']}.tar"}

        removed = invoke("complete", "rm", model["name"])
        assert removed.exit_code == 0, removed.output
        assert flat(removed.stdout) == f"Deleted complete model {model['name']}."
        assert listed() == [] and not folder.exists()

    def test_save_without_wait_leaves_the_job_queued(self, cli, made):
        result = invoke("save", made["id"])
        assert result.exit_code == 0, result.output
        [model] = listed()
        assert model["status"] == "saving"
        assert f"Saving complete model {model['name']} ({model['id']}, job {model['job_id']})." in (
            flat(result.stdout)
        )
        assert f"follow it with `tuneyard complete show {model['name']}`" in flat(result.stderr)
        jobs = json.loads(invoke("jobs", "list", "--json").stdout)
        assert [(j["kind"], j["status"]) for j in jobs] == [("complete.save", "queued")]

    def test_bad_dtype_exits_1(self, cli, made):
        result = invoke("save", made["name"], "--dtype", "q4_K_M")
        assert result.exit_code == 1
        assert flat(result.stderr).startswith(
            "Error: Unknown dtype 'q4_K_M'; save as one of: bf16, fp16, fp32."
        )
        assert listed() == []


class TestErrors:
    def test_unknown_model(self, cli):
        for args in (("show", "nope"), ("rm", "nope"), ("export", "nope", "/tmp")):
            result = invoke("complete", *args)
            assert result.exit_code == 1
            assert flat(result.stderr) == (
                "Error: No complete model 'nope'. List them with `tuneyard complete list`."
            )

    def test_push_to_an_unreachable_hub(self, cli, worker, made, monkeypatch):
        assert invoke("save", made["id"], "--wait").exit_code == 0
        [model] = listed()
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
        result = invoke("complete", "push", model["name"], "me/tiny")
        assert result.exit_code == 1
        assert flat(result.stderr).startswith(
            f"Error: Cannot reach the model hub (http://127.0.0.1:{port}: "
        )

    def test_export_into_a_missing_folder(self, cli, worker, made, tmp_path):
        assert invoke("save", made["id"], "--wait").exit_code == 0
        [model] = listed()
        target = tmp_path / "missing" / "m.tar"
        result = invoke("complete", "export", model["id"], str(target))
        assert result.exit_code == 1
        assert flat(result.stderr) == (
            f"Error: {target.parent} is not a folder; give a path in an existing folder."
        )
        assert not Path(target.parent).exists()
