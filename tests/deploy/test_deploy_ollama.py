"""The Ollama client against the Ollama double, over real HTTP on 127.0.0.1."""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tracemalloc
from pathlib import Path

import httpx
import pytest

from tests.helpers import closed_port
from tests.ollama_double import OllamaDouble
from tuneyard.deploy import ollama as ollama_module
from tuneyard.deploy.ollama import (
    OllamaClient,
    OllamaError,
    check_adapter_base,
    check_importable,
    file_sha256,
)
from tuneyard.errors import Invalid, NotFound, Unavailable

CHATML = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"


@pytest.fixture
def ollama_client(ollama):
    with OllamaClient(ollama.url) as client:
        yield client


def write_model(folder: Path, architecture: str, model_type: str, weight_bytes: int) -> Path:
    """A model folder as Ollama reads it: config, tokenizer config, weights (random bytes)."""
    folder.mkdir(parents=True)
    config = {"architectures": [architecture], "model_type": model_type}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "tokenizer_config.json").write_text(json.dumps({"chat_template": CHATML}))
    (folder / "model.safetensors").write_bytes(os.urandom(weight_bytes))
    return folder


def write_adapter(folder: Path) -> Path:
    folder.mkdir(parents=True)
    config = {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["q_proj"]}
    (folder / "adapter_config.json").write_text(json.dumps(config))
    (folder / "adapter_model.safetensors").write_bytes(os.urandom(64 * 1024))
    return folder


def folder_files(folder: Path) -> dict[str, Path]:
    return {path.name: path for path in sorted(folder.iterdir())}


def write_gguf(path: Path, architecture: str, file_type: int) -> Path:
    """A GGUF header with general.architecture and general.file_type, then some bytes."""

    def string(text: str) -> bytes:
        raw = text.encode()
        return struct.pack("<Q", len(raw)) + raw

    header = b"GGUF" + struct.pack("<IQQ", 3, 0, 3)
    header += string("general.architecture") + struct.pack("<I", 8) + string(architecture)
    header += string("general.file_type") + struct.pack("<II", 4, file_type)
    header += string("tokenizer.ggml.tokens") + struct.pack("<IIQ", 9, 8, 2)
    header += string("<s>") + string("</s>")
    path.write_bytes(header + os.urandom(256 * 1024))
    return path


def posts(ollama: OllamaDouble) -> list[str]:
    return [path for method, path in ollama.requests if method == "POST"]


class TestFileSha256:
    def test_equals_hashlib_over_the_whole_file(self, tmp_path):
        path = tmp_path / "weights.bin"
        data = os.urandom(3 * 1024 * 1024 + 17)
        path.write_bytes(data)

        assert file_sha256(path) == f"sha256:{hashlib.sha256(data).hexdigest()}"
        # Chunks that do not divide the file still cover every byte.
        assert file_sha256(path, chunk_size=4093) == file_sha256(path)


