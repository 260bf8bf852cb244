"""One rule names a model everywhere: chat, the gateway, deploy, the CLI and the console."""

from __future__ import annotations

import pytest

from tuneyard import modelref
from tuneyard.chat.backends import resolve_model
from tuneyard.db import session_scope
from tuneyard.errors import AppError, Invalid
from tuneyard.modelref import Capability, ModelKind
from tuneyard.models import BaseModel, ThirdPartyModel


def add_third_party(world, name: str, model_type: str = "chat", private: bool = False) -> str:
    with session_scope() as session:
        row = ThirdPartyModel(
            project_id=world.admin.project_id,
            name=name,
            provider="openai-compatible",
            model_name="m",
            base_url="http://127.0.0.1:9/v1",
            model_type=model_type,
            private=private,
            created_by=world.admin.user_id,
        )
        session.add(row)
        session.flush()
        return row.id


def add_embedding_base(world, name: str = "vectors") -> str:
    with session_scope() as session:
        base = session.get(BaseModel, world.base)
        row = BaseModel(
            project_id=world.admin.project_id,
            technical_name=name,
            model_name=name,
            model_type="embedding",
            source="path",
            source_ref=base.path,
            path=base.path,
        )
        session.add(row)
        session.flush()
        return row.id


def for_chat(world, text: str) -> str:
    """What chat resolves `text` to, as the chat API and the gateway do."""
    with session_scope() as session:
        return resolve_model(session, world.admin, text).ref


def for_deploy(client, auth, text: str, kind: str | None = None) -> str:
    """What deploy resolves `text` to, as the CLI asks the server before it deploys."""
    params = {"can": "deploy", **({"kind": kind} if kind else {})}
    response = client.get(f"/api/v1/models/{text}", params=params, headers=auth)
    if response.status_code != 200:
        raise AppError(response.json()["detail"], response.status_code)
    return response.json()["ref"]


def refusal(resolve, *args) -> tuple[int, str]:
    with pytest.raises(AppError) as caught:
        resolve(*args)
    return caught.value.status, caught.value.message


class TestReferences:
    def test_parse(self):
        assert modelref.parse_reference("live:abc") == (ModelKind.LIVE, "abc")
        assert modelref.parse_reference("third-party:a:b") == (ModelKind.THIRD_PARTY, "a:b")
        # Not a kind: the whole text is a name (third-party names may hold ':').
        assert modelref.parse_reference("openai:gpt") == (None, "openai:gpt")
        assert modelref.parse_reference("base:") == (None, "base:")
        assert str(modelref.ModelRef(ModelKind.BASE, "x")) == "base:x"

    def test_one_order_for_every_caller(self):
        assert [kind.value for kind in modelref.RESOLUTION_ORDER] == [
            "third-party",
            "live",
            "complete",
            "customized",
            "base",
        ]
        assert modelref.kinds_that_can(Capability.DEPLOY) == (
            ModelKind.COMPLETE,
            ModelKind.CUSTOMIZED,
            ModelKind.BASE,
        )
        assert modelref.kinds_that_can(Capability.EMBED) == (
            ModelKind.THIRD_PARTY,
            ModelKind.BASE,
        )

    def test_unknown_kind(self):
        with pytest.raises(Invalid, match="use one of: complete, customized, base"):
            modelref.parse_kind("live", Capability.DEPLOY)
        with pytest.raises(Invalid, match="Unknown kind 'vision'"):
            modelref.parse_kind("vision")


