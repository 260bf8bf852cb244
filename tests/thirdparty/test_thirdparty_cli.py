"""`tuneyard thirdparty` against a real server, with the vLLM double over real HTTP."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from tests.helpers import closed_port, flat
from tests.vllm_double import VllmDouble
from tuneyard.cli import app

runner = CliRunner()


def invoke(*args: str, env: dict[str, str] | None = None):
    return runner.invoke(app, list(args), env=env)


def listed(*args: str) -> list[dict]:
    result = invoke("thirdparty", "list", "--json", *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def vllm(tiny_model_dir):
    with VllmDouble(tiny_model_dir, api_key="secret") as double:
        yield double


class TestThirdPartyCommands:
    def test_add_list_test_rm(self, cli, vllm):
        added = invoke(
            "thirdparty",
            "add",
            "tiny",
            "--provider",
            "openai-compatible",
            "--model",
            vllm.model_id,
            "--url",
            vllm.url,
            env={"TUNEYARD_THIRDPARTY_API_KEY": "secret"},
        )
        assert added.exit_code == 0, added.output
        assert f"Added third-party model tiny (chat model {vllm.model_id} at {vllm.url}" in flat(
            added.stdout
        )
        [entry] = listed()
        assert (entry["name"], entry["provider"], entry["has_api_key"]) == (
            "tiny",
            "openai-compatible",
            True,
        )
        assert "secret" not in invoke("thirdparty", "list", "--json").stdout

        tested = invoke("thirdparty", "test", "tiny")
        assert tested.exit_code == 0, tested.output
        assert f"{vllm.model_id} answered a chat request at {vllm.url}" in flat(tested.stdout)

        removed = invoke("thirdparty", "rm", "tiny")
        assert removed.exit_code == 0 and "Deleted third-party model tiny." in removed.stdout
        assert listed() == []

    def test_failing_tests_exit_non_zero_with_the_reason(self, cli, vllm):
        invoke(
            "thirdparty",
            "add",
            "wrong-key",
            "--provider",
            "openai-compatible",
            "--model",
            vllm.model_id,
            "--url",
            vllm.url,
            "--api-key",
            "not-the-key-4242",
        )
        refused = invoke("thirdparty", "test", "wrong-key")
        assert refused.exit_code == 1
        assert "The API key was refused" in flat(refused.output)
        assert "not-the-key-4242" not in refused.output

        port = closed_port()
        added = invoke(
            "thirdparty",
            "add",
            "down",
            "--provider",
            "openai-compatible",
            "--model",
            "m",
            "--url",
            f"http://127.0.0.1:{port}/v1",
        )
        assert added.exit_code == 0, added.output
        as_json = invoke("thirdparty", "test", "down", "--json")
        assert as_json.exit_code == 1
        assert json.loads(as_json.stdout)["ok"] is False

    def test_unreachable_server(self, cli):
        port = closed_port()
        invoke(
            "thirdparty",
            "add",
            "down",
            "--provider",
            "openai-compatible",
            "--model",
            "m",
            "--url",
            f"http://127.0.0.1:{port}/v1",
        )
        result = invoke("thirdparty", "test", "down")
        assert result.exit_code == 1
        assert f"Cannot reach 127.0.0.1:{port}: connection refused" in flat(result.output)

    def test_private_embedding_entries_and_the_type_filter(self, cli):
        added = invoke(
            "thirdparty",
            "add",
            "embed",
            "--provider",
            "siliconflow",
            "--model",
            "BAAI/bge-m3",
            "--type",
            "embedding",
            "--private",
            "--description",
            "for knowledge bases",
        )
        assert added.exit_code == 0, added.output
        invoke("thirdparty", "add", "chat", "--provider", "deepseek", "--model", "deepseek-chat")
        [embed] = listed("--type", "embedding")
        assert embed["private"] is True and embed["base_url"] == "https://api.siliconflow.cn/v1"
        assert embed["description"] == "for knowledge bases" and embed["has_api_key"] is False
        assert [entry["name"] for entry in listed()] == ["chat", "embed"]

    def test_bad_input_and_unknown_names(self, cli):
        bad = invoke("thirdparty", "add", "x", "--provider", "anthropic", "--model", "m")
        assert bad.exit_code == 1
        assert (
            "use one of: openai, deepseek, dashscope, siliconflow, ollama, openai-compatible"
            in flat(bad.output)
        )
        missing = invoke("thirdparty", "test", "nope")
        assert missing.exit_code == 1
        assert "No third-party model 'nope'" in flat(missing.output)
        assert invoke("thirdparty", "rm", "nope").exit_code == 1
        assert listed() == []