class TestPushFiles:
    def test_hashes_each_file_once_and_skips_blobs_ollama_has(
        self, tmp_path, ollama, ollama_client, monkeypatch
    ):
        model = write_model(tmp_path / "model", "LlamaForCausalLM", "llama", 2 * 1024 * 1024)
        hashed: list[str] = []
        real_sha256 = ollama_module.file_sha256

        def counting_sha256(path, *args, **kwargs):
            hashed.append(path.name)
            return real_sha256(path, *args, **kwargs)

        monkeypatch.setattr(ollama_module, "file_sha256", counting_sha256)
        fractions: list[float] = []

        digests = ollama_client.push_files(
            folder_files(model), progress=lambda fraction, _msg: fractions.append(fraction)
        )

        assert sorted(hashed) == ["config.json", "model.safetensors", "tokenizer_config.json"]
        for name, digest in digests.items():
            assert digest == real_sha256(model / name)
            assert ollama.blob_path(digest).read_bytes() == (model / name).read_bytes()
        assert len(posts(ollama)) == 3
        assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0)

        ollama.requests.clear()
        assert ollama_client.push_files(folder_files(model)) == digests
        assert posts(ollama) == []
        assert [method for method, _path in ollama.requests] == ["HEAD"] * 3

    def test_upload_is_streamed_from_disk_not_held_in_memory(self, tmp_path, ollama_client):
        path = tmp_path / "model.safetensors"
        path.write_bytes(os.urandom(16 * 1024 * 1024))
        digest = file_sha256(path)
        sent: list[int] = []

        tracemalloc.start()
        try:
            ollama_client.push_blob(path, digest, progress=sent.append)
            _current, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()

        assert ollama_client.has_blob(digest)
        # Streaming holds a few 1 MB chunks at once (about 3 MB here, whatever the file's size).
        assert peak < 8 * 1024 * 1024, f"the upload held {peak} bytes in memory"
        assert len(sent) == 16 and sent[-1] == 16 * 1024 * 1024

    def test_a_wrong_digest_is_refused_and_nothing_is_stored(self, tmp_path, ollama, ollama_client):
        path = tmp_path / "model.safetensors"
        path.write_bytes(os.urandom(1024 * 1024))
        wrong = f"sha256:{hashlib.sha256(b'something else').hexdigest()}"

        with pytest.raises(OllamaError, match="digest mismatch") as refused:
            ollama_client.push_blob(path, wrong)

        assert wrong in refused.value.message and file_sha256(path) in refused.value.message
        assert list(ollama.blobs_dir.iterdir()) == []
        assert not ollama_client.has_blob(wrong)

    def test_a_malformed_digest_is_refused_before_sending(self, tmp_path, ollama, ollama_client):
        path = tmp_path / "model.safetensors"
        path.write_bytes(b"weights")

        with pytest.raises(Invalid, match="not a blob digest"):
            ollama_client.push_blob(path, "sha256:1234")
        assert ollama.requests == []
        # Ollama itself answers 400 to such a digest.
        response = httpx.post(f"{ollama.url}/api/blobs/sha256:1234", content=b"weights")
        assert response.status_code == 400
        assert response.json() == {"error": "invalid digest format"}


class TestCreate:
    def test_statuses_stream_in_order_and_end_with_success(self, tmp_path, ollama, ollama_client):
        model = write_model(tmp_path / "model", "LlamaForCausalLM", "llama", 1024 * 1024)
        digests = ollama_client.push_files(folder_files(model))
        statuses: list[dict] = []

        ollama_client.create(
            "tiny_s_ab12_d_cd34_no_quantization",
            files=digests,
            system="You are terse.",
            parameters={"stop": ["<|im_end|>"], "temperature": 0.2},
            on_status=statuses.append,
        )

        texts = [event["status"] for event in statuses]
        assert texts[0] == "converting model"
        assert "using autodetected template chatml" in texts
        assert texts.index("using autodetected template chatml") < texts.index("writing manifest")
        assert texts[-2:] == ["writing manifest", "success"]
        assert not any(text.startswith("quantizing") for text in texts)
        [listed] = ollama_client.list_models()
        assert listed["name"] == "tiny_s_ab12_d_cd34_no_quantization:latest"
        assert listed["details"]["family"] == "llama"
        assert listed["details"]["quantization_level"] == "F16"
        shown = ollama_client.show("tiny_s_ab12_d_cd34_no_quantization")
        assert shown["system"] == "You are terse."
        assert '"<|im_end|>"' in shown["parameters"] and "temperature" in shown["parameters"]

    def test_quantize_reports_the_quantizing_step(self, tmp_path, ollama, ollama_client):
        model = write_model(tmp_path / "model", "Qwen2ForCausalLM", "qwen2", 1024 * 1024)
        digests = ollama_client.push_files(folder_files(model))
        statuses: list[dict] = []

        ollama_client.create("plain", files=digests)
        ollama_client.create("small", files=digests, quantize="q4_K_M", on_status=statuses.append)

        quantizing = [e for e in statuses if e["status"] == "quantizing F16 model to Q4_K_M"]
        assert quantizing and quantizing[-1]["completed"] == quantizing[-1]["total"] > 0
        assert statuses[-1]["status"] == "success"
        sizes = {m["name"]: m for m in ollama_client.list_models()}
        assert sizes["small:latest"]["details"]["quantization_level"] == "Q4_K_M"
        assert sizes["small:latest"]["size"] < sizes["plain:latest"]["size"] / 3

    def test_an_unsupported_quantize_value_surfaces_ollamas_words(
        self, tmp_path, ollama, ollama_client
    ):
        model = write_model(tmp_path / "model", "LlamaForCausalLM", "llama", 1024)
        digests = ollama_client.push_files(folder_files(model))

        with pytest.raises(OllamaError, match="unsupported quantization type Q5_K_M"):
            ollama_client.create("odd", files=digests, quantize="q5_K_M")
        assert ollama_client.list_models() == []

    def test_a_quantized_gguf_cannot_be_quantized_again(self, tmp_path, ollama, ollama_client):
        f16 = write_gguf(tmp_path / "f16.gguf", "llama", file_type=1)
        q4 = write_gguf(tmp_path / "q4.gguf", "llama", file_type=15)
        statuses: list[dict] = []

        from_f16 = ollama_client.push_files({"model.gguf": f16})
        ollama_client.create("from-f16", files=from_f16, quantize="Q8_0", on_status=statuses.append)
        from_q4 = ollama_client.push_files({"model.gguf": q4})
        with pytest.raises(OllamaError, match="only supported for F16, BF16 and F32 models"):
            ollama_client.create("from-q4", files=from_q4, quantize="q8_0")

        texts = [event["status"] for event in statuses]
        assert texts[0] == "parsing GGUF" and "quantizing F16 model to Q8_0" in texts
        assert [m["name"] for m in ollama_client.list_models()] == ["from-f16:latest"]

    def test_a_blob_never_uploaded_is_refused(self, ollama_client):
        missing = f"sha256:{hashlib.sha256(b'never sent').hexdigest()}"

        with pytest.raises(OllamaError, match="blob not found for config.json") as refused:
            ollama_client.create("ghost", files={"config.json": missing})
        assert refused.value.ollama_status == 400

    def test_from_a_model_ollama_lacks_fails(self, ollama_client):
        with pytest.raises(OllamaError, match="pull model manifest"):
            ollama_client.create("child", from_="no-such-model")

    def test_without_stream_ollama_answers_one_object(self, tmp_path, ollama, ollama_client):
        model = write_model(tmp_path / "model", "LlamaForCausalLM", "llama", 1024)
        digests = ollama_client.push_files(folder_files(model))
        url = f"{ollama.url}/api/create"

        done = httpx.post(url, json={"model": "once", "files": digests, "stream": False})
        refused = httpx.post(
            url, json={"model": "twice", "files": digests, "quantize": "q2_K", "stream": False}
        )

        assert done.status_code == 200 and done.json() == {"status": "success"}
        assert refused.status_code == 500
        assert refused.json()["error"].startswith("unsupported quantization type Q2_K")


