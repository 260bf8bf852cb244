"""Deploying to a real llama.cpp server Tuneyard runs, and to an OpenAI-compatible server."""

from __future__ import annotations

import os
import shutil
import signal
import time

import httpx
import pytest

from tests.helpers import (
    add_env,
    assert_fidelity_queued,
    deploy,
    deployed,
    make_customized,
    stop_executor,
    wait_for_job,
)
from tests.vllm_double import VllmDouble
from tuneyard.deploy.llamacpp import ManagedServer, list_served_models
from tuneyard.deploy.openai_compat import OpenAICompatClient
from tuneyard.errors import Invalid
from tuneyard.storage import Layout

LIVE = "/api/v1/live-models"
HELLO = [{"role": "user", "content": "Hello! Who are you?"}]


@pytest.fixture
def llama_env(client, auth, stop_servers) -> dict:
    return add_env(client, auth, name="local", kind="llama.cpp")


def wait_until_gone(pid: int, timeout: float = 10.0) -> None:
    """SIGKILL is asynchronous: wait until the process is really gone (or a zombie)."""
    import psutil

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return
        except psutil.NoSuchProcess:
            return
        time.sleep(0.05)
    raise AssertionError(f"process {pid} outlived SIGKILL for {timeout} s")


def chat(live: dict, messages=HELLO, max_tokens: int = 12) -> str:
    """A greedy answer by Tuneyard's own client of the live model: its endpoint, with the key
    of its environment."""
    from tuneyard.auth.service import local_principal
    from tuneyard.chat.backends import complete_chat, resolve_model
    from tuneyard.db import session_scope

    with session_scope() as session:
        model = resolve_model(session, local_principal(session), f"live:{live['id']}")
    params = {"max_tokens": max_tokens, "temperature": 0.0, "seed": 0}
    return complete_chat(model, messages, params)[0]


class TestLlamaCpp:
    @pytest.mark.slow
    @pytest.mark.fidelity_check
    def test_base_model_served_checked_and_removed(
        self, client, auth, worker, llama_env, tiny_base
    ):
        live = deployed(client, auth, "base", tiny_base, llama_env["id"], quantization="q8_0")
        assert_fidelity_queued(client, auth, live)
        folder = Layout().live_model_dir(live["id"])
        assert sorted(p.name for p in folder.iterdir()) == ["README.md", "model.gguf"]
        assert live["size_bytes"] == (folder / "model.gguf").stat().st_size
        assert live["model_card"]["template_parity"]["status"] == "match"
        assert live["endpoint_url"].startswith("http://127.0.0.1:")
        assert isinstance(chat(live), str)

        env = client.get(f"/api/v1/deploy-environments/{llama_env['id']}", headers=auth).json()
        assert env["port"] == int(live["endpoint_url"].rsplit(":", 1)[1].split("/")[0])
        tested = client.post(f"/api/v1/deploy-environments/{env['id']}/test", headers=auth)
        assert tested.json()["models"] == [live["model_id"]]

        # The server answers Tuneyard alone: a request without its key is refused.
        assert env["has_api_key"] is True
        for request in (
            lambda: httpx.get(f"{live['endpoint_url']}/models", timeout=10),
            lambda: httpx.post(
                f"{live['endpoint_url']}/chat/completions",
                json={"model": live["model_id"], "messages": HELLO, "max_tokens": 1},
                headers={"Authorization": "Bearer guessed"},
                timeout=10,
            ),
        ):
            assert request().status_code == 401
        with pytest.raises(Invalid, match="wants an API key"):
            OpenAICompatClient(live["endpoint_url"]).models()
        registered = client.post(f"{LIVE}/{live['id']}/register", json={}, headers=auth).json()
        entry_test = client.post(
            f"/api/v1/third-party-models/{registered['id']}/test", headers=auth
        ).json()
        assert entry_test["ok"] is True, entry_test

        # The server dies; a health check restarts it on the same port.
        server = ManagedServer(Layout().environment_dir(env["id"]))
        pid = int((server.state_dir / "server.pid").read_text())
        os.kill(pid, signal.SIGKILL)
        wait_until_gone(pid)
        check = client.post(f"{LIVE}/{live['id']}/check", headers=auth).json()
        assert check["ok"] is True and "restarted" in check["detail"], check
        assert isinstance(chat(live), str)

        assert client.delete(f"{LIVE}/{live['id']}", headers=auth).status_code == 204
        assert not folder.exists()
        assert not server.is_running()

    @pytest.mark.slow
    def test_adapter_is_served_on_its_base(
        self, client, auth, worker, llama_env, tiny_base, made_adapter_dir
    ):
        made = make_customized(tiny_base, made_adapter_dir)
        base_live = deployed(client, auth, "base", tiny_base, llama_env["id"])
        live = deployed(client, auth, "customized", made["id"], llama_env["id"])
        folder = Layout().live_model_dir(live["id"])
        assert {"model.gguf", "adapter.gguf"} <= {p.name for p in folder.iterdir()}
        # Both stay served by the one server; the adapter changes the greedy answer.
        assert chat(live, max_tokens=16) != chat(base_live, max_tokens=16)

    @pytest.mark.slow
    def test_two_deploys_at_once_are_both_served(
        self, client, auth, admin_password, llama_env, tiny_base
    ):
        from tuneyard.jobs.executor import Executor

        executor = Executor(concurrency=2)  # both deploy jobs run at the same time
        executor.start()
        try:
            accepted = [deploy(client, auth, "base", tiny_base, llama_env["id"]) for _ in "ab"]
            jobs = [wait_for_job(each["job_id"], timeout=240) for each in accepted]
        finally:
            stop_executor(executor)
        assert [job.status for job in jobs] == ["succeeded", "succeeded"], [j.error for j in jobs]
        lives = [client.get(f"{LIVE}/{each['id']}", headers=auth).json() for each in accepted]
        assert [live["status"] for live in lives] == ["live", "live"]
        server = ManagedServer(Layout().environment_dir(llama_env["id"]))
        assert sorted(list_served_models(server.base_url, server.api_key)) == sorted(
            live["model_id"] for live in lives
        )
        assert all(isinstance(chat(live), str) for live in lives)

    def test_failed_export_leaves_nothing(
        self, client, auth, worker, llama_env, tiny_model_dir, tmp_path
    ):
        folder = tmp_path / "broken"
        shutil.copytree(tiny_model_dir, folder)
        response = client.post(
            "/api/v1/base-models",
            json={"technical_name": "broken", "path": str(folder)},
            headers=auth,
        )
        assert response.status_code == 201, response.text
        (folder / "model.safetensors").write_bytes(b"not safetensors")
        accepted = deploy(
            client, auth, "base", response.json()["id"], llama_env["id"], quantization="q8_0"
        )
        job = wait_for_job(accepted["job_id"], timeout=120)
        assert job.status == "failed"
        live = client.get(f"{LIVE}/{accepted['id']}", headers=auth).json()
        assert live["status"] == "failed" and live["error"] == job.error
        live_dir = Layout().live_model_dir(accepted["id"])
        assert not live_dir.exists()
        assert [p.name for p in live_dir.parent.iterdir()] == []


