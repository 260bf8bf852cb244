"""Deployment environments and deploy requests over the API: validation, preflight, parity."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.helpers import add_env, closed_port, login
from tuneyard.basemodels.gotemplate import render_go_template, split_actions
from tuneyard.db import session_scope
from tuneyard.deploy.parity import check_parity
from tuneyard.deploy.service import live_model_name
from tuneyard.errors import Invalid
from tuneyard.models import DeployEnvironment, LiveModel

ENVS = "/api/v1/deploy-environments"
LIVE = "/api/v1/live-models"


def count_live() -> int:
    with session_scope() as session:
        return session.query(LiveModel).count()


class TestEnvironments:
    def test_create_list_update_delete(self, client, auth):
        created = add_env(
            client,
            auth,
            name="local-ollama",
            kind="ollama",
            url="http://127.0.0.1:11434/",
            api_key="sk-secret-value",
        )
        assert created["url"] == "http://127.0.0.1:11434"
        assert created["has_api_key"] is True
        assert "sk-secret-value" not in str(created)
        managed = add_env(client, auth, name="here", kind="llama.cpp")
        assert managed["managed"] is True and managed["url"] is None

        listed = client.get(ENVS, headers=auth).json()
        assert listed["total"] == 2
        assert [item["name"] for item in listed["items"]] == ["here", "local-ollama"]
        assert "sk-secret-value" not in str(listed)
        with session_scope() as session:
            stored = session.get(DeployEnvironment, created["id"]).api_key_encrypted
        assert stored and "sk-secret-value" not in stored

        patched = client.patch(
            f"{ENVS}/{created['id']}", json={"name": "ollama-2", "api_key": ""}, headers=auth
        )
        assert patched.status_code == 200, patched.text
        assert patched.json()["name"] == "ollama-2" and patched.json()["has_api_key"] is False
        assert client.get(f"{ENVS}/ollama-2", headers=auth).json()["id"] == created["id"]

        assert client.delete(f"{ENVS}/{created['id']}", headers=auth).status_code == 204
        assert client.get(f"{ENVS}/{created['id']}", headers=auth).status_code == 404

    @pytest.mark.parametrize(
        ("body", "words"),
        [
            ({"name": "x", "kind": "triton", "url": "http://h"}, "ollama, llama.cpp, openai"),
            ({"name": "x", "kind": "ollama"}, "needs the server's address"),
            ({"name": "x", "kind": "ollama", "url": "ftp://h"}, "not an http(s) address"),
            ({"name": "bad name", "kind": "llama.cpp"}, "only letters, digits"),
            ({"name": "x", "kind": "openai", "url": "http://h", "port": 9}, "port is for"),
        ],
    )
    def test_bad_input_says_what_to_fix(self, client, auth, body, words):
        response = client.post(ENVS, json=body, headers=auth)
        assert response.status_code == 422, response.text
        assert words in response.json()["detail"]
        assert client.get(ENVS, headers=auth).json()["total"] == 0

    def test_keys_stay_with_the_address_they_were_given_for(self, client, auth):
        remote = add_env(
            client, auth, name="vllm", kind="openai", url="http://127.0.0.1:8000/v1", api_key="k"
        )
        moved = client.patch(
            f"{ENVS}/{remote['id']}", json={"url": "http://10.0.0.9:8000/v1"}, headers=auth
        )
        assert moved.status_code == 200 and moved.json()["has_api_key"] is False
        # Tuneyard makes the key of a llama.cpp server it runs, and keeps it.
        managed = add_env(client, auth, name="here", kind="llama.cpp")
        assert managed["has_api_key"] is True
        refused = client.patch(f"{ENVS}/{managed['id']}", json={"api_key": "mine"}, headers=auth)
        assert refused.status_code == 422
        assert refused.json()["detail"] == (
            "Environment here runs its own llama.cpp server, whose key Tuneyard makes and keeps; "
            "there is no key to set."
        )

    def test_duplicate_name_is_a_conflict(self, client, auth):
        add_env(client, auth, name="one", kind="llama.cpp")
        response = client.post(ENVS, json={"name": "one", "kind": "llama.cpp"}, headers=auth)
        assert response.status_code == 409
        assert "choose another name" in response.json()["detail"]

    def test_members_cannot_add_environments(self, client, auth, admin_password):
        client.post(
            "/api/v1/users",
            json={"username": "mia", "password": "pw-mia-123456", "role": "member"},
            headers=auth,
        )
        member = login(client, "pw-mia-123456", "mia")
        response = client.post(ENVS, json={"name": "x", "kind": "llama.cpp"}, headers=member)
        assert response.status_code == 403

    def test_unreachable_ollama_fails_its_test_with_the_reason(self, client, auth):
        env = add_env(
            client, auth, name="down", kind="ollama", url=f"http://127.0.0.1:{closed_port()}"
        )
        result = client.post(f"{ENVS}/{env['id']}/test", headers=auth)
        assert result.status_code == 200
        body = result.json()
        assert body["ok"] is False
        assert "Cannot reach Ollama" in body["detail"]
        shown = client.get(f"{ENVS}/{env['id']}", headers=auth).json()
        assert shown["last_check_error"] == body["detail"] and shown["last_checked_at"]

    def test_managed_llamacpp_without_models_is_ready(self, client, auth):
        env = add_env(client, auth, name="here", kind="llama.cpp")
        body = client.post(f"{ENVS}/{env['id']}/test", headers=auth).json()
        assert body == {
            "ok": True,
            "detail": "Ready: a llama.cpp server starts here when a model is deployed.",
            "models": [],
        }


class TestDeployRequests:
    def test_unknown_quantization_lists_the_allowed_values(self, client, auth, tiny_base):
        env = add_env(client, auth, name="here", kind="llama.cpp")
        response = client.post(
            f"/api/v1/base-models/{tiny_base}/deploy",
            json={"environment_id": env["id"], "quantization": "q5_K_M"},
            headers=auth,
        )
        assert response.status_code == 422
        assert response.json()["detail"] == (
            "Unknown quantization 'q5_K_M'; use one of: no_quantization, q8_0, q4_K_M, q4_K_S."
        )
        assert count_live() == 0

    def test_unknown_environment_and_model(self, client, auth, tiny_base):
        response = client.post(
            f"/api/v1/base-models/{tiny_base}/deploy",
            json={"environment_id": "nope"},
            headers=auth,
        )
        assert response.status_code == 404
        assert "tuneyard env list" in response.json()["detail"]
        env = add_env(client, auth, name="here", kind="llama.cpp")
        response = client.post(
            "/api/v1/complete-models/nope/deploy", json={"environment_id": env["id"]}, headers=auth
        )
        assert response.status_code == 404
        assert count_live() == 0

    def test_openai_servers_take_no_quantization(self, client, auth, tiny_base):
        env = add_env(client, auth, name="vllm", kind="openai", url="http://127.0.0.1:1/v1")
        response = client.post(
            f"/api/v1/base-models/{tiny_base}/deploy",
            json={"environment_id": env["id"], "quantization": "q8_0"},
            headers=auth,
        )
        assert response.status_code == 422
        assert "deploy with quantization no_quantization" in response.json()["detail"]

    def test_attached_llamacpp_cannot_load_models(self, client, auth, tiny_base):
        env = add_env(client, auth, name="there", kind="llama.cpp", url="http://127.0.0.1:1")
        response = client.post(
            f"/api/v1/base-models/{tiny_base}/deploy",
            json={"environment_id": env["id"]},
            headers=auth,
        )
        assert response.status_code == 422
        assert "without a url" in response.json()["detail"]

    def test_template_mismatch_refuses_unless_allowed(self, client, auth, tiny_base):
        client.patch(
            f"/api/v1/base-models/{tiny_base}",
            json={"deployment_template": "{{ .System }} {{ .Prompt }}"},
            headers=auth,
        )
        env = add_env(
            client, auth, name="ol", kind="ollama", url=f"http://127.0.0.1:{closed_port()}"
        )
        body = {"environment_id": env["id"], "quantization": "q8_0"}
        refused = client.post(f"/api/v1/base-models/{tiny_base}/deploy", json=body, headers=auth)
        assert refused.status_code == 422
        assert refused.json()["detail"].startswith("Template parity check failed")
        assert count_live() == 0

        accepted = client.post(
            f"/api/v1/base-models/{tiny_base}/deploy",
            json={**body, "allow_template_mismatch": True},
            headers=auth,
        )
        assert accepted.status_code == 202, accepted.text
        live = client.get(f"{LIVE}/{accepted.json()['id']}", headers=auth).json()
        assert live["status"] == "deploying"
        parity = live["model_card"]["template_parity"]
        assert parity["status"] == "mismatch"
        assert parity["rendered"] == "You are a careful assistant. What is the capital of France?"
        assert parity["expected"].endswith("<|im_start|>assistant\n")
        assert live["name"] == live_model_name("tiny", live["id"], "q8_0")
        assert live["name"] == f"tiny_d_{live['id'].replace('-', '')[:4]}_q8_0"

    # The check runs in this thread, where the timeout can interrupt it: the backtracking
    # pattern it replaced took minutes on this template.
    @pytest.mark.timeout(120)
    def test_unclosed_template_action_is_checked_promptly(self, client, auth, tiny_base, principal):
        from tuneyard.deploy import service

        template = "{{" + " " * 60_000
        set_template = client.patch(
            f"/api/v1/base-models/{tiny_base}",
            json={"deployment_template": template},
            headers=auth,
        )
        assert set_template.status_code == 200, set_template.text
        env = add_env(
            client, auth, name="ol", kind="ollama", url=f"http://127.0.0.1:{closed_port()}"
        )
        with (
            pytest.raises(Invalid, match="^Template parity check failed"),
            session_scope() as session,
        ):
            service.start_deploy(session, principal, "base", tiny_base, env["id"], "q8_0")
        assert count_live() == 0


# The regular expression template parity used to split actions with; it backtracks without
# bound on unclosed actions, and is kept here as the reference for what an action is.
PATTERN = re.compile(r"\{\{(-?)\s*(.*?)\s*(-?)\}\}", re.S)
TEMPLATE_PIECES = ["{{", "}}", "{", "}", "-", " ", "\n", "\u00a0", ".Prompt", "if", "end", "x"]


def pattern_tokens(template: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos, trim_next = 0, False
    for match in PATTERN.finditer(template):
        text = template[pos : match.start()]
        if trim_next:
            text = text.lstrip()
        if match.group(1):
            text = text.rstrip()
        out += [("text", text), ("action", match.group(2))]
        trim_next, pos = bool(match.group(3)), match.end()
    tail = template[pos:]
    out.append(("text", tail.lstrip() if trim_next else tail))
    return out


def test_one_list_of_quantizations_everywhere(client):
    import inspect

    from tuneyard.console.deploy_dialog import QUANTIZATION_LABELS
    from tuneyard.deploy.cli import deploy
    from tuneyard.deploy.quantization import QUANTIZATIONS

    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    assert schemas["DeployRequest"]["properties"]["quantization"]["enum"] == list(QUANTIZATIONS)
    assert list(QUANTIZATION_LABELS) == list(QUANTIZATIONS)
    cli_help = inspect.signature(deploy).parameters["quant"].default.help
    assert cli_help == "no_quantization, q8_0, q4_K_M or q4_K_S."


class TestParity:
    def test_derived_template_matches_the_chat_template(self, tokenizer_dir):
        from tuneyard.basemodels.card import read_chat_template
        from tuneyard.basemodels.template import derive_template

        derived = derive_template(read_chat_template(tokenizer_dir)[0], "<|im_end|>")
        assert check_parity(tokenizer_dir, derived.text, "tiny").status == "match"

    def test_go_template_subset(self):
        template = "{{- if .System }}S:{{ .System }}\n{{ else }}none\n{{ end -}} U:{{ .Prompt }}"
        assert render_go_template(template, {"System": "be brief", "Prompt": "hi"}) == (
            "S:be brief\nU:hi"
        )
        assert render_go_template(template, {"Prompt": "hi"}) == "none\nU:hi"
        stops = "A{{ .Prompt }}B{{ .Response }}C"
        assert render_go_template(stops, {"Prompt": "x"}) == "AxB"

    @pytest.mark.nodb
    @pytest.mark.timeout(60)  # the backtracking pattern this replaced took minutes on these
    @pytest.mark.parametrize("size", [1_000, 4_000, 65_536])
    @pytest.mark.parametrize(
        "unit", [" ", "{{", "{{ -", "-"], ids=["spaces", "opens", "opens-dash", "dashes"]
    )
    def test_unclosed_actions_are_read_promptly(self, unit, size):
        template = "{{" + unit * (size // len(unit))
        assert render_go_template(template, {"Prompt": "hi"}) == template

    @pytest.mark.nodb
    @given(st.lists(st.sampled_from(TEMPLATE_PIECES), max_size=24).map("".join))
    @settings(max_examples=300, deadline=None)
    def test_actions_are_read_as_the_pattern_did(self, template):
        assert split_actions(template) == pattern_tokens(template)

    def test_templates_beyond_the_subset_are_not_guessed(self, tokenizer_dir):
        parity = check_parity(tokenizer_dir, "{{ currentDate }}{{ .Prompt }}", "t")
        assert parity.status == "not_checked"
        assert "currentDate" in parity.detail