class TestArchitectureRules:
    def test_check_importable_names_the_architecture_and_the_supported_ones(self, tmp_path):
        gpt2 = write_model(tmp_path / "gpt2", "GPT2LMHeadModel", "gpt2", 1024)
        llama = write_model(tmp_path / "llama", "LlamaForCausalLM", "llama", 1024)

        with pytest.raises(Invalid) as refused:
            check_importable(gpt2)
        check_importable(llama)

        message = refused.value.message
        assert "GPT2LMHeadModel" in message
        assert "LlamaForCausalLM" in message and "Qwen2ForCausalLM" in message

    def test_ollama_refuses_an_architecture_it_cannot_convert(
        self, tmp_path, ollama, ollama_client
    ):
        gpt2 = write_model(tmp_path / "gpt2", "GPT2LMHeadModel", "gpt2", 1024)
        digests = ollama_client.push_files(folder_files(gpt2))

        with pytest.raises(OllamaError, match='unsupported architecture "GPT2LMHeadModel"'):
            ollama_client.create("gpt2", files=digests)
        assert ollama.models == {}

    def test_an_adapter_on_a_qwen2_base_is_refused_before_upload_and_by_ollama(
        self, tmp_path, ollama, ollama_client
    ):
        base = write_model(tmp_path / "qwen", "Qwen2ForCausalLM", "qwen2", 1024)
        adapter = write_adapter(tmp_path / "adapter")

        with pytest.raises(Invalid) as refused:
            check_adapter_base(base)
        assert "'qwen2'" in refused.value.message
        assert "only for gemma2 and llama base models" in refused.value.message

        ollama_client.create("qwen-base", files=ollama_client.push_files(folder_files(base)))
        adapter_digests = ollama_client.push_files(folder_files(adapter))
        with pytest.raises(OllamaError, match="unsupported architecture"):
            ollama_client.create("qwen-tuned", from_="qwen-base", adapters=adapter_digests)
        assert ollama.find("qwen-tuned") is None

    def test_an_adapter_on_a_llama_base_deploys_and_answers(self, tmp_path, ollama, ollama_client):
        base = write_model(tmp_path / "llama", "LlamaForCausalLM", "llama", 1024)
        adapter = write_adapter(tmp_path / "adapter")
        check_adapter_base(base)
        ollama_client.create("llama-base", files=ollama_client.push_files(folder_files(base)))
        statuses: list[dict] = []

        ollama_client.create(
            "llama-tuned",
            from_="llama-base",
            adapters=ollama_client.push_files(folder_files(adapter)),
            on_status=statuses.append,
        )

        assert "converting adapter" in [event["status"] for event in statuses]
        messages = [{"role": "user", "content": "hello"}]
        assert ollama_client.chat("llama-tuned", messages) == "[llama-tuned] hello (adapter)"
        assert ollama_client.chat("llama-base", messages) == "[llama-base] hello"


