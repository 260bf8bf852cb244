"""`tuneyard env`, `tuneyard deploy` and `tuneyard live` against a real server, with the Ollama
protocol double as the serving tool."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from tests.helpers import closed_port, flat
from tuneyard.cli import app

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, list(args))


class TestEnvCommands:
    def test_add_list_test_rm(self, cli, ollama):
        added = invoke(
            "env", "add", "ol", "--kind", "ollama", "--url", ollama.url, "--api-key", "k1"
        )
        assert added.exit_code == 0, added.output
        listed = json.loads(invoke("env", "list", "--json").stdout)
        assert [(e["name"], e["kind"], e["has_api_key"]) for e in listed] == [
            ("ol", "ollama", True)
        ]
        assert "k1" not in invoke("env", "list", "--json").stdout
        tested = invoke("env", "test", "ol")
        assert tested.exit_code == 0, tested.output
        assert "Ollama is running" in tested.stdout
        removed = invoke("env", "rm", "ol")
        assert removed.exit_code == 0
        assert json.loads(invoke("env", "list", "--json").stdout) == []

    def test_failing_test_exits_non_zero_with_the_reason(self, cli):
        invoke(
            "env", "add", "down", "--kind", "ollama", "--url", f"http://127.0.0.1:{closed_port()}"
        )
        result = invoke("env", "test", "down")
        assert result.exit_code == 1
        assert "Cannot reach Ollama" in flat(result.output)

    def test_bad_kind(self, cli):
        result = invoke("env", "add", "x", "--kind", "triton", "--url", "http://h")
        assert result.exit_code == 1
        assert "use one of: ollama, llama.cpp, openai" in flat(result.output)


class TestDeployCommands:
    @pytest.mark.fidelity_check
    def test_deploy_wait_show_register_rm(self, cli, worker, ollama, tiny_base):
        invoke("env", "add", "ol", "--kind", "ollama", "--url", ollama.url)
        result = invoke(
            "deploy", "tiny", "--env", "ol", "--quant", "q4_K_M", "--no-fidelity-check", "--wait"
        )
        assert result.exit_code == 0, result.output
        [live] = json.loads(invoke("live", "list", "--json").stdout)
        assert live["name"].startswith("tiny_d_") and live["name"].endswith("_q4_K_M")
        assert live["status"] == "live" and live["environment_name"] == "ol"
        assert f"{live['name']} is live: {ollama.url}/v1" in flat(result.stdout)

        shown = invoke("live", "show", live["name"], "--check", "--json")
        assert shown.exit_code == 0, shown.output
        card = json.loads(shown.stdout)["model_card"]
        assert json.loads(shown.stdout)["status"] == "live"
        # --no-fidelity-check: the request says so, and no check was queued.
        assert card["deploy"]["fidelity_check"] is False and "fidelity_check" not in card
        registered = invoke("live", "register", live["name"], "--name", "tiny-on-ollama")
        assert registered.exit_code == 0, registered.output
        assert "Registered third-party model tiny-on-ollama" in flat(registered.stdout)
        removed = invoke("live", "rm", live["name"])
        assert removed.exit_code == 0
        assert ollama.models == {}

    def test_unknown_model_and_quantization(self, cli, ollama, tiny_base):
        invoke("env", "add", "ol", "--kind", "ollama", "--url", ollama.url)
        missing = invoke("deploy", "nope", "--env", "ol")
        assert missing.exit_code == 1
        assert "No complete, customized or base model 'nope'" in flat(missing.output)
        bad = invoke("deploy", "tiny", "--env", "ol", "--quant", "Q4_0")
        assert bad.exit_code == 1
        assert "use one of: no_quantization, q8_0, q4_K_M, q4_K_S" in flat(bad.output)
        assert json.loads(invoke("live", "list", "--json").stdout) == []
