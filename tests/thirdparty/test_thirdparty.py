"""Third-party models over the API: CRUD, validation, privacy, keys, and real connection tests."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from fastapi import Request
from starlette.concurrency import run_in_threadpool

from tests.helpers import closed_port, login
from tests.vllm_double import VllmDouble, _error
from tuneyard.db import session_scope
from tuneyard.models import ThirdPartyModel, User
from tuneyard.thirdparty import service

TP = "/api/v1/third-party-models"
KEY = "sk-top-secret-4711"


class EmbeddingVllmDouble(VllmDouble):
    """The vLLM double that also answers POST /v1/embeddings, as `vllm serve --task embed`
    does: one pooled vector (the mean of the last hidden states) per input."""

    def _build_app(self):
        app = super()._build_app()
        app.post("/v1/embeddings")(self._embed)
        return app

    async def _embed(self, request: Request):
        body = await request.json()
        name = body.get("model") or self.model_id
        model = self._models.get(name)
        if model is None:
            return _error(
                f"The model `{name}` does not exist.",
                "NotFoundError",
                HTTPStatus.NOT_FOUND,
                param="model",
            )
        vector = await run_in_threadpool(self._pool, model, str(body.get("input")))
        return {
            "object": "list",
            "model": name,
            "data": [{"index": 0, "object": "embedding", "embedding": vector}],
            "usage": {"prompt_tokens": 1, "total_tokens": 1},
        }

    def _pool(self, model, text: str) -> list[float]:
        import torch

        inputs = self._tokenizer(text, return_tensors="pt")
        with torch.no_grad():
            hidden = model(**inputs, output_hidden_states=True).hidden_states[-1]
        return hidden[0].mean(dim=0).tolist()


@pytest.fixture(scope="module")
def vllm(tiny_model_dir):
    with EmbeddingVllmDouble(tiny_model_dir, api_key="secret") as double:
        yield double


def add(client, auth, **body) -> dict:
    response = client.post(TP, json=body, headers=auth)
    assert response.status_code == 201, response.text
    return response.json()


def add_user(client, auth, username: str, role: str) -> dict[str, str]:
    password = f"pw-{username}-123456"
    response = client.post(
        "/api/v1/users",
        json={"username": username, "password": password, "role": role},
        headers=auth,
    )
    assert response.status_code == 201, response.text
    return login(client, password, username)


def run_test(client, auth, entry: dict) -> dict:
    response = client.post(f"{TP}/{entry['id']}/test", headers=auth)
    assert response.status_code == 200, response.text
    return response.json()


class TestEntries:
    def test_create_list_get_update_delete(self, client, auth):
        created = add(
            client,
            auth,
            name="local/vllm:tiny",
            provider="openai-compatible",
            model_name="tiny",
            base_url="http://127.0.0.1:8000/v1/",
            api_key=KEY,
            description="the tiny model",
        )
        assert created["base_url"] == "http://127.0.0.1:8000/v1"
        assert created["model_type"] == "chat" and created["private"] is False
        assert created["has_api_key"] is True and created["live_model_id"] is None

        listed = client.get(TP, headers=auth).json()
        assert listed["total"] == 1 and listed["items"][0]["id"] == created["id"]
        by_name = client.get(f"{TP}/local/vllm:tiny", headers=auth)
        assert by_name.status_code == 200 and by_name.json()["id"] == created["id"]

        patched = client.patch(
            f"{TP}/{created['id']}",
            json={"name": "tiny-2", "model_name": "tiny-chat", "api_key": ""},
            headers=auth,
        )
        assert patched.status_code == 200, patched.text
        body = patched.json()
        assert (body["name"], body["model_name"], body["has_api_key"]) == (
            "tiny-2",
            "tiny-chat",
            False,
        )
        assert body["base_url"] == "http://127.0.0.1:8000/v1"

        assert client.delete(f"{TP}/tiny-2", headers=auth).status_code == 204
        missing = client.get(f"{TP}/{created['id']}", headers=auth)
        assert missing.status_code == 404
        assert "tuneyard thirdparty list" in missing.json()["detail"]

    def test_known_providers_get_their_base_url_and_given_urls_are_kept(self, client, auth):
        deepseek = add(client, auth, name="ds", provider="deepseek", model_name="deepseek-chat")
        assert deepseek["base_url"] == "https://api.deepseek.com/v1"
        ollama = add(client, auth, name="ol", provider="ollama", model_name="smollm2")
        assert ollama["base_url"] == "http://127.0.0.1:11434/v1"
        # No /v1 is invented: some providers serve under another path.
        ark = add(
            client,
            auth,
            name="ark",
            provider="openai-compatible",
            model_name="m",
            base_url="https://ark.example.com/api/v3/",
        )
        assert ark["base_url"] == "https://ark.example.com/api/v3"

        switched = client.patch(f"{TP}/ds", json={"provider": "siliconflow"}, headers=auth)
        assert switched.json()["base_url"] == "https://api.siliconflow.cn/v1"
        custom = client.patch(f"{TP}/ds", json={"base_url": "http://proxy:9000/v1"}, headers=auth)
        assert custom.json()["base_url"] == "http://proxy:9000/v1"
        restored = client.patch(f"{TP}/ds", json={"base_url": ""}, headers=auth)
        assert restored.json()["base_url"] == "https://api.siliconflow.cn/v1"

    @pytest.mark.parametrize(
        ("body", "words"),
        [
            (
                {"provider": "anthropic"},
                "use one of: openai, deepseek, dashscope, siliconflow, ollama, openai-compatible",
            ),
            ({"provider": "openai-compatible"}, "needs its base URL"),
            ({"base_url": "ftp://models.example.com"}, "is not an http(s) address"),
            ({"base_url": "https://api.example.com/v1/chat/completions"}, "give https://api"),
            ({"name": "my model"}, "may use only letters, digits"),
            ({"name": "x" * 201}, "1 to 200 characters"),
            ({"model_type": "text"}, "use one of: chat, embedding"),
            ({"model_name": "  "}, "model_name must be the model id"),
        ],
    )
    def test_bad_input_says_what_to_fix(self, client, auth, body, words):
        request = {"name": "m", "provider": "openai", "model_name": "gpt-4o-mini", **body}
        response = client.post(TP, json=request, headers=auth)
        assert response.status_code == 422, response.text
        assert words in response.json()["detail"]
        assert client.get(TP, headers=auth).json()["total"] == 0

    def test_bad_update_changes_nothing(self, client, auth):
        entry = add(client, auth, name="m", provider="openai", model_name="gpt-4o-mini")
        response = client.patch(
            f"{TP}/m", json={"description": "new", "base_url": "not a url"}, headers=auth
        )
        assert response.status_code == 422
        assert client.get(f"{TP}/m", headers=auth).json() == entry

    def test_duplicate_name_is_a_conflict(self, client, auth):
        add(client, auth, name="m", provider="openai", model_name="gpt-4o-mini")
        response = client.post(
            TP, json={"name": "m", "provider": "deepseek", "model_name": "x"}, headers=auth
        )
        assert response.status_code == 409
        assert "choose another name" in response.json()["detail"]
        other = add(client, auth, name="n", provider="openai", model_name="gpt-4o")
        renamed = client.patch(f"{TP}/{other['id']}", json={"name": "m"}, headers=auth)
        assert renamed.status_code == 409

    def test_list_filters_by_type(self, client, auth):
        add(client, auth, name="chat", provider="openai", model_name="gpt-4o-mini")
        add(
            client,
            auth,
            name="embed",
            provider="openai",
            model_name="text-embedding-3-small",
            model_type="embedding",
        )
        embeddings = client.get(TP, params={"type": "embedding"}, headers=auth).json()
        assert [item["name"] for item in embeddings["items"]] == ["embed"]
        assert client.get(TP, headers=auth).json()["total"] == 2
        paged = client.get(TP, params={"limit": 1, "offset": 1}, headers=auth).json()
        assert paged["total"] == 2 and [item["name"] for item in paged["items"]] == ["embed"]
        bad = client.get(TP, params={"type": "text"}, headers=auth)
        assert bad.status_code == 422 and "chat, embedding" in bad.json()["detail"]

    def test_the_key_is_encrypted_and_never_returned(self, client, auth):
        created = client.post(
            TP,
            json={"name": "m", "provider": "openai", "model_name": "gpt-4o", "api_key": KEY},
            headers=auth,
        )
        responses = [
            created,
            client.get(TP, headers=auth),
            client.get(f"{TP}/m", headers=auth),
            client.patch(f"{TP}/m", json={"description": "d"}, headers=auth),
        ]
        for response in responses:
            assert response.status_code in (200, 201), response.text
            assert KEY not in response.text
        with session_scope() as session:
            row = session.get(ThirdPartyModel, created.json()["id"])
            assert row.api_key_encrypted and KEY not in row.api_key_encrypted
            assert service.third_party_api_key(session, row) == KEY

        replaced = client.patch(f"{TP}/m", json={"api_key": "sk-new-0815"}, headers=auth)
        assert "sk-new-0815" not in replaced.text and replaced.json()["has_api_key"] is True
        with session_scope() as session:
            row = session.get(ThirdPartyModel, created.json()["id"])
            assert service.third_party_api_key(session, row) == "sk-new-0815"

    def test_an_entry_registered_from_a_live_model_shows_it(self, client, auth):
        with session_scope() as session:
            admin = session.query(User).filter_by(username="admin").one()
            row = ThirdPartyModel(
                project_id=admin.project_id,
                name="tiny_d_ab12_q4_K_M",
                provider="ollama",
                model_type="chat",
                model_name="tiny_d_ab12_q4_K_M:latest",
                base_url="http://127.0.0.1:11434/v1",
                created_by=admin.id,
                live_model_id="4f1c2d3e-0000-4000-8000-000000000001",
            )
            session.add(row)
        shown = client.get(f"{TP}/tiny_d_ab12_q4_K_M", headers=auth).json()
        assert shown["live_model_id"] == "4f1c2d3e-0000-4000-8000-000000000001"
        listed = client.get(TP, headers=auth).json()["items"]
        assert [item["live_model_id"] for item in listed] == [shown["live_model_id"]]


class TestWhoMaySee:
    def test_private_entries_are_absent_for_other_members(self, client, auth):
        mine = add(client, auth, name="mine", provider="openai", model_name="gpt-4o", private=True)
        shared = add(client, auth, name="shared", provider="openai", model_name="gpt-4o")
        mia = add_user(client, auth, "mia", "member")

        listed = client.get(TP, headers=mia).json()
        assert [item["name"] for item in listed["items"]] == ["shared"]
        assert listed["total"] == 1
        for path in (f"{TP}/{mine['id']}", f"{TP}/mine"):
            assert client.get(path, headers=mia).status_code == 404
            assert client.patch(path, json={"description": "x"}, headers=mia).status_code == 404
            assert client.post(f"{path}/test", headers=mia).status_code == 404
            assert client.delete(path, headers=mia).status_code == 404
        assert client.get(f"{TP}/mine", headers=auth).json()["private"] is True

        # The shared entry is everyone's to use; only its creator or an admin changes it.
        for refused in (
            client.patch(f"{TP}/shared", json={"description": "by mia"}, headers=mia),
            client.patch(f"{TP}/shared", json={"private": True}, headers=mia),
            client.delete(f"{TP}/{shared['id']}", headers=mia),
        ):
            assert refused.status_code == 403
            assert refused.json()["detail"] == (
                "Only the user who added shared or an admin can change or delete it; add a "
                "third-party model of your own instead."
            )
        assert client.get(f"{TP}/shared", headers=auth).json() == shared
        own = add(client, mia, name="mias", provider="openai", model_name="gpt-4o")
        edited = client.patch(f"{TP}/mias", json={"description": "by mia"}, headers=mia)
        assert edited.status_code == 200 and edited.json()["description"] == "by mia"
        by_admin = client.patch(f"{TP}/mias", json={"description": "tidied"}, headers=auth)
        assert by_admin.status_code == 200
        assert client.delete(f"{TP}/{own['id']}", headers=auth).status_code == 204
        assert client.get(TP, headers=auth).json()["total"] == 2

    def test_viewers_read_but_neither_test_nor_change(self, client, auth):
        entry = add(
            client,
            auth,
            name="down",
            provider="openai-compatible",
            model_name="m",
            base_url=f"http://127.0.0.1:{closed_port()}/v1",
        )
        viewer = add_user(client, auth, "vic", "viewer")
        assert client.get(TP, headers=viewer).json()["total"] == 1
        assert client.get(f"{TP}/down", headers=viewer).status_code == 200
        # A test calls out with the stored key: a member's.
        tested = client.post(f"{TP}/{entry['id']}/test", headers=viewer)
        assert tested.status_code == 403 and "member role" in tested.json()["detail"]
        created = client.post(
            TP, json={"name": "n", "provider": "openai", "model_name": "m"}, headers=viewer
        )
        assert created.status_code == 403 and "member role" in created.json()["detail"]
        patch = client.patch(f"{TP}/down", json={"description": "x"}, headers=viewer)
        assert patch.status_code == 403
        assert client.delete(f"{TP}/down", headers=viewer).status_code == 403
        assert client.get(f"{TP}/down", headers=auth).json() == entry


class Capture:
    """An HTTP server on loopback that answers every request as an OpenAI-compatible server
    would and keeps the Authorization header each one carried."""

    def __init__(self):
        seen = self.authorizations = []

        class Handler(BaseHTTPRequestHandler):
            def _answer(self):
                length = int(self.headers.get("content-length") or 0)
                self.rfile.read(length)
                seen.append(self.headers.get("authorization"))
                body = {"object": "list", "data": [{"id": "m"}]}
                if self.path.endswith("/chat/completions"):
                    body = {"choices": [{"index": 0, "message": {"content": "hi"}}]}
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _answer  # noqa: N815

            def log_message(self, *_args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def capture():
    server = Capture()
    yield server
    server.server.shutdown()


def live_model_of(environment_url: str, api_key: str, model_id: str) -> str:
    """A live model on an OpenAI-compatible environment with a key, as a deploy leaves it."""
    from tuneyard.models import DeployEnvironment, LiveModel
    from tuneyard.secrets import encrypt_secret

    with session_scope() as session:
        admin = session.query(User).filter_by(username="admin").one()
        environment = DeployEnvironment(
            project_id=admin.project_id,
            name="vllm",
            kind="openai",
            url=environment_url,
            api_key_encrypted=encrypt_secret(api_key),
        )
        session.add(environment)
        session.flush()
        live = LiveModel(
            project_id=admin.project_id,
            name="tiny_d_ab12_no_quantization",
            tag="tiny_d_ab12_no_quantization",
            environment_id=environment.id,
            source_kind="complete",
            source_id="4f1c2d3e-0000-4000-8000-000000000002",
            source_name="tiny",
            quantization="no_quantization",
            status="live",
            endpoint_url=environment_url,
            model_id=model_id,
        )
        session.add(live)
        session.flush()
        return live.id


class TestKeysGoOnlyWhereTheyWereMeantFor:
    def test_a_member_cannot_redirect_a_shared_entry(self, client, auth, capture):
        add(client, auth, name="gpt", provider="openai", model_name="gpt-4o", api_key=KEY)
        mia = add_user(client, auth, "mia", "member")
        for change in ({"base_url": capture.url}, {"provider": "ollama"}):
            refused = client.patch(f"{TP}/gpt", json=change, headers=mia)
            assert refused.status_code == 403
        shown = client.get(f"{TP}/gpt", headers=auth).json()
        assert (shown["base_url"], shown["has_api_key"]) == ("https://api.openai.com/v1", True)
        assert capture.authorizations == []

    def test_a_new_address_drops_the_key_unless_one_comes_with_it(self, client, auth, capture):
        mia = add_user(client, auth, "mia", "member")
        add(client, mia, name="gpt", provider="openai", model_name="m", api_key=KEY)
        moved = client.patch(f"{TP}/gpt", json={"base_url": capture.url}, headers=mia)
        assert moved.status_code == 200 and moved.json()["has_api_key"] is False
        assert run_test(client, mia, moved.json())["ok"] is True
        assert capture.authorizations and set(capture.authorizations) == {None}

        add(client, auth, name="ds", provider="deepseek", model_name="m", api_key=KEY)
        switched = client.patch(
            f"{TP}/ds",
            json={"provider": "openai-compatible", "base_url": capture.url},
            headers=auth,
        )
        assert switched.json()["has_api_key"] is False
        rekeyed = client.patch(
            f"{TP}/ds",
            json={"base_url": capture.url + "/", "api_key": "sk-for-capture"},
            headers=auth,
        )
        assert rekeyed.json()["has_api_key"] is True
        run_test(client, auth, rekeyed.json())
        assert f"Bearer {KEY}" not in capture.authorizations
        assert "Bearer sk-for-capture" in capture.authorizations

    def test_a_registered_live_model_lends_its_environments_key_only_to_its_endpoint(
        self, client, auth, vllm, capture
    ):
        live_id = live_model_of(vllm.url, "secret", vllm.model_id)
        mia = add_user(client, auth, "mia", "member")
        registered = client.post(f"/api/v1/live-models/{live_id}/register", json={}, headers=mia)
        assert registered.status_code == 201, registered.text
        entry = registered.json()
        with session_scope() as session:
            assert session.get(ThirdPartyModel, entry["id"]).api_key_encrypted is None
        assert run_test(client, mia, entry)["ok"] is True  # the double wants "secret"

        for who in (mia, auth):
            for change in ({"base_url": capture.url}, {"provider": "ollama"}, {"api_key": "x"}):
                refused = client.patch(f"{TP}/{entry['id']}", json=change, headers=who)
                assert refused.status_code == 409
                assert refused.json()["detail"] == (
                    f"{entry['name']} was registered from live model {entry['name']}: its "
                    "address and key follow that live model. Add a third-party model of your "
                    "own for another address."
                )
        assert client.delete(f"/api/v1/live-models/{live_id}", headers=mia).status_code == 204
        moved = client.patch(f"{TP}/{entry['id']}", json={"base_url": capture.url}, headers=mia)
        assert moved.status_code == 200, moved.text
        run_test(client, mia, moved.json())
        assert capture.authorizations and set(capture.authorizations) == {None}


class TestConnection:
    def test_chat_model_with_the_right_key_answers(self, client, auth, vllm):
        entry = add(
            client,
            auth,
            name="tiny",
            provider="openai-compatible",
            model_name=vllm.model_id,
            base_url=vllm.url,
            api_key="secret",
        )
        before = len(vllm.requests)
        result = run_test(client, auth, entry)
        assert result["ok"] is True, result
        assert result["detail"].startswith(f"{vllm.model_id} answered a chat request at ")
        assert isinstance(result["latency_ms"], int) and result["latency_ms"] >= 0
        assert vllm.requests[before:] == [("GET", "/v1/models"), ("POST", "/v1/chat/completions")]

    def test_a_wrong_key_is_refused_without_showing_it(self, client, auth, vllm):
        entry = add(
            client,
            auth,
            name="tiny",
            provider="openai-compatible",
            model_name=vllm.model_id,
            base_url=vllm.url,
            api_key="wrong-key-31337",
        )
        result = run_test(client, auth, entry)
        assert result["ok"] is False and result["latency_ms"] is None
        assert "The API key was refused" in result["detail"] and "HTTP 401" in result["detail"]
        assert "wrong-key-31337" not in result["detail"]

    def test_a_missing_key_is_named(self, client, auth, vllm):
        entry = add(
            client,
            auth,
            name="tiny",
            provider="openai-compatible",
            model_name=vllm.model_id,
            base_url=vllm.url,
        )
        result = run_test(client, auth, entry)
        assert result["ok"] is False
        assert "needs an API key (HTTP 401) and none is set" in result["detail"]

    def test_an_unknown_model_lists_what_the_server_serves(self, client, auth, vllm):
        entry = add(
            client,
            auth,
            name="gpt",
            provider="openai-compatible",
            model_name="gpt-4o",
            base_url=vllm.url,
            api_key="secret",
        )
        result = run_test(client, auth, entry)
        assert result["ok"] is False
        assert result["detail"] == (
            f"The server at {vllm.url} does not know model 'gpt-4o'; it serves: {vllm.model_id}."
        )

    def test_a_base_url_without_the_api_path_says_to_check_it(self, client, auth, vllm):
        entry = add(
            client,
            auth,
            name="tiny",
            provider="openai-compatible",
            model_name=vllm.model_id,
            base_url=vllm.url.removesuffix("/v1"),
            api_key="secret",
        )
        result = run_test(client, auth, entry)
        assert result["ok"] is False
        assert "/chat/completions does not exist (HTTP 404)" in result["detail"]
        assert "usually ends in /v1" in result["detail"]

    def test_a_closed_port_fails_naming_the_host(self, client, auth):
        port = closed_port()
        entry = add(
            client,
            auth,
            name="down",
            provider="openai-compatible",
            model_name="m",
            base_url=f"http://127.0.0.1:{port}/v1",
            api_key=KEY,
        )
        result = run_test(client, auth, entry)
        assert result["ok"] is False and result["latency_ms"] is None
        assert result["detail"].startswith(f"Cannot reach 127.0.0.1:{port}: connection refused")

    def test_an_unknown_host_is_named(self, client, auth):
        entry = add(
            client,
            auth,
            name="nowhere",
            provider="openai-compatible",
            model_name="m",
            base_url="http://models.tuneyard.invalid/v1",
        )
        result = run_test(client, auth, entry)
        assert result["ok"] is False
        assert (
            "Cannot reach models.tuneyard.invalid: the host name does not resolve"
            in (result["detail"])
        )

    def test_embedding_model_answers_with_its_dimensions(self, client, auth, vllm):
        entry = add(
            client,
            auth,
            name="embed",
            provider="openai-compatible",
            model_type="embedding",
            model_name=vllm.model_id,
            base_url=vllm.url,
            api_key="secret",
        )
        before = len(vllm.requests)
        result = run_test(client, auth, entry)
        assert result["ok"] is True, result
        assert result["detail"].endswith("(64 dimensions).")
        assert vllm.requests[before:] == [("POST", "/v1/embeddings")]

    def test_unknown_embedding_model_lists_what_the_server_serves(self, client, auth, vllm):
        entry = add(
            client,
            auth,
            name="embed",
            provider="openai-compatible",
            model_type="embedding",
            model_name="bge-m3",
            base_url=vllm.url,
            api_key="secret",
        )
        result = run_test(client, auth, entry)
        assert result["ok"] is False
        assert f"does not know model 'bge-m3'; it serves: {vllm.model_id}." in result["detail"]

    def test_a_server_without_embeddings_says_so(self, client, auth, tiny_model_dir):
        with VllmDouble(tiny_model_dir) as chat_only:
            entry = add(
                client,
                auth,
                name="embed",
                provider="openai-compatible",
                model_type="embedding",
                model_name=chat_only.model_id,
                base_url=chat_only.url,
            )
            result = run_test(client, auth, entry)
        assert result["ok"] is False
        assert f"{chat_only.url}/embeddings does not exist (HTTP 404)" in result["detail"]


@pytest.fixture
def llamacpp_server(smollm2_gguf):
    """A real llama-cpp-python server with --embedding, on the SmolLM2 GGUF."""
    port = closed_port()
    command = [
        sys.executable,
        "-m",
        "tuneyard.deploy.llamacpp_server",
        "--model",
        str(smollm2_gguf),
        "--embedding",
        "true",
        "--n_ctx",
        "256",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"{url}/models", timeout=1)
                break
            except httpx.TransportError:
                assert process.poll() is None and time.monotonic() < deadline
                time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_per_token_vectors_are_not_taken_for_an_embedding(client, auth, llamacpp_server):
    # A chat model served with --embedding by llama-cpp-python has no pooling layer: the
    # server answers a list of per-token vectors, which no knowledge base can use.
    entry = add(
        client,
        auth,
        name="smollm2-embed",
        provider="openai-compatible",
        model_type="embedding",
        model_name="smollm2",
        base_url=llamacpp_server,
    )
    result = run_test(client, auth, entry)
    assert result["ok"] is False
    assert "answered with one vector per token, not one per input" in result["detail"]