class TestModels:
    def test_delete_removes_and_a_second_delete_returns_false(
        self, tmp_path, ollama, ollama_client
    ):
        model = write_model(tmp_path / "model", "LlamaForCausalLM", "llama", 1024)
        ollama_client.create("gone", files=ollama_client.push_files(folder_files(model)))

        assert ollama_client.delete("gone") is True
        assert ollama_client.list_models() == []
        assert ollama_client.delete("gone") is False
        with pytest.raises(NotFound, match="gone"):
            ollama_client.show("gone")

    def test_chat_answers_through_the_openai_endpoint(self, tmp_path, ollama, ollama_client):
        model = write_model(tmp_path / "model", "LlamaForCausalLM", "llama", 1024)
        ollama_client.create("talker", files=ollama_client.push_files(folder_files(model)))
        messages = [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "What is 2+2?"},
        ]

        answer = ollama_client.chat("talker", messages, temperature=0)

        assert answer == "[talker] What is 2+2?"
        assert ("POST", "/v1/chat/completions") in ollama.requests
        [running] = httpx.get(f"{ollama.url}/api/ps").json()["models"]
        assert running["name"] == "talker:latest"
        with pytest.raises(NotFound, match="not found"):
            ollama_client.chat("nobody", messages)

    def test_streamed_chat_sends_server_sent_events_ending_in_done(
        self, tmp_path, ollama, ollama_client
    ):
        model = write_model(tmp_path / "model", "LlamaForCausalLM", "llama", 1024)
        ollama_client.create("streamer", files=ollama_client.push_files(folder_files(model)))
        body = {"model": "streamer", "messages": [{"role": "user", "content": "a b c"}]}

        with httpx.stream(
            "POST", f"{ollama.url}/v1/chat/completions", json={**body, "stream": True}
        ) as response:
            lines = [line for line in response.iter_lines() if line]

        assert lines[-1] == "data: [DONE]"
        chunks = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
        text = "".join(chunk["choices"][0]["delta"]["content"] for chunk in chunks)
        assert text == ollama_client.chat("streamer", body["messages"]) == "[streamer] a b c"
        assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
        listed = httpx.get(f"{ollama.url}/v1/models").json()["data"]
        assert [entry["id"] for entry in listed] == ["streamer:latest"]


class TestReachingOllama:
    def test_ping_and_version(self, ollama, ollama_client):
        assert ollama_client.ping() == "Ollama is running"
        assert ollama_client.version() == ollama.version

    def test_ping_on_a_closed_port_is_unavailable(self):
        port = closed_port()
        client = OllamaClient(f"http://127.0.0.1:{port}", timeout=5)

        with pytest.raises(Unavailable) as unreachable:
            client.ping()

        message = unreachable.value.message
        assert message.startswith(f"Cannot reach Ollama at http://127.0.0.1:{port}: ")
        assert "Is it running?" in message

    def test_a_server_that_is_not_ollama_is_unavailable(self, ollama):
        client = OllamaClient(f"{ollama.url}/not-ollama")

        with pytest.raises(Unavailable, match="not as Ollama does"):
            client.ping()

    def test_messages_never_carry_the_password_of_the_address(self):
        port = closed_port()
        client = OllamaClient(f"http://admin:s3cret@127.0.0.1:{port}")

        with pytest.raises(Unavailable) as unreachable:
            client.ping()
        assert "s3cret" not in unreachable.value.message
        assert f"http://127.0.0.1:{port}" in unreachable.value.message

    def test_an_address_without_scheme_is_invalid(self):
        with pytest.raises(Invalid, match="http://localhost:11434"):
            OllamaClient("localhost:11434")