class TestResolution:
    def test_a_name_means_the_same_model_to_chat_and_to_deploy(self, client, auth, project_world):
        w = project_world
        for name, ref in (
            ("tiny", f"base:{w.base}"),
            ("tiny_run_20250101_abcd", f"customized:{w.customized}"),
            ("tiny_run_20250101_abcd_s_ef01", f"complete:{w.complete}"),
        ):
            assert for_chat(w, name) == for_deploy(client, auth, name) == ref
            kind = ref.partition(":")[0]
            assert for_chat(w, f"{kind}:{name}") == for_deploy(client, auth, name, kind) == ref
            assert for_deploy(client, auth, f"{kind}:{name}") == ref
            with session_scope() as session:
                assert str(modelref.resolve(session, w.admin, name).ref) == ref

    def test_a_name_two_models_carry_is_refused_by_chat_and_deploy_alike(
        self, client, auth, project_world
    ):
        w = project_world
        twin = add_third_party(w, "tiny")
        chat = refusal(for_chat, w, "tiny")
        deploy = refusal(for_deploy, client, auth, "tiny")
        assert chat == deploy
        status, message = chat
        assert status == 422
        assert message == (
            f"'tiny' names 2 models: third-party:{twin} (third-party model tiny), "
            f"base:{w.base} (base model 'tiny'). Name the one you mean as kind:id."
        )
        # Naming the kind settles it, the same way for both.
        assert for_chat(w, "base:tiny") == for_deploy(client, auth, "tiny", "base")
        assert for_deploy(client, auth, "base:tiny") == f"base:{w.base}"
        assert for_chat(w, "third-party:tiny") == f"third-party:{twin}"

    def test_another_users_private_entry_makes_no_name_ambiguous(self, project_world):
        w = project_world
        add_third_party(w, "tiny", private=True)
        with session_scope() as session:
            assert str(resolve_model(session, w.viewer, "tiny").ref) == f"base:{w.base}"
        assert refusal(for_chat, w, "tiny")[0] == 422  # its creator sees both

    def test_an_unknown_name(self, client, auth, project_world):
        assert refusal(for_chat, project_world, "nope") == (
            404,
            "No model 'nope'. Name one as kind:id (third-party, live, complete, customized or "
            "base), or list them with GET /v1/models.",
        )
        status, message = refusal(for_deploy, client, auth, "nope")
        assert status == 404
        assert message.startswith("No complete, customized or base model 'nope'.")
        assert refusal(for_deploy, client, auth, "tiny", "live") == (
            422,
            "Unknown kind 'live'; use one of: complete, customized, base.",
        )

    def test_what_a_kind_cannot_do_is_refused_by_name(self, client, auth, project_world):
        w = project_world
        live_name = "tiny_run_20250101_abcd_s_ef01_d_1234_no_quantization"
        assert for_chat(w, live_name) == f"live:{w.live}"
        status, message = refusal(for_deploy, client, auth, live_name)
        assert status == 422
        assert message == (
            f"Live model {live_name} cannot be deployed. Deploy a complete, customized or base "
            "model."
        )
        assert "cannot be deployed" in refusal(for_deploy, client, auth, "remote")[1]

    def test_an_embedding_model_cannot_chat(self, client, auth, project_world):
        w = project_world
        add_embedding_base(w)
        add_third_party(w, "embedder", "embedding")
        assert refusal(for_chat, w, "vectors") == (
            422,
            "Base model 'vectors' is an embedding model; it cannot chat. Chat with a chat "
            "model; list them with GET /v1/models.",
        )
        assert "is an embedding model; it cannot chat" in refusal(for_chat, w, "embedder")[1]
        assert "it cannot be deployed" in refusal(for_deploy, client, auth, "vectors")[1]


class TestListing:
    def test_the_gateway_lists_no_embedding_model_as_a_chat_model(
        self, client, auth, project_world
    ):
        w = project_world
        vectors = add_embedding_base(w)
        embedder = add_third_party(w, "embedder", "embedding")
        listed = client.get("/v1/models", headers=auth).json()["data"]
        refs = {model["tuneyard_ref"] for model in listed}
        assert f"base:{vectors}" not in refs and f"third-party:{embedder}" not in refs
        assert refs == {
            f"base:{w.base}",
            f"customized:{w.customized}",
            f"complete:{w.complete}",
            f"live:{w.live}",
            f"third-party:{w.third_party}",
        }
        # In lifecycle order, each under its lifecycle name.
        assert [model["tuneyard_kind"] for model in listed] == [
            "base",
            "customized",
            "complete",
            "live",
            "third-party",
        ]
        assert listed[0]["id"] == "tiny"
        refused = client.post(
            "/v1/chat/completions",
            json={"model": "vectors", "messages": [{"role": "user", "content": "hi"}]},
            headers=auth,
        )
        assert refused.status_code == 422
        assert "is an embedding model; it cannot chat" in refused.json()["error"]["message"]

    def test_the_console_picker_and_the_gateway_list_the_same_models(
        self, client, auth, project_world
    ):
        from tuneyard.chat.pages.frame import chat_models

        add_embedding_base(project_world)
        listed = client.get("/v1/models", headers=auth).json()["data"]
        with session_scope() as session:
            picked = chat_models(session, project_world.admin)
        assert [m["ref"] for m in picked] == [m["tuneyard_ref"] for m in listed]

    def test_models_that_share_a_name_are_listed_by_reference(self, client, auth, project_world):
        w = project_world
        twin = add_third_party(w, "tiny")
        listed = client.get("/v1/models", headers=auth).json()["data"]
        ids = {model["tuneyard_ref"]: model["id"] for model in listed}
        assert ids[f"base:{w.base}"] == f"base:{w.base}"
        assert ids[f"third-party:{twin}"] == f"third-party:{twin}"
        assert ids[f"third-party:{w.third_party}"] == "remote"


class TestTheCli:
    def test_deploy_refuses_an_ambiguous_name_as_the_server_does(self, cli, project_world):
        from typer.testing import CliRunner

        from tests.helpers import flat
        from tuneyard.cli import app

        twin = add_third_party(project_world, "tiny")
        result = CliRunner().invoke(app, ["deploy", "tiny", "--env", "ollama"])
        assert result.exit_code == 1
        assert f"'tiny' names 2 models: third-party:{twin}" in flat(result.output)
        assert "Name the one you mean as kind:id." in flat(result.output)
