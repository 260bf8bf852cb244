"""Bad input anywhere in the API is answered with a documented error that says what to fix,
never a server error, and nothing of it is kept (cases the schemathesis run found)."""

from __future__ import annotations

import pytest

from tests.helpers import PG_URL, closed_port

INT64_MAX = 2**63 - 1


def post_raw(client, auth, path: str, text: str):
    """A JSON body as written (Python's parser takes NaN and Infinity, a client can send them)."""
    headers = {**auth, "content-type": "application/json"}
    return client.post(path, content=text.encode(), headers=headers)


def count(client, auth, path: str) -> int:
    return client.get(path, headers=auth).json()["total"]


class TestDocumentedErrors:
    def test_every_operation_documents_the_error_shape(self, client):
        spec = client.get("/openapi.json").json()
        error = {"$ref": "#/components/schemas/ErrorOut"}
        gateway_error = {"$ref": "#/components/schemas/OpenAIErrorOut"}
        readiness = {"$ref": "#/components/schemas/Readiness"}
        ready_path = "/api/v1/health/ready"
        for path, operations in spec["paths"].items():
            expected = gateway_error if path.startswith("/v1/") else error
            for method, operation in operations.items():
                for status in ("400", "401", "403", "404", "409", "413", "422", "503"):
                    documented = operation["responses"].get(status, {}).get("content", {})
                    # A probe's "not ready" is its readiness report, which names the reasons.
                    wanted = readiness if (path, status) == (ready_path, "503") else expected
                    assert documented.get("application/json", {}).get("schema") == wanted, (
                        method,
                        path,
                        status,
                    )

    def test_gateway_errors_come_in_openai_shape(self, client, auth):
        missing_token = client.get("/v1/models")
        assert missing_token.status_code == 401
        assert missing_token.json()["error"]["type"] == "invalid_api_key"
        no_messages = client.post("/v1/chat/completions", json={"model": "x"}, headers=auth)
        assert no_messages.status_code == 422
        error = no_messages.json()["error"]
        assert error["type"] == "invalid_request_error" and error["code"] == "Invalid"
        assert "messages" in error["message"]


class TestNumbers:
    @pytest.mark.parametrize("path", ["/api/v1/datasets", "/api/v1/live-models", "/api/v1/jobs"])
    def test_offset_beyond_what_the_database_holds_is_refused(self, client, auth, path):
        huge = client.get(f"{path}?offset=18446744073709551617", headers=auth)
        assert huge.status_code == 422
        assert huge.json()["detail"] == (
            f"offset: Input should be less than or equal to {INT64_MAX}"
        )
        largest = client.get(f"{path}?offset={INT64_MAX}", headers=auth)
        assert largest.status_code == 200
        assert largest.json()["items"] == []

    @pytest.mark.parametrize(
        ("params", "field"),
        [({"seed": 2**32}, "seed"), ({"max_steps": 2**31}, "max_steps")],
    )
    def test_training_numbers_past_what_they_reach_are_refused(self, client, auth, params, field):
        response = client.post(
            "/api/v1/profiles", json={"name": "big", "params": params}, headers=auth
        )
        assert response.status_code == 422
        assert f"{field}: Input should be less than or equal to" in response.json()["detail"]
        assert count(client, auth, "/api/v1/profiles") == 0

    @pytest.mark.parametrize("value", ["Infinity", "-Infinity", "NaN"])
    def test_non_finite_parameters_are_refused(self, client, auth, value):
        body = f'{{"name": "p", "params": {{"max_grad_norm": {value}}}}}'
        response = post_raw(client, auth, "/api/v1/profiles", body)
        assert response.status_code == 422
        assert "max_grad_norm: Input should be a finite number" in response.json()["detail"]
        assert count(client, auth, "/api/v1/profiles") == 0


class TestTexts:
    def test_a_nul_character_is_bad_input_where_it_cannot_be_stored(self, client, auth):
        response = client.post(
            "/api/v1/profiles", json={"name": "p", "description": "a\u0000b"}, headers=auth
        )
        looked_up = client.get("/api/v1/datasets/a%00b", headers=auth)
        if PG_URL:  # PostgreSQL keeps no NUL in a text
            assert response.status_code == 422
            assert response.json()["detail"].startswith("A value in the request cannot be stored")
            assert count(client, auth, "/api/v1/profiles") == 0
            assert looked_up.status_code == 422
        else:
            assert response.status_code == 201
            assert looked_up.status_code == 404

    def test_renaming_a_profile_to_a_taken_name_is_a_conflict(self, client, auth):
        client.post("/api/v1/profiles", json={"name": "fast"}, headers=auth)
        slow = client.post("/api/v1/profiles", json={"name": "slow"}, headers=auth).json()
        response = client.patch(
            f"/api/v1/profiles/{slow['id']}",
            json={"name": "fast", "description": "", "params": {}},
            headers=auth,
        )
        assert response.status_code == 409
        assert response.json()["detail"] == (
            "A profile named 'fast' already exists; choose another name."
        )
        assert client.get(f"/api/v1/profiles/{slow['id']}", headers=auth).json() == slow


class TestOutboundAddresses:
    @pytest.mark.parametrize(
        ("field", "value", "words"),
        [
            ("api_key", "sk-ключ", "The API key cannot be sent"),
            ("base_url", "http://a..b/v1", "is not an http(s) address"),
            ("base_url", "http://a\u00adb/v1", "is not an http(s) address"),
        ],
    )
    def test_third_party_values_that_cannot_be_sent_are_refused(
        self, client, auth, field, value, words
    ):
        body = {
            "name": "remote",
            "provider": "openai-compatible",
            "model_name": "m",
            "base_url": f"http://127.0.0.1:{closed_port()}/v1",
            field: value,
        }
        response = client.post("/api/v1/third-party-models", json=body, headers=auth)
        assert response.status_code == 422
        assert words in response.json()["detail"]
        assert count(client, auth, "/api/v1/third-party-models") == 0

    @pytest.mark.parametrize(
        ("field", "value", "words"),
        [
            ("api_key", "clé secrète", "The API key cannot be sent"),
            ("url", "http://a..b:11434", "is not an http(s) address"),
        ],
    )
    def test_environment_values_that_cannot_be_sent_are_refused(
        self, client, auth, field, value, words
    ):
        body = {"name": "ol", "kind": "ollama", "url": "http://127.0.0.1:11434", field: value}
        response = client.post("/api/v1/deploy-environments", json=body, headers=auth)
        assert response.status_code == 422
        assert words in response.json()["detail"]
        assert count(client, auth, "/api/v1/deploy-environments") == 0
