"""Chat with every kind of model, side by side, sessions, and the OpenAI-compatible gateway."""

from __future__ import annotations

import json

import pytest

from tests.helpers import (
    CHAT,
    FAST,
    add_env,
    closed_port,
    deployed,
    finish,
    make_customized,
    saved,
    start,
    upload,
)
from tests.vllm_double import VllmDouble
from tuneyard.config import Settings

CHAT_API = "/api/v1/chat"
GREEDY = {"temperature": 0, "max_tokens": 12}
TRAINED_PROMPT = "What is the code word number 3?"


@pytest.fixture(scope="module")
def inference(tmp_path_factory):
    """One inference process for the module; every test's chats go to it."""
    from tuneyard.inference.process import start_inference, stop_inference

    settings = Settings(data_dir=tmp_path_factory.mktemp("inference"))
    address = start_inference(settings)
    yield address
    stop_inference(settings)


@pytest.fixture(autouse=True)
def use_inference(inference, monkeypatch):
    import tuneyard.inference.process as process

    monkeypatch.setattr(process, "ensure_inference", lambda settings=None: inference)


def ask(client, auth, model: str, text: str, **params) -> dict:
    response = client.post(
        CHAT_API,
        json={
            "model": model,
            "messages": [{"role": "user", "content": text}],
            "params": {**GREEDY, **params},
            "stream": False,
        },
        headers=auth,
    )
    assert response.status_code == 200, response.text
    return response.json()


def sse_events(response) -> list:
    events = []
    for line in response.text.splitlines():
        if line.startswith("data: "):
            data = line[6:]
            events.append(data if data == "[DONE]" else json.loads(data))
    return events


class TestLocalModels:
    def test_base_streams_and_is_stored(self, client, auth, tiny_base):
        response = client.post(
            CHAT_API,
            json={
                "model": f"base:{tiny_base}",
                "messages": [{"role": "user", "content": "Hello there"}],
                "params": GREEDY,
            },
            headers=auth,
        )
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("text/event-stream")
        events = sse_events(response)
        assert events[-1] == "[DONE]"
        done = events[-2]
        assert done["done"] is True and done["model"] == f"base:{tiny_base}"
        assert "".join(e["delta"] for e in events if "delta" in e) == done["content"]
        assert done["usage"]["completion_tokens"] >= 1

        # Same prompt, not streamed: the same greedy answer.
        again = ask(client, auth, "tiny", "Hello there")
        assert again["content"] == done["content"]

        stored = client.get(f"{CHAT_API}/sessions/{done['session_id']}", headers=auth).json()
        assert stored["title"] == "Hello there"
        assert [(m["role"], m["content"]) for m in stored["messages"]] == [
            ("user", "Hello there"),
            ("assistant", done["content"]),
        ]
        assert stored["messages"][1]["model"] == f"base:{tiny_base}"

    @pytest.mark.backend_free
    @pytest.mark.slow
    def test_trained_adapter_changes_the_answer(self, client, auth, worker, tiny_base):
        dataset = upload(client, auth, "codes", CHAT)
        training = finish(client, auth, start(client, auth, tiny_base, dataset, **FAST))
        customized = training["customized_model_id"]
        base_answer = ask(client, auth, f"base:{tiny_base}", TRAINED_PROMPT)["content"]
        tuned = ask(client, auth, f"customized:{customized}", TRAINED_PROMPT)["content"]
        assert tuned != base_answer
        # The base is still itself after the adapter ran on it (adapters are not merged).
        assert ask(client, auth, f"base:{tiny_base}", TRAINED_PROMPT)["content"] == base_answer

    @pytest.mark.backend_free
    def test_complete_model_answers_like_its_adapter(
        self, client, auth, worker, tiny_base, made_adapter_dir
    ):
        made = make_customized(tiny_base, made_adapter_dir)
        complete = saved(client, auth, made["id"], dtype="fp32")
        merged = ask(client, auth, f"complete:{complete['id']}", "Say something nice.")
        adapter = ask(client, auth, f"customized:{made['id']}", "Say something nice.")
        assert merged["content"] == adapter["content"]

    def test_session_continues_with_history(self, client, auth, tiny_base):
        first = ask(client, auth, "tiny", "My name is Ada.")
        response = client.post(
            CHAT_API,
            json={
                "model": "tiny",
                "messages": [{"role": "user", "content": "What is my name?"}],
                "session_id": first["session_id"],
                "params": GREEDY,
                "stream": False,
            },
            headers=auth,
        )
        assert response.status_code == 200, response.text
        stored = client.get(f"{CHAT_API}/sessions/{first['session_id']}", headers=auth).json()
        assert [m["role"] for m in stored["messages"]] == ["user", "assistant"] * 2
        assert [m["position"] for m in stored["messages"]] == [0, 1, 2, 3]

        listed = client.get(f"{CHAT_API}/sessions", headers=auth).json()
        assert listed["total"] == 1
        renamed = client.patch(
            f"{CHAT_API}/sessions/{first['session_id']}", json={"title": "Names"}, headers=auth
        )
        assert renamed.json()["title"] == "Names"
        deleted = client.delete(f"{CHAT_API}/sessions/{first['session_id']}", headers=auth)
        assert deleted.status_code == 204
        assert client.get(f"{CHAT_API}/sessions", headers=auth).json()["total"] == 0

    @pytest.mark.backend_free
    def test_side_by_side(self, client, auth, tiny_base, made_adapter_dir):
        made = make_customized(tiny_base, made_adapter_dir)
        response = client.post(
            f"{CHAT_API}/compare",
            json={
                "models": [f"base:{tiny_base}", f"customized:{made['id']}"],
                "messages": [{"role": "user", "content": "Say something nice."}],
                "params": GREEDY,
            },
            headers=auth,
        )
        assert response.status_code == 200, response.text
        events = [e for e in sse_events(response) if e != "[DONE]"]
        done = {e["index"]: e for e in events if e.get("done")}
        assert sorted(done) == [0, 1]
        for index in (0, 1):
            pieces = "".join(e["delta"] for e in events if e["index"] == index and "delta" in e)
            assert pieces == done[index]["content"]
        assert done[0]["content"] != done[1]["content"]
        assert done[1]["model"] == f"customized:{made['id']}"

    def test_unknown_model_and_bad_params(self, client, auth, tiny_base):
        missing = client.post(
            CHAT_API,
            json={"model": "nope", "messages": [{"role": "user", "content": "hi"}]},
            headers=auth,
        )
        assert missing.status_code == 404
        assert "No model 'nope'" in missing.json()["detail"]
        bad = client.post(
            CHAT_API,
            json={
                "model": "tiny",
                "messages": [{"role": "user", "content": "hi"}],
                "params": {"temperature": 5},
            },
            headers=auth,
        )
        assert bad.status_code == 422
        assert "temperature" in bad.json()["detail"]