@pytest.mark.slow
class TestSmolLM2OnLlamaCpp:
    """The real demo model, as f16, q8_0 and q4_K_M, answers chat completions from llama.cpp."""

    def test_quantized_deploys_answer(self, client, auth, worker, llama_env, smollm2_folder):
        response = client.post(
            "/api/v1/base-models",
            json={"technical_name": "smollm2", "path": str(smollm2_folder)},
            headers=auth,
        )
        assert response.status_code == 201, response.text
        base_id = response.json()["id"]
        question = [{"role": "user", "content": "What is the capital of France?"}]
        sizes = {}
        for quantization in ("no_quantization", "q8_0", "q4_K_M"):
            live = deployed(
                client, auth, "base", base_id, llama_env["id"], quantization=quantization
            )
            sizes[quantization] = live["size_bytes"]
            answer = chat(live, question, max_tokens=24)
            assert len(answer.split()) >= 3, (quantization, answer)
            if quantization == "no_quantization":
                # The f16 file generates what transformers does; quantized, this 135M model
                # may lose the fact (how much depends on the llama.cpp release).
                assert "Paris" in answer, answer
        assert sizes["q8_0"] < 0.6 * sizes["no_quantization"]
        assert sizes["q4_K_M"] < 0.8 * sizes["q8_0"]


class TestOpenAICompatible:
    def test_adapter_loaded_at_runtime_and_verified(
        self, client, auth, worker, tiny_base, tiny_model_dir, made_adapter_dir
    ):
        made = make_customized(tiny_base, made_adapter_dir)
        with VllmDouble(tiny_model_dir) as vllm:
            env = add_env(client, auth, name="vllm", kind="openai", url=vllm.url)
            base_live = deployed(client, auth, "base", tiny_base, env["id"])
            assert base_live["model_id"] == str(tiny_model_dir)
            live = deployed(client, auth, "customized", made["id"], env["id"])
            assert live["model_id"] == live["tag"] == live["name"]
            assert live["name"] in vllm.loras
            assert chat(live, max_tokens=8) != chat(base_live, max_tokens=8)

            assert client.delete(f"{LIVE}/{live['id']}", headers=auth).status_code == 204
            assert live["name"] not in vllm.loras

    def test_model_the_server_does_not_serve_fails_with_the_fix(
        self, client, auth, worker, tiny_base, tiny_model_dir, tmp_path
    ):
        # A server started with some other model folder.
        other = tmp_path / "other-model"
        shutil.copytree(tiny_model_dir, other)
        with VllmDouble(other) as vllm:
            env = add_env(client, auth, name="vllm", kind="openai", url=vllm.url)
            accepted = deploy(client, auth, "base", tiny_base, env["id"])
            job = wait_for_job(accepted["job_id"], timeout=60)
        assert job.status == "failed"
        assert "does not serve tiny" in job.error and "vllm serve" in job.error
