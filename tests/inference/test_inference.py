"""The inference process over real HTTP: one process for the module, tiny models, answers checked
against transformers' and PEFT's own generate."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import time
from pathlib import Path

import httpx
import pytest

from tuneyard.config import Settings
from tuneyard.inference.engine import DTYPE_NAME
from tuneyard.inference.process import (
    ensure_inference,
    inference_state_file,
    running_inference,
    stop_inference,
)

# Computation alone: runs once, on SQLite's run; the database is out of reach.
pytestmark = pytest.mark.nodb

HELLO = [{"role": "user", "content": "Hello, who are you?"}]
# The tiny model takes about 6.4 MB in bf16 and the small one about 3.2 MB: each fits alone,
# both together do not.
BUDGET_GB = 0.008


@pytest.fixture(scope="module")
def inference(tmp_path_factory, tiny_model_dir) -> Settings:
    """Settings of one inference process for the whole module, in a data dir of its own."""
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("inference-data"), inference_memory_gb=BUDGET_GB
    )
    ensure_inference(settings)
    yield settings
    stop_inference(settings)


@pytest.fixture(scope="module")
def adapter_dir(made_adapter_dir) -> Path:
    """A LoRA of the tiny model (B nonzero) with the tokenizer files."""
    return made_adapter_dir


@pytest.fixture(scope="module")
def small_model_dir(tmp_path_factory, tiny_model_dir) -> Path:
    """A second llama, narrower than the tiny one (hidden size 32), same tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig.from_pretrained(tiny_model_dir)
    config.hidden_size, config.intermediate_size = 32, 64
    config.num_attention_heads, config.num_key_value_heads = 2, 1
    torch.manual_seed(2)
    out = tmp_path_factory.mktemp("small-llama")
    LlamaForCausalLM(config).save_pretrained(out)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copyfile(tiny_model_dir / name, out / name)
    return out


@pytest.fixture(scope="module")
def broken_model_dir(tmp_path_factory, small_model_dir) -> Path:
    """A model whose embedding has 100 rows while its tokenizer makes ids up to 49151."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(small_model_dir)
    model.resize_token_embeddings(100)
    out = tmp_path_factory.mktemp("broken")
    model.save_pretrained(out)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copyfile(small_model_dir / name, out / name)
    return out


def reference_generate(model, tokenizer, messages, max_new_tokens: int) -> tuple[str, int]:
    """transformers' own greedy answer to the chat-templated prompt, and its token count."""
    import torch

    ids = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )["input_ids"]
    with torch.inference_mode():
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
        )
    new = out[0, ids.shape[1] :]
    return tokenizer.decode(new, skip_special_tokens=True), len(new)


def load_reference(model_dir: Path):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, DTYPE_NAME))
    return model.eval()


def endpoint(settings: Settings) -> tuple[str, dict[str, str]]:
    url, token = ensure_inference(settings)
    return url, {"Authorization": f"Bearer {token}"}


def chat(settings: Settings, model_dir: Path, adapter: Path | None = None, **body) -> dict:
    response = chat_response(settings, model_dir, adapter, **body)
    assert response.status_code == 200, response.text
    return response.json()


def chat_response(
    settings: Settings, model_dir, adapter=None, timeout: float = 60, **body
) -> httpx.Response:
    url, headers = endpoint(settings)
    body = {
        "model": "anything",
        "messages": HELLO,
        "max_tokens": 16,
        "tuneyard_model": {
            "model_dir": str(model_dir),
            "adapter_dir": str(adapter) if adapter else None,
        },
        **body,
    }
    return httpx.post(f"{url}/v1/chat/completions", json=body, headers=headers, timeout=timeout)


def answer(completion: dict) -> str:
    return completion["choices"][0]["message"]["content"]