class TestRemoteModels:
    def test_live_llamacpp_and_its_registered_entry(
        self, client, auth, worker, tiny_base, stop_servers
    ):
        env = add_env(client, auth, name="local", kind="llama.cpp")
        live = deployed(client, auth, "base", tiny_base, env["id"], quantization="q8_0")
        answer = ask(client, auth, f"live:{live['id']}", "Hello there")
        assert answer["content"] and answer["model"] == f"live:{live['id']}"
        entry = client.post(f"/api/v1/live-models/{live['id']}/register", headers=auth).json()
        registered = ask(client, auth, f"third-party:{entry['id']}", "Hello there")
        assert registered["content"] == answer["content"]

    def test_third_party_with_a_key_never_shows_it(self, client, auth, tiny_model_dir, data_dir):
        with VllmDouble(tiny_model_dir, api_key="sk-very-secret") as vllm:
            created = client.post(
                "/api/v1/third-party-models",
                json={
                    "name": "remote",
                    "provider": "openai-compatible",
                    "model_name": str(tiny_model_dir),
                    "base_url": vllm.url,
                    "api_key": "sk-very-secret",
                },
                headers=auth,
            )
            assert created.status_code == 201, created.text
            answer = client.post(
                CHAT_API,
                json={
                    "model": "third-party:remote",
                    "messages": [{"role": "user", "content": "Hello"}],
                    "params": GREEDY,
                },
                headers=auth,
            )
            assert answer.status_code == 200
            assert sse_events(answer)[-2]["done"] is True
            outputs = [created.text, answer.text]
            outputs.append(client.get("/api/v1/third-party-models", headers=auth).text)
            outputs.append(client.get("/v1/models", headers=auth).text)
        assert all("sk-very-secret" not in text for text in outputs)
        for path in data_dir.rglob("*"):
            if path.is_file() and path.suffix in (".txt", ".log", ".json", ".db"):
                assert b"sk-very-secret" not in path.read_bytes(), path

    def test_unreachable_third_party_fails_with_the_reason(self, client, auth):
        client.post(
            "/api/v1/third-party-models",
            json={
                "name": "gone",
                "provider": "openai-compatible",
                "model_name": "m",
                "base_url": f"http://127.0.0.1:{closed_port()}/v1",
            },
            headers=auth,
        )
        response = client.post(
            CHAT_API,
            json={"model": "gone", "messages": [{"role": "user", "content": "hi"}]},
            headers=auth,
        )
        events = sse_events(response)
        assert events[-2]["error"] == "Unavailable"
        assert "Cannot reach" in events[-2]["detail"]
        # The question is kept; the empty answer records why it failed.
        session_id = client.get(f"{CHAT_API}/sessions", headers=auth).json()["items"][0]["id"]
        stored = client.get(f"{CHAT_API}/sessions/{session_id}", headers=auth).json()
        assert stored["messages"][0]["content"] == "hi"
        assert "Cannot reach" in stored["messages"][1]["usage"]["error"]


class TestGateway:
    def test_openai_client_lists_and_streams(self, client, auth, tiny_base):
        import openai

        token = client.post("/api/v1/tokens", json={"name": "gateway"}, headers=auth).json()[
            "token"
        ]
        sdk = openai.OpenAI(base_url="http://testserver/v1", api_key=token, http_client=client)
        names = {model.id: model for model in sdk.models.list()}
        assert "tiny" in names
        stream = sdk.chat.completions.create(
            model="tiny",
            messages=[{"role": "user", "content": "Hello there"}],
            temperature=0,
            max_tokens=12,
            stream=True,
        )
        streamed = "".join(
            chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices
        )
        whole = sdk.chat.completions.create(
            model="tiny",
            messages=[{"role": "user", "content": "Hello there"}],
            temperature=0,
            max_tokens=12,
        )
        assert whole.choices[0].message.content == streamed
        assert whole.usage.completion_tokens >= 1
        with pytest.raises(openai.NotFoundError):
            sdk.chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])

    def test_gateway_needs_a_token(self, client):
        assert client.get("/v1/models").status_code == 401
