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
from tests.ollama_double import FAMILIES, OllamaDouble
from tuneyard.deploy import ollama as ollama_module
from tuneyard.deploy.ollama import (
    OllamaClient,
    OllamaError,
    adapter_merge_reason,
    file_sha256,
    parse_version,
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

    def test_a_wrong_digest_is_refused_and_kept_under_its_real_one(
        self, tmp_path, ollama, ollama_client
    ):
        path = tmp_path / "model.safetensors"
        path.write_bytes(os.urandom(1024 * 1024))
        wrong = f"sha256:{hashlib.sha256(b'something else').hexdigest()}"

        with pytest.raises(OllamaError, match="digest mismatch") as refused:
            ollama_client.push_blob(path, wrong)

        assert wrong in refused.value.message and file_sha256(path) in refused.value.message
        assert not ollama_client.has_blob(wrong)
        assert ollama_client.has_blob(file_sha256(path))

    def test_a_blob_ollama_has_is_answered_without_reading_the_body(
        self, tmp_path, ollama, ollama_client
    ):
        path = tmp_path / "model.gguf"
        path.write_bytes(os.urandom(64 * 1024))
        digest = file_sha256(path)
        ollama_client.push_blob(path, digest)

        again = httpx.post(f"{ollama.url}/api/blobs/{digest}", content=b"other bytes")

        assert again.status_code == 200
        assert ollama.blob_uploads[-1] == {"digest": digest, "bytes": 0, "status": 200}
        assert ollama.blob_path(digest).read_bytes() == path.read_bytes()

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
    @pytest.mark.parametrize("ollama_version", FAMILIES[:2])
    def test_mistral_safetensors_are_refused_since_0_6_5(self, tmp_path, ollama, ollama_client):
        mistral = write_model(tmp_path / "mistral", "MistralForCausalLM", "mistral", 1024)
        digests = ollama_client.push_files(folder_files(mistral))

        with pytest.raises(OllamaError, match='unsupported architecture "MistralForCausalLM"'):
            ollama_client.create("mistral", files=digests)
        assert ollama.models == {}

    def test_ollama_refuses_an_architecture_it_cannot_convert(
        self, tmp_path, ollama, ollama_client
    ):
        gpt2 = write_model(tmp_path / "gpt2", "GPT2LMHeadModel", "gpt2", 1024)
        digests = ollama_client.push_files(folder_files(gpt2))

        with pytest.raises(OllamaError, match='unsupported architecture "GPT2LMHeadModel"') as no:
            ollama_client.create("gpt2", files=digests)
        assert "deploy the model to a llama.cpp environment" in no.value.message
        assert ollama.models == {}

    def test_a_safetensors_adapter_on_a_qwen2_base_is_refused(
        self, tmp_path, ollama, ollama_client
    ):
        base = write_model(tmp_path / "qwen", "Qwen2ForCausalLM", "qwen2", 1024)
        adapter = write_adapter(tmp_path / "adapter")
        ollama_client.create("qwen-base", files=ollama_client.push_files(folder_files(base)))
        adapter_digests = ollama_client.push_files(folder_files(adapter))

        with pytest.raises(OllamaError, match="unsupported architecture"):
            ollama_client.create("qwen-tuned", from_="qwen-base", adapters=adapter_digests)
        assert ollama.find("qwen-tuned") is None

    def test_a_safetensors_adapter_on_a_llama_base_deploys_and_answers(
        self, tmp_path, ollama, ollama_client
    ):
        base = write_model(tmp_path / "llama", "LlamaForCausalLM", "llama", 1024)
        adapter = write_adapter(tmp_path / "adapter")
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


class TestReleaseFamilies:
    """What differs between Ollama releases, against the double playing each family."""

    @pytest.mark.parametrize("ollama_version", FAMILIES)
    def test_an_error_before_output_is_an_http_status_since_0_12_6(self, ollama):
        def create(body: dict) -> tuple[int, list[dict]]:
            with httpx.stream("POST", f"{ollama.url}/api/create", json=body) as response:
                response.read()
            lines = [json.loads(line) for line in response.text.splitlines() if line.strip()]
            return response.status_code, lines

        before = create({"model": "m"})
        after = create({"model": "m", "from": "no-such-model"})

        missing = "neither 'from' or 'files' was specified"
        if ollama.release >= (0, 12, 6):
            assert before == (400, [{"error": missing}])
        else:
            assert before == (200, [{"error": missing, "status": 400}])
        # "pulling manifest" came first: the error is a line, with a status only before 0.12.6.
        status, lines = after
        assert status == 200 and lines[0] == {"status": "pulling manifest"}
        error = {"error": "pull model manifest: file does not exist"}
        assert lines[-1] == (error if ollama.release >= (0, 12, 6) else {**error, "status": 500})
        with OllamaClient(ollama.url) as client, pytest.raises(OllamaError, match=missing) as no:
            client.create("m")
        assert no.value.ollama_status == 400

    @pytest.mark.parametrize("ollama_version", FAMILIES)
    def test_a_gguf_with_another_file_fails(self, tmp_path, ollama, ollama_client):
        gguf = write_gguf(tmp_path / "model.gguf", "llama", file_type=1)
        config = tmp_path / "config.json"
        config.write_text("{}")
        digests = ollama_client.push_files({"model.gguf": gguf, "config.json": config})

        with pytest.raises(OllamaError, match="invalid file magic") as refused:
            ollama_client.create("mixed", files=digests)
        # parsing GGUF streamed first, so on every release it is an error line.
        assert refused.value.ollama_status == (400 if ollama.release < (0, 12, 6) else None)
        assert ollama.models == {}

    @pytest.mark.parametrize("ollama_version", FAMILIES)
    def test_a_gguf_alone_is_imported_and_shown_on_every_release(
        self, tmp_path, ollama, ollama_client
    ):
        gguf = write_gguf(tmp_path / "model.gguf", "qwen2", file_type=15)
        digests = ollama_client.push_files({"model.gguf": gguf})
        statuses: list[dict] = []

        ollama_client.create("q", files=digests, on_status=statuses.append)

        details = ollama_client.show("q")["details"]
        assert (details["family"], details["quantization_level"]) == ("qwen2", "Q4_K_M")
        validated = "validating GGUF model" in [event["status"] for event in statuses]
        assert validated is (ollama.release >= (0, 30, 0))
        assert (ollama.find("q").model_digest != digests["model.gguf"]) is validated

    @pytest.mark.parametrize("ollama_version", ["0.34.1"])
    def test_0_34_1_refuses_quantizing_a_gguf_before_output_and_says_what_to_do(
        self, tmp_path, ollama, ollama_client
    ):
        gguf = write_gguf(tmp_path / "model.gguf", "llama", file_type=1)
        digests = ollama_client.push_files({"model.gguf": gguf})

        with pytest.raises(OllamaError) as refused:
            ollama_client.create("q", files=digests, quantize="q4_K_M")

        assert refused.value.ollama_status == 400
        assert "create-time quantization is only supported for safetensors imports" in (
            refused.value.message
        )
        assert "which quantizes before uploading" in refused.value.message

    @pytest.mark.parametrize("ollama_version", ["0.34.1"])
    def test_0_34_1_refuses_safetensors_adapters_and_says_what_to_do(
        self, tmp_path, ollama, ollama_client
    ):
        base = write_gguf(tmp_path / "model.gguf", "llama", file_type=1)
        ollama_client.create("base", files=ollama_client.push_files({"model.gguf": base}))
        adapter = ollama_client.push_files(folder_files(write_adapter(tmp_path / "adapter")))

        with pytest.raises(OllamaError, match="supplied file was not in GGUF format") as refused:
            ollama_client.create("tuned", from_="base", adapters=adapter)
        assert refused.value.ollama_status == 400
        assert "save the customized model as a complete model" in refused.value.message

    @pytest.mark.parametrize("ollama_version", ["0.12.6"])
    def test_a_gguf_lora_on_qwen3_fails_at_load_before_0_24(self, tmp_path, ollama, ollama_client):
        base = write_gguf(tmp_path / "model.gguf", "qwen3", file_type=1)
        lora = write_gguf(tmp_path / "adapter.gguf", "qwen3", file_type=0)
        ollama_client.create("base", files=ollama_client.push_files({"model.gguf": base}))
        ollama_client.create(
            "tuned", from_="base", adapters=ollama_client.push_files({"adapter.gguf": lora})
        )

        with pytest.raises(OllamaError, match="llama runner process has terminated"):
            ollama_client.chat("tuned", [{"role": "user", "content": "hi"}])
        assert adapter_merge_reason(parse_version(ollama.version), "qwen3") is not None
        assert adapter_merge_reason(parse_version("0.24.0"), "qwen3") is None


@pytest.mark.nodb
class TestVersions:
    def test_parse_version(self):
        assert parse_version("0.12.6") == (0, 12, 6)
        assert parse_version("v0.30.0-rc2") == (0, 30, 0)
        assert parse_version("0.0.0") is None and parse_version("main") is None

    def test_when_an_adapter_is_merged(self):
        assert adapter_merge_reason((0, 6, 8), "llama") is None
        assert adapter_merge_reason((0, 34, 1), "qwen3") is None
        assert "fixed in 0.24" in (adapter_merge_reason((0, 23, 9), "qwen3") or "")
        assert "release number" in (adapter_merge_reason(None, "llama") or "")


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