def health(settings: Settings) -> dict:
    url, headers = endpoint(settings)
    response = httpx.get(f"{url}/health", headers=headers, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def stream_lines(settings: Settings, model_dir: Path, **body) -> list[str]:
    url, headers = endpoint(settings)
    body = {
        "model": "m",
        "messages": HELLO,
        "max_tokens": 16,
        "stream": True,
        "tuneyard_model": {"model_dir": str(model_dir)},
        **body,
    }
    with httpx.stream(
        "POST", f"{url}/v1/chat/completions", json=body, headers=headers, timeout=60
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        return [line for line in response.iter_lines() if line]


class TestAnswers:
    def test_greedy_chat_is_transformers_greedy_generate(self, inference, tiny_model_dir):
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
        expected, count = reference_generate(load_reference(tiny_model_dir), tokenizer, HELLO, 16)

        completion = chat(inference, tiny_model_dir, temperature=0)

        assert answer(completion) == expected
        assert completion["model"] == "anything"
        assert completion["choices"][0]["finish_reason"] == "length"
        prompt = tokenizer.apply_chat_template(HELLO, add_generation_prompt=True)["input_ids"]
        assert completion["usage"]["prompt_tokens"] == len(prompt)
        assert completion["usage"]["completion_tokens"] == count == 16

    def test_customized_model_is_peft_unmerged_and_differs_from_base(
        self, inference, tiny_model_dir, adapter_dir
    ):
        from openai import OpenAI
        from peft import PeftModel
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(adapter_dir)
        peft_model = PeftModel.from_pretrained(load_reference(tiny_model_dir), adapter_dir)
        expected, _count = reference_generate(peft_model.eval(), tokenizer, HELLO, 16)
        url, token = ensure_inference(inference)
        client = OpenAI(base_url=f"{url}/v1", api_key=token)
        local = {"model_dir": str(tiny_model_dir), "adapter_dir": str(adapter_dir)}

        customized = client.chat.completions.create(
            model="tiny-custom",
            messages=HELLO,
            max_tokens=16,
            temperature=0,
            extra_body={"tuneyard_model": local},
        )
        base = answer(chat(inference, tiny_model_dir))

        assert customized.choices[0].message.content == expected
        assert expected != base
        entry = next(e for e in health(inference)["loaded"] if e["key"] == str(tiny_model_dir))
        assert entry["adapters"] == [str(adapter_dir)]
        # The base still answers as the base with the adapter loaded beside it.
        assert answer(chat(inference, tiny_model_dir)) == base

    def test_stream_concatenates_to_the_whole_answer(self, inference, tiny_model_dir):
        whole = chat(inference, tiny_model_dir, max_tokens=24)

        lines = stream_lines(inference, tiny_model_dir, max_tokens=24)

        assert lines[-1] == "data: [DONE]"
        chunks = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
        assert all(chunk["object"] == "chat.completion.chunk" for chunk in chunks)
        text = "".join(chunk["choices"][0]["delta"].get("content", "") for chunk in chunks)
        assert text == answer(whole)
        assert len(chunks) > 3  # the text came in pieces
        last = chunks[-1]
        assert last["choices"][0]["finish_reason"] == "length"
        assert last["usage"] == whole["usage"]

    def test_seed_repeats_sampling(self, inference, tiny_model_dir):
        def sample(seed: int) -> str:
            return answer(chat(inference, tiny_model_dir, temperature=1.0, seed=seed))

        first = sample(7)

        assert sample(7) == first
        assert sample(8) != first

    def test_stop_strings_cut_the_text(self, inference, tiny_model_dir):
        full = answer(chat(inference, tiny_model_dir, max_tokens=24))
        stop = full[len(full) // 2 : len(full) // 2 + 3]

        completion = chat(inference, tiny_model_dir, max_tokens=24, stop=["never-said", stop])
        lines = stream_lines(inference, tiny_model_dir, max_tokens=24, stop=stop)

        assert answer(completion) == full[: full.index(stop)]
        assert completion["choices"][0]["finish_reason"] == "stop"
        assert completion["usage"]["completion_tokens"] < 24
        chunks = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
        streamed = "".join(chunk["choices"][0]["delta"].get("content", "") for chunk in chunks)
        assert streamed == answer(completion)

    def test_model_without_chat_template_reads_messages_as_text(
        self, inference, tiny_model_dir, tmp_path
    ):
        from transformers import AutoTokenizer

        plain = tmp_path / "plain"
        shutil.copytree(tiny_model_dir, plain, ignore=shutil.ignore_patterns("chat_template*"))
        tokenizer = AutoTokenizer.from_pretrained(plain)
        assert not tokenizer.chat_template
        messages = [
            {"role": "system", "content": "You answer briefly."},
            {"role": "user", "content": "Name a colour."},
        ]

        completion = chat(inference, plain, messages=messages)

        text = "You answer briefly.\n\nName a colour."
        assert completion["usage"]["prompt_tokens"] == len(tokenizer(text)["input_ids"])


class TestCache:
    def test_second_request_does_not_reload(self, inference, tiny_model_dir):
        chat(inference, tiny_model_dir)
        loads = health(inference)["loads"]

        chat(inference, tiny_model_dir, stream=False)
        stream_lines(inference, tiny_model_dir)

        after = health(inference)
        assert after["loads"] == loads
        assert [e["key"] for e in after["loaded"]].count(str(tiny_model_dir)) == 1

    def test_least_recently_used_model_is_evicted(self, inference, tiny_model_dir, small_model_dir):
        chat(inference, tiny_model_dir)
        loads = health(inference)["loads"]

        chat(inference, small_model_dir)
        after_small = health(inference)
        chat(inference, tiny_model_dir)
        after_tiny = health(inference)

        assert after_small["budget_bytes"] == BUDGET_GB * 10**9
        small_time = [e["key"] for e in after_small["loaded"]]
        tiny_time = [e["key"] for e in after_tiny["loaded"]]
        assert str(small_model_dir) in small_time and str(tiny_model_dir) not in small_time
        assert str(tiny_model_dir) in tiny_time and str(small_model_dir) not in tiny_time
        assert after_tiny["loads"] == loads + 2

    def test_disconnected_stream_frees_the_model(self, inference, tiny_model_dir):
        url, headers = endpoint(inference)
        body = {
            "messages": HELLO,
            "max_tokens": 20000,
            "stream": True,
            "tuneyard_model": {"model_dir": str(tiny_model_dir)},
        }
        with httpx.stream(
            "POST", f"{url}/v1/chat/completions", json=body, headers=headers, timeout=60
        ) as response:
            lines = response.iter_lines()
            assert next(lines).startswith("data: ")

        # Had the 20000-token generation gone on, this request would wait minutes for the model
        # and time out.
        assert chat(inference, tiny_model_dir, max_tokens=4, timeout=60)["choices"]

    def test_abandoned_request_frees_the_model(self, inference, tiny_model_dir):
        with pytest.raises(httpx.ReadTimeout):
            chat_response(inference, tiny_model_dir, max_tokens=20000, timeout=1)

        # As above: a generation still running would hold the model past this request's timeout.
        assert chat(inference, tiny_model_dir, max_tokens=4, timeout=60)["choices"]


class TestErrors:
    def test_requests_without_the_token_are_refused(self, inference, tiny_model_dir):
        url, _headers = endpoint(inference)
        body = {"messages": HELLO, "tuneyard_model": {"model_dir": str(tiny_model_dir)}}

        missing = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=10)
        wrong = httpx.get(
            f"{url}/health",
            headers={"Authorization": "Bearer not-the-token"},
            timeout=10,
        )

        assert missing.status_code == 401
        assert "token" in missing.json()["error"]["message"]
        assert wrong.status_code == 401

    def test_missing_folder_is_404(self, inference, tmp_path):
        response = chat_response(inference, tmp_path / "gone")

        assert response.status_code == 404
        assert f"no model folder at {tmp_path / 'gone'}" in response.json()["error"]["message"]

    def test_folder_that_is_not_a_model(self, inference, tmp_path, adapter_dir):
        empty = chat_response(inference, tmp_path)
        adapter_as_model = chat_response(inference, adapter_dir)

        assert empty.status_code == 400
        assert "has no config.json" in empty.json()["error"]["message"]
        assert adapter_as_model.status_code == 400
        assert "send it as adapter_dir" in adapter_as_model.json()["error"]["message"]

    def test_adapter_for_another_base_is_refused_and_the_base_still_answers(
        self, inference, small_model_dir, adapter_dir
    ):
        before = answer(chat(inference, small_model_dir))

        response = chat_response(inference, small_model_dir, adapter_dir)

        assert response.status_code == 400
        message = response.json()["error"]["message"]
        assert "does not fit the base model" in message
        sizes = re.search(r"has (\d+) features where the base has (\d+)", message)
        found, expected = sizes.groups()
        assert found != expected
        assert answer(chat(inference, small_model_dir)) == before

    def test_failed_generation_answers_with_its_reason(self, inference, broken_model_dir):
        whole = chat_response(inference, broken_model_dir)
        lines = stream_lines(inference, broken_model_dir)

        assert whole.status_code == 500
        assert "index out of range" in whole.json()["error"]["message"]
        assert (
            "index out of range" in json.loads(lines[-1].removeprefix("data: "))["error"]["message"]
        )

    def test_request_without_a_model(self, inference):
        url, headers = endpoint(inference)

        response = httpx.post(
            f"{url}/v1/chat/completions", json={"messages": HELLO}, headers=headers, timeout=10
        )

        assert response.status_code == 400
        assert "tuneyard_model" in response.json()["error"]["message"]


class TestProcess:
    def test_state_file_is_private(self, inference):
        state_file = inference_state_file(inference)

        assert state_file.stat().st_mode & 0o777 == 0o600
        assert set(json.loads(state_file.read_text())) == {"pid", "port", "token"}

    @pytest.mark.slow
    def test_killed_process_is_started_again(self, inference, tiny_model_dir):
        old_pid = json.loads(inference_state_file(inference).read_text())["pid"]
        os.kill(old_pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while running_inference(inference) is not None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert running_inference(inference) is None

        ensure_inference(inference)

        new_pid = json.loads(inference_state_file(inference).read_text())["pid"]
        assert new_pid != old_pid
        assert health(inference)["loads"] == 0
        assert chat(inference, tiny_model_dir)["usage"]["completion_tokens"] == 16
