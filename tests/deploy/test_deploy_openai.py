"""The OpenAI-compatible client against the vLLM double: models, chat, runtime LoRA, failures."""

from __future__ import annotations

import json
import socket

import httpx
import pytest

from tests.helpers import closed_port
from tests.vllm_double import VllmDouble
from tuneyard.deploy.openai_compat import OpenAICompatClient
from tuneyard.errors import Invalid, Unavailable

QUESTION = [{"role": "user", "content": "Tell me about the sea."}]


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory, tiny_model_dir):
    """A LoRA on the tiny llama with random (not zero) B, so it changes what the model says."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    config = LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", init_lora_weights=False)
    out = tmp_path_factory.mktemp("tiny-lora")
    get_peft_model(model, config).save_pretrained(out)
    return out


@pytest.fixture
def vllm(tiny_model_dir):
    with VllmDouble(tiny_model_dir) as double:
        yield double


@pytest.fixture
def client(vllm) -> OpenAICompatClient:
    return OpenAICompatClient(vllm.url)


class TestModels:
    def test_lists_the_base_model_by_the_path_it_serves(self, client, tiny_model_dir):
        models = client.models()

        assert [m["id"] for m in models] == [str(tiny_model_dir)]
        assert models[0]["root"] == str(tiny_model_dir)
        assert models[0]["parent"] is None

    @pytest.mark.parametrize("suffix", ["", "/", "/v1", "/v1/"])
    def test_base_url_with_or_without_v1(self, vllm, tiny_model_dir, suffix):
        client = OpenAICompatClient(f"http://127.0.0.1:{vllm.port}{suffix}")

        assert client.base_url == vllm.url
        assert [m["id"] for m in client.models()] == [str(tiny_model_dir)]

    def test_not_a_url(self):
        with pytest.raises(Invalid, match="is not an http"):
            OpenAICompatClient("127.0.0.1:8000")


class TestChat:
    def test_greedy_chat_answers_the_same_twice(self, client, tiny_model_dir):
        first = client.chat(str(tiny_model_dir), QUESTION, max_tokens=12)

        assert first  # a random tiny model: any text, but text
        assert client.chat(str(tiny_model_dir), QUESTION, max_tokens=12) == first

    def test_unknown_model_is_refused_in_the_servers_words(self, client):
        with pytest.raises(Invalid, match="The model `nobody` does not exist"):
            client.chat("nobody", QUESTION)


class TestRuntimeLora:
    def test_loaded_adapter_answers_differently_and_unloads(
        self, client, vllm, tiny_model_dir, adapter_dir
    ):
        base = str(tiny_model_dir)
        base_answer = client.chat(base, QUESTION, max_tokens=12)

        client.load_lora_adapter("tuned", adapter_dir)

        listed = {m["id"]: m for m in client.models()}
        assert listed["tuned"]["parent"] == base
        assert listed["tuned"]["root"] == str(adapter_dir)
        adapter_answer = client.chat("tuned", QUESTION, max_tokens=12)
        assert adapter_answer
        assert adapter_answer != base_answer
        assert client.chat(base, QUESTION, max_tokens=12) == base_answer

        client.unload_lora_adapter("tuned")

        assert [m["id"] for m in client.models()] == [base]
        with pytest.raises(Invalid, match="The model `tuned` does not exist"):
            client.chat("tuned", QUESTION)

    def test_loading_a_name_twice_is_refused(self, client, adapter_dir):
        client.load_lora_adapter("tuned", adapter_dir)

        with pytest.raises(Invalid, match="HTTP 400.*'tuned' has already been loaded"):
            client.load_lora_adapter("tuned", adapter_dir)

    def test_unloading_an_unknown_adapter_is_refused(self, client):
        with pytest.raises(Invalid, match="The lora adapter 'ghost' cannot be found"):
            client.unload_lora_adapter("ghost")

    def test_a_folder_without_an_adapter_is_refused(self, client, tmp_path):
        with pytest.raises(Invalid, match=f"No adapter found for {tmp_path}") as refused:
            client.load_lora_adapter("tuned", tmp_path)
        assert "VLLM_ALLOW_RUNTIME_LORA_UPDATING" not in refused.value.message

    def test_server_without_runtime_lora_says_how_to_enable_it(self, tiny_model_dir, adapter_dir):
        with VllmDouble(tiny_model_dir, runtime_lora=False) as vllm:
            client = OpenAICompatClient(vllm.url)
            with pytest.raises(Invalid) as refused:
                client.load_lora_adapter("tuned", adapter_dir)
            with pytest.raises(Invalid, match="VLLM_ALLOW_RUNTIME_LORA_UPDATING=True"):
                client.unload_lora_adapter("tuned")
        assert "has no runtime LoRA loading" in refused.value.message
        assert "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True" in refused.value.message


class TestFailures:
    def test_closed_port_is_unavailable(self):
        client = OpenAICompatClient(f"http://127.0.0.1:{closed_port()}/v1")

        with pytest.raises(Unavailable, match="connection refused"):
            client.models()

    def test_unknown_host_names_dns(self):
        with pytest.raises(Unavailable, match=r"does not resolve \(DNS\)"):
            OpenAICompatClient("http://no-such-host.invalid:8000", timeout=5).models()

    def test_silent_server_times_out(self):
        with socket.socket() as silent:
            silent.bind(("127.0.0.1", 0))
            silent.listen()  # accepts connections, never answers
            client = OpenAICompatClient(f"http://127.0.0.1:{silent.getsockname()[1]}", timeout=0.5)
            with pytest.raises(Unavailable, match="did not answer within 0.5 s"):
                client.models()

    def test_wrong_api_key_is_refused_without_showing_it(self, tiny_model_dir):
        with VllmDouble(tiny_model_dir, api_key="secret") as vllm:
            with pytest.raises(Invalid) as refused:
                OpenAICompatClient(vllm.url, api_key="wrong-key-1234").models()
            with pytest.raises(Invalid, match="wants an API key"):
                OpenAICompatClient(vllm.url).models()
            assert OpenAICompatClient(vllm.url, api_key="secret").models()

        message = refused.value.message
        assert "refused the API key (HTTP 401)" in message
        assert "wrong-key-1234" not in message and "secret" not in message


class TestDoubleStreams:
    def test_streamed_deltas_add_up_to_the_answer(self, client, vllm, tiny_model_dir):
        body = {"model": str(tiny_model_dir), "messages": QUESTION, "max_tokens": 12}
        whole = client.chat(str(tiny_model_dir), QUESTION, max_tokens=12)

        with httpx.stream(
            "POST", f"{vllm.url}/chat/completions", json={**body, "stream": True, "temperature": 0}
        ) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            events = [line[len("data: ") :] for line in response.iter_lines() if line]

        assert events[-1] == "[DONE]"
        chunks = [json.loads(event) for event in events[:-1]]
        assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
        assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == whole
        assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
