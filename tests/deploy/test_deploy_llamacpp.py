"""The managed llama.cpp server, with the real SmolLM2 GGUF: start, serve, supervise, stop."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import psutil
import pytest

from tests.helpers import closed_port
from tuneyard.deploy.llamacpp import ManagedServer, ServedModel, list_served_models
from tuneyard.deploy.openai_compat import OpenAICompatClient
from tuneyard.errors import Invalid, Unavailable

# Computation alone: runs once, on SQLite's run; the database is out of reach.
pytestmark = pytest.mark.nodb

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture
def server(tmp_path):
    managed = ManagedServer(tmp_path / "environment")
    yield managed
    managed.stop()


def served_pid(server: ManagedServer) -> int:
    return int(server.pid_path.read_text())


def answer(server: ManagedServer, alias: str) -> str:
    """A real chat completion (POST /v1/chat/completions, max_tokens 8, temperature 0)."""
    return OpenAICompatClient(server.base_url).chat(alias, QUESTION, max_tokens=8)


def assert_stopped(server: ManagedServer, pid: int | None = None) -> None:
    assert not server.is_running()
    assert not server.pid_path.exists()
    if pid is not None:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"
    with pytest.raises(Unavailable, match="connection refused"):
        list_served_models(server.base_url)


class TestApply:
    @pytest.mark.slow
    def test_server_outlives_the_job_that_applied(self, server, smollm2_gguf):
        # A deploy job applies, then ends the way a cancelled job does: its whole process
        # group is killed (the executor's killpg).
        script = (
            "import os, signal, sys; from pathlib import Path\n"
            "from tuneyard.deploy.llamacpp import ManagedServer, ServedModel\n"
            "ManagedServer(Path(sys.argv[1])).apply([ServedModel('smol', Path(sys.argv[2]))])\n"
            "os.killpg(0, signal.SIGKILL)\n"
        )
        job = subprocess.run(
            [sys.executable, "-c", script, str(server.state_dir), str(smollm2_gguf)],
            capture_output=True,
            text=True,
            timeout=180,
            start_new_session=True,
        )
        assert job.returncode == -signal.SIGKILL, job.stderr

        assert psutil.Process(served_pid(server)).is_running()
        assert server.is_running()
        assert list_served_models(server.base_url) == ["smol"]
        assert answer(server, "smol").strip()
        assert server.models() == [ServedModel("smol", smollm2_gguf)]

    @pytest.mark.slow
    def test_two_aliases_are_listed_and_answer(self, server, smollm2_gguf):
        server.apply([ServedModel("first", smollm2_gguf), ServedModel("second", smollm2_gguf)])

        assert list_served_models(server.base_url) == ["first", "second"]
        assert answer(server, "second").strip()
        config = json.loads(server.config_path.read_text())
        assert [m["model_alias"] for m in config["models"]] == ["first", "second"]
        # No chat_format: the server renders the GGUF's own chat template.
        assert all("chat_format" not in m for m in config["models"])

    @pytest.mark.slow
    def test_a_second_request_does_not_cut_the_first_answer_short(self, server, smollm2_gguf):
        import threading

        server.apply([ServedModel("only", smollm2_gguf)])
        body = {"model": "only", "messages": QUESTION, "max_tokens": 48, "temperature": 0}
        finish_reasons, pieces, started = [], [], threading.Event()

        def stream() -> None:
            with httpx.stream(
                "POST",
                f"{server.base_url}/v1/chat/completions",
                json={**body, "stream": True},
                timeout=120,
            ) as response:
                for line in response.iter_lines():
                    if not line.startswith("data: {"):
                        continue
                    choice = json.loads(line[len("data: ") :])["choices"][0]
                    pieces.append(choice.get("delta", {}).get("content") or "")
                    started.set()
                    if choice.get("finish_reason"):
                        finish_reasons.append(choice["finish_reason"])

        first = threading.Thread(target=stream)
        first.start()
        assert started.wait(120), "the first answer never began"
        second = answer(server, "only")
        first.join(120)

        assert second.strip()
        # The first answer ran to its end, the same as when it is asked alone.
        alone = httpx.post(f"{server.base_url}/v1/chat/completions", json=body, timeout=120)
        expected = alone.json()["choices"][0]
        assert len(finish_reasons) == 1, (finish_reasons, "".join(pieces))
        assert "".join(pieces) == expected["message"]["content"]
        assert finish_reasons[0] == expected["finish_reason"]

    @pytest.mark.slow
    def test_chat_renders_the_ggufs_own_template(self, server, smollm2_gguf, tokenizer_dir):
        # The prompt the server evaluates is exactly the model's chat template, rendered.
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
        server.apply([ServedModel("smol", smollm2_gguf)])
        for messages in (QUESTION, [{"role": "system", "content": "Be brief."}, *QUESTION]):
            response = httpx.post(
                f"{server.base_url}/v1/chat/completions",
                json={"model": "smol", "messages": messages, "max_tokens": 1},
                timeout=60,
            )
            expected = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
            assert response.json()["usage"]["prompt_tokens"] == len(expected["input_ids"])

    @pytest.mark.slow
    def test_empty_list_stops_the_server(self, server, smollm2_gguf):
        server.apply([ServedModel("smol", smollm2_gguf)])
        pid = served_pid(server)

        server.apply([])

        assert_stopped(server, pid)
        assert server.models() == []

    def test_missing_gguf_fails_with_the_log_and_leaves_nothing_running(self, server, tmp_path):
        missing = tmp_path / "nowhere.gguf"
        with pytest.raises(Unavailable) as failure:
            server.apply([ServedModel("ghost", missing)], timeout=60)

        message = failure.value.message
        assert "exited" in message
        assert f"Model path does not exist: {missing}" in message  # from server.log
        assert "The server is stopped." in message
        assert_stopped(server)

    def test_garbage_gguf_fails_with_the_log_and_leaves_nothing_running(self, server, tmp_path):
        garbage = tmp_path / "garbage.gguf"
        garbage.write_bytes(b"GGUF" + os.urandom(4096))
        with pytest.raises(Unavailable) as failure:
            server.apply([ServedModel("junk", garbage)], timeout=60)

        assert f"Failed to load model from file: {garbage}" in failure.value.message
        assert_stopped(server)

    @pytest.mark.slow
    def test_failed_second_model_brings_back_what_was_served(self, server, smollm2_gguf, tmp_path):
        # The server loads only its first model at start; apply asks the others too.
        server.apply([ServedModel("smol", smollm2_gguf)])
        garbage = tmp_path / "garbage.gguf"
        garbage.write_bytes(b"not a model")

        with pytest.raises(Unavailable) as failure:
            server.apply([ServedModel("smol", smollm2_gguf), ServedModel("junk", garbage)])

        message = failure.value.message
        assert f"junk ({garbage}) does not answer" in message
        assert "serves the models it served before: smol" in message
        assert list_served_models(server.base_url) == ["smol"]
        assert server.models() == [ServedModel("smol", smollm2_gguf)]
        assert answer(server, "smol").strip()

    def test_duplicate_aliases_are_refused_before_anything_changes(self, server, smollm2_gguf):
        with pytest.raises(Invalid, match="Two models have the alias 'smol'"):
            server.apply([ServedModel("smol", smollm2_gguf), ServedModel("smol", smollm2_gguf)])
        assert not server.config_path.exists()
        assert not server.is_running()

    @pytest.mark.slow
    def test_taken_port_is_named(self, tmp_path, smollm2_gguf):
        with socket.socket() as squatter:
            squatter.bind(("127.0.0.1", 0))
            squatter.listen()
            port = squatter.getsockname()[1]
            managed = ManagedServer(tmp_path / "environment", port=port)
            with pytest.raises(Unavailable, match=f"Port {port} on 127.0.0.1 is taken"):
                managed.apply([ServedModel("smol", smollm2_gguf)])
        assert not managed.is_running()


class TestApiKey:
    @pytest.mark.slow
    def test_a_server_with_a_key_answers_only_requests_that_carry_it(self, tmp_path, smollm2_gguf):
        keyed = ManagedServer(tmp_path / "environment", api_key="k-0815-secret")
        try:
            keyed.apply([ServedModel("smol", smollm2_gguf)])
            body = {"model": "smol", "messages": QUESTION, "max_tokens": 1}
            for headers in ({}, {"Authorization": "Bearer guessed"}):
                assert httpx.get(f"{keyed.base_url}/v1/models", headers=headers).status_code == 401
                refused = httpx.post(
                    f"{keyed.base_url}/v1/chat/completions", json=body, headers=headers, timeout=60
                )
                assert refused.status_code == 401
            with pytest.raises(Invalid, match="wants an API key"):
                list_served_models(keyed.base_url)
            assert list_served_models(keyed.base_url, "k-0815-secret") == ["smol"]
            client = OpenAICompatClient(keyed.base_url, "k-0815-secret")
            assert client.chat("smol", QUESTION, max_tokens=8).strip()
            # The key is in the server's own config, which its owner alone can read.
            assert json.loads(keyed.config_path.read_text())["api_key"] == "k-0815-secret"
            assert keyed.config_path.stat().st_mode & 0o077 == 0

            # A supervisor that knows only the folder brings it back with its key.
            pid = served_pid(keyed)
            os.kill(pid, signal.SIGKILL)
            psutil.Process(pid).wait(10)
            supervisor = ManagedServer(keyed.state_dir)
            assert supervisor.ensure_running() is True
            assert httpx.get(f"{keyed.base_url}/v1/models").status_code == 401
            assert list_served_models(keyed.base_url, "k-0815-secret") == ["smol"]
        finally:
            keyed.stop()


class TestSupervision:
    @pytest.mark.slow
    def test_killed_server_restarts_on_the_same_port(self, server, smollm2_gguf):
        server.apply([ServedModel("smol", smollm2_gguf)])
        url = server.base_url
        old_pid = served_pid(server)
        assert server.ensure_running() is False

        os.kill(old_pid, signal.SIGKILL)
        psutil.Process(old_pid).wait(10)  # reap it: this test process is its parent
        assert not server.is_running()

        # A new worker process knows the environment only by its folder.
        supervisor = ManagedServer(server.state_dir)
        assert supervisor.ensure_running() is True

        assert supervisor.base_url == url
        assert served_pid(supervisor) != old_pid
        assert list_served_models(url) == ["smol"]
        assert answer(supervisor, "smol").strip()

    def test_nothing_configured_means_nothing_to_restart(self, server):
        assert server.ensure_running() is False
        assert not server.is_running()

    def test_port_is_kept_across_instances(self, tmp_path):
        first = ManagedServer(tmp_path / "environment")
        assert ManagedServer(tmp_path / "environment").port == first.port
        assert first.base_url == f"http://127.0.0.1:{first.port}"

    @pytest.mark.slow
    def test_a_stale_pid_is_not_our_server(self, server, smollm2_gguf):
        server.apply([ServedModel("smol", smollm2_gguf)])
        server.stop()
        server.pid_path.write_text(f"{os.getpid()}\n")  # alive, but not a llama.cpp server

        assert not server.is_running()
        server.stop()  # removes the pid file and signals nothing
        assert not server.pid_path.exists()


class TestListServedModels:
    def test_closed_port_is_unavailable(self):
        with pytest.raises(Unavailable, match="connection refused"):
            list_served_models(f"http://127.0.0.1:{closed_port()}")


@pytest.fixture(autouse=True)
def no_stray_servers(tmp_path):
    """Every test leaves no llama.cpp server of its folder behind."""
    yield
    config = str((tmp_path / "environment" / "config.json").resolve())
    for process in psutil.process_iter(["cmdline"]):
        assert config not in (process.info["cmdline"] or []), process


def test_served_model_round_trips_through_the_config(tmp_path):
    model = ServedModel("smol", Path("/m/model.gguf"), Path("/m/adapter.gguf"), n_ctx=4096)
    assert ServedModel.from_config(model.to_config()) == model
