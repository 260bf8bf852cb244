"""Saving customized models into complete models over the API, end to end in job processes."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import socket
import tarfile
import threading
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.helpers import (
    CHAT,
    finish,
    folder_files,
    login,
    make_customized,
    save,
    saved,
    start,
    stop_executor,
    upload,
    wait_for_job,
)
from tuneyard.auth.service import create_project, create_user, local_principal
from tuneyard.cards import file_digest, folder_size, read_front_matter
from tuneyard.config import reset_settings
from tuneyard.db import session_scope
from tuneyard.models import CompleteModel, CustomizedModel, Job
from tuneyard.storage import Layout, partial_path

API = "/api/v1/complete-models"
CUSTOMIZED = "/api/v1/customized-models"
QUICK = {"max_steps": 3, "batch_size": 2, "grad_accum_steps": 1, "learning_rate": 2e-2}
PROMPTS = ["What is the code word?", "Say something nice.", "Count to three."]
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


# -- fixtures: a trained adapter, or a quickly made one -----------------------------------------


def trained(client, auth, base_id: str, name: str = "codes", **params) -> dict:
    """Train a LoRA on the tiny base for a few real steps; the customized model it made."""
    dataset = upload(client, auth, f"{name}-data", CHAT)
    training = finish(
        client, auth, start(client, auth, base_id, dataset, name=name, **{**QUICK, **params})
    )
    model_id = training["customized_model_id"]
    return client.get(f"{CUSTOMIZED}/{model_id}", headers=auth).json()


@pytest.fixture
def made(tiny_base, made_adapter_dir) -> dict:
    return make_customized(tiny_base, made_adapter_dir)


def complete_dir_entries() -> list[str]:
    """Everything under the data dir's complete models folder, staging folders included."""
    folder = Layout().complete_model_dir("x").parent
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def count_complete() -> int:
    with session_scope() as session:
        return len(session.query(CompleteModel).all())


def peft_merged(base_dir: Path, adapter_dir: Path) -> dict:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    return PeftModel.from_pretrained(base, adapter_dir).merge_and_unload().state_dict()


def assert_same_weights(folder: Path, reference: dict, atol: float = 1e-6) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    mine = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).state_dict()
    assert sorted(mine) == sorted(reference)
    for name, tensor in reference.items():
        assert torch.allclose(mine[name], tensor, rtol=0, atol=atol), name


def greedy(model, tokenizer, prompt: str) -> list[int]:
    import torch

    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
    )
    inputs = tokenizer(text, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    return out[0, inputs["input_ids"].shape[1] :].tolist()


# -- saving ------------------------------------------------------------------------------------


class TestSave:
    @pytest.mark.backend_free
    @pytest.mark.slow
    def test_fp32_save_equals_peft_merge_and_generates_the_same(
        self,
        client,
        auth,
        worker,
        tiny_base,
        tiny_model_dir,
    ):
        import torch
        from peft import PeftModel
        from transformers import AutoModelForCausalLM, AutoTokenizer

        customized = trained(client, auth, tiny_base)
        model = saved(client, auth, customized["id"], dtype="fp32")
        folder, adapter = Path(model["path"]), Path(customized["path"])
        assert_same_weights(folder, peft_merged(tiny_model_dir, adapter))

        config = json.loads((folder / "config.json").read_text())
        assert config["dtype"] == "float32" and "quantization_config" not in config
        assert config["tie_word_embeddings"] is True
        for name in ("generation_config.json", "tokenizer.json", "chat_template.jinja"):
            assert (folder / name).is_file(), name
        assert not list(folder.glob("adapter_*"))

        complete = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(folder)
        reference = PeftModel.from_pretrained(
            AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32), adapter
        )
        for prompt in PROMPTS:
            assert greedy(complete, tokenizer, prompt) == greedy(reference, tokenizer, prompt)

    @pytest.mark.slow
    def test_default_bf16_name_card_and_row(
        self,
        client,
        auth,
        worker,
        tiny_base,
        tiny_model_dir,
    ):
        import torch
        from safetensors.torch import load_file

        customized = trained(client, auth, tiny_base)
        response = save(client, auth, customized["id"])
        assert response.status_code == 202, response.text
        accepted = response.json()
        first4 = accepted["id"].replace("-", "")[:4]
        name = f"{customized['name']}_s_{first4}"
        early = client.get(f"{API}/{accepted['id']}", headers=auth).json()
        assert (early["name"], early["status"], early["job_id"]) == (
            name,
            "saving",
            accepted["job_id"],
        )
        assert wait_for_job(accepted["job_id"]).status == "succeeded"

        model = client.get(f"{API}/{accepted['id']}", headers=auth).json()
        date = datetime.now(UTC).strftime("%Y%m%d")
        assert re.fullmatch(rf"tiny_codes_{date}_[0-9a-f]{{4}}_s_{first4}", model["name"])
        assert model["status"] == "ready" and model["error"] is None
        assert model["source"] == "saved" and model["dtype"] == "bf16"
        assert model["customized_model_id"] == customized["id"]
        assert model["training_id"] == customized["training_id"]
        assert model["base_model_id"] == tiny_base
        folder = Path(model["path"])
        assert folder == Layout().complete_model_dir(model["id"])
        assert model["size_bytes"] == folder_size(folder)

        card = model["model_card"]
        training_card = customized["model_card"]
        assert card["kind"] == "complete" and card["name"] == model["name"]
        assert card["lineage"] == {
            "base_model": "tiny",
            "base_model_id": tiny_base,
            "dataset": "codes-data",
            "dataset_id": training_card["lineage"]["dataset_id"],
            "dataset_digest": training_card["lineage"]["dataset_digest"],
            "training_id": customized["training_id"],
            "training_name": "codes",
            "customized_model": customized["name"],
            "customized_model_id": customized["id"],
            "adapter_digest": file_digest(Path(customized["path"]) / "adapter_model.safetensors"),
        }
        assert card["save"]["dtype"] == "bf16" and card["save"]["merge_method"] == "streaming"
        assert card["save"]["quantization"] == "none" and card["save"]["weight_files"] == 1
        assert card["training"]["method"] == "sft"
        assert card["metrics"] == training_card["metrics"]
        assert card["sizes"]["parameters"] > 3_000_000
        assert read_front_matter(folder / "README.md") == json.loads(json.dumps(card))

        weights = load_file(folder / "model.safetensors")
        assert {t.dtype for t in weights.values()} == {torch.bfloat16}
        assert json.loads((folder / "config.json").read_text())["dtype"] == "bfloat16"
        reference = peft_merged(tiny_model_dir, Path(customized["path"]))
        for name, tensor in weights.items():
            assert torch.allclose(tensor.float(), reference[name], rtol=1e-2, atol=1e-3), name

        listed = client.get(API, headers=auth).json()
        assert listed["total"] == 1
        assert listed["items"][0]["customized_model_name"] == customized["name"]
        assert "model_card" not in listed["items"][0]

    @pytest.mark.backend_free
    @pytest.mark.slow
    def test_sharded_base_keeps_its_shards(self, client, auth, worker, tiny_model_dir, tmp_path):
        import torch
        from transformers import AutoModelForCausalLM

        folder = tmp_path / "sharded"
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
        model.save_pretrained(folder, max_shard_size="200KB")
        for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
            shutil.copyfile(tiny_model_dir / name, folder / name)
        shards = sorted(p.name for p in folder.glob("model-*.safetensors"))
        assert len(shards) > 2
        base = client.post(
            "/api/v1/base-models",
            json={"technical_name": "tiny", "path": str(folder)},
            headers=auth,
        ).json()["id"]
        customized = trained(client, auth, base)
        complete = saved(client, auth, customized["id"], dtype="fp32")
        out = Path(complete["path"])
        assert sorted(p.name for p in out.glob("model-*.safetensors")) == shards
        index = json.loads((out / "model.safetensors.index.json").read_text())
        source = json.loads((folder / "model.safetensors.index.json").read_text())
        assert index["weight_map"] == source["weight_map"]
        assert index["metadata"]["total_size"] == source["metadata"]["total_size"]
        assert complete["model_card"]["save"]["weight_files"] == len(shards)
        assert_same_weights(out, peft_merged(folder, Path(customized["path"])))

    @pytest.mark.backend_free
    @pytest.mark.slow
    def test_dora_adapter_is_merged_by_peft(
        self,
        client,
        auth,
        worker,
        tiny_base,
        tiny_model_dir,
    ):
        customized = trained(client, auth, tiny_base, name="dora", use_dora=True)
        model = saved(client, auth, customized["id"], dtype="fp32")
        assert model["model_card"]["save"]["merge_method"] == "peft"
        assert_same_weights(Path(model["path"]), peft_merged(tiny_model_dir, customized["path"]))


class TestSaveRefused:
    def test_unknown_dtype_lists_the_allowed_ones(self, client, auth, made):
        response = save(client, auth, made["id"], dtype="int8")
        assert response.status_code == 422
        assert response.json()["detail"] == (
            "Unknown dtype 'int8'; save as one of: bf16, fp16, fp32. Saving never quantizes: "
            "choose a quantization when you deploy."
        )
        assert count_complete() == 0
        assert client.get("/api/v1/jobs", headers=auth).json()["total"] == 0

    def test_training_free_mode(self, client, auth, made, monkeypatch):
        monkeypatch.setenv("TUNEYARD_TRAINING_ENABLED", "false")
        reset_settings()
        response = save(client, auth, made["id"])
        assert response.status_code == 503
        assert "TUNEYARD_TRAINING_ENABLED=true" in response.json()["detail"]
        assert count_complete() == 0

    def test_unknown_customized_model(self, client, auth):
        response = save(client, auth, "nope")
        assert response.status_code == 404
        assert response.json()["detail"] == (
            "No customized model 'nope'. List them with `tuneyard customized list`."
        )

    def test_base_model_deleted(self, client, auth, made, tiny_base):
        assert client.delete(f"/api/v1/base-models/{tiny_base}", headers=auth).status_code == 204
        response = save(client, auth, made["id"])
        assert response.status_code == 409
        assert response.json()["detail"] == (
            f"The base model of customized model {made['name']} was deleted; an adapter is "
            "saved by merging it into its base, so this one can no longer be saved."
        )

    def test_base_model_not_ready(self, client, auth, made, tiny_base):
        from tuneyard.models import BaseModel

        with session_scope() as session:
            session.get(BaseModel, tiny_base).status = "importing"
        response = save(client, auth, made["id"])
        assert response.status_code == 409
        assert response.json()["detail"] == "Base model 'tiny' is importing; save once it is ready."

    @pytest.mark.parametrize(
        "change,needle",
        [
            (
                {"modules_to_save": ["lm_head"]},
                "The adapter also trained whole modules (modules_to_save: lm_head), which save "
                "does not merge.",
            ),
            ({"lora_bias": True}, "The adapter uses lora_bias, which save does not merge"),
            ({"peft_type": "IA3"}, "The adapter is a IA3 adapter; save merges LoRA adapters only."),
        ],
    )
    def test_unsupported_adapters(self, client, auth, made, change, needle):
        config_path = Path(made["path"]) / "adapter_config.json"
        config = json.loads(config_path.read_text())
        config_path.write_text(json.dumps({**config, **change}))
        response = save(client, auth, made["id"])
        assert response.status_code == 422
        assert needle in response.json()["detail"]
        assert count_complete() == 0

    def test_adapter_of_another_base(self, client, auth, made, tiny_model_dir, tmp_path):
        import torch
        from transformers import AutoModelForCausalLM

        wider = tmp_path / "wider"
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
        model.config.num_hidden_layers = 1
        AutoModelForCausalLM.from_config(model.config).save_pretrained(wider)
        for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
            shutil.copyfile(tiny_model_dir / name, wider / name)
        other = client.post(
            "/api/v1/base-models",
            json={"technical_name": "one-layer", "path": str(wider)},
            headers=auth,
        ).json()["id"]
        with session_scope() as session:
            session.get(CustomizedModel, made["id"]).base_model_id = other
        response = save(client, auth, made["id"])
        assert response.status_code == 422
        assert response.json()["detail"].startswith(
            "The adapter has LoRA weights for model.layers.1.mlp.down_proj.weight, "
            "model.layers.1.mlp.gate_proj.weight, model.layers.1.mlp.up_proj.weight and 4 more, "
            "which the base model does not have: it was trained on another base model."
        )

    def test_viewer_cannot_save(self, client, auth, made, admin_password):
        with session_scope() as session:
            create_user(session, local_principal(session), "vera", "vera-pass", "viewer")
        viewer = login(client, "vera-pass", username="vera")
        response = save(client, viewer, made["id"])
        assert response.status_code == 403
        assert count_complete() == 0


# -- a save that fails leaves a failed model and no files --------------------------------------


@pytest.fixture
def slow_worker(admin_password, monkeypatch):
    """A worker whose job processes wait a second at each merged weight (a save to catch)."""
    from tuneyard.jobs.executor import Executor

    monkeypatch.setenv("TUNEYARD_PLUGINS", "tests.jobkinds,tests.complete_slow_merge")
    monkeypatch.setenv("TUNEYARD_TEST_MERGE_DELAY", "1")
    reset_settings()
    executor = Executor()
    executor.start()
    yield executor
    stop_executor(executor)


class TestFailedSave:
    def test_kill_9_mid_merge(self, client, auth, slow_worker, made):
        response = save(client, auth, made["id"])
        model_id, job_id = response.json()["id"], response.json()["job_id"]
        staged = partial_path(Layout().complete_model_dir(model_id)) / "model.safetensors"
        deadline = time.monotonic() + 60
        while not (staged.exists() and staged.stat().st_size > 100_000):
            assert time.monotonic() < deadline, "the merge never started writing"
            time.sleep(0.05)
        with session_scope() as session:
            pid = session.get(Job, job_id).pid
        os.killpg(pid, signal.SIGKILL)

        job = wait_for_job(job_id)
        assert job.status == "failed" and "SIGKILL" in job.error
        model = client.get(f"{API}/{model_id}", headers=auth).json()
        assert model["status"] == "failed" and model["error"] == job.error
        assert complete_dir_entries() == []
        assert client.get(f"{API}/{model_id}/archive", headers=auth).status_code == 409
        # The customized model is free again, and the failed model can be removed.
        assert client.delete(f"{API}/{model_id}", headers=auth).status_code == 204
        assert client.delete(f"{CUSTOMIZED}/{made['id']}", headers=auth).status_code == 204

    def test_broken_adapter_fails_the_job(self, client, auth, worker, made):
        import torch
        from safetensors.torch import load_file, save_file

        weights_path = Path(made["path"]) / "adapter_model.safetensors"
        weights = load_file(weights_path)
        broken = "base_model.model.model.layers.1.mlp.up_proj.lora_B.weight"
        weights[broken][0, 0] = torch.inf
        save_file(weights, weights_path, metadata={"format": "pt"})
        response = save(client, auth, made["id"])
        assert response.status_code == 202
        job = wait_for_job(response.json()["job_id"])
        assert job.status == "failed"
        assert job.error == (
            "The adapter's LoRA weights for model.layers.1.mlp.up_proj hold inf or NaN: the "
            "adapter is broken; train it again."
        )
        model = client.get(f"{API}/{response.json()['id']}", headers=auth).json()
        assert (model["status"], model["error"]) == ("failed", job.error)
        assert complete_dir_entries() == []

    def test_fp16_overflow_fails_part_way(
        self, client, auth, worker, tiny_model_dir, made_adapter_dir, tmp_path
    ):
        from safetensors.torch import load_file, save_file

        folder = shutil.copytree(tiny_model_dir, tmp_path / "loud")
        weights = load_file(folder / "model.safetensors")
        weights["model.norm.weight"][0] = 1e6  # the last tensor of the file
        save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
        base = client.post(
            "/api/v1/base-models",
            json={"technical_name": "loud", "path": str(folder)},
            headers=auth,
        ).json()["id"]
        customized = make_customized(base, made_adapter_dir)
        response = save(client, auth, customized["id"], dtype="fp16")
        job = wait_for_job(response.json()["job_id"])
        assert job.status == "failed"
        assert job.error == (
            "The merged weight model.norm.weight is not finite: the values do not fit float16; "
            "save as bf16 or fp32."
        )
        model = client.get(f"{API}/{response.json()['id']}", headers=auth).json()
        assert (model["status"], model["error"]) == ("failed", job.error)
        assert complete_dir_entries() == []
        assert saved(client, auth, customized["id"], dtype="bf16")["dtype"] == "bf16"

    def test_cancel_while_queued(self, client, auth, made):
        response = save(client, auth, made["id"])
        job_id = response.json()["job_id"]
        assert client.post(f"/api/v1/jobs/{job_id}/cancel", headers=auth).status_code == 200
        model = client.get(f"{API}/{response.json()['id']}", headers=auth).json()
        assert model["status"] == "failed"
        assert model["error"] == "The save was cancelled before it finished."
        assert complete_dir_entries() == []


# -- deleting ----------------------------------------------------------------------------------


class TestDelete:
    def test_deleting_the_customized_model_keeps_the_complete_model(
        self, client, auth, worker, made
    ):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model = saved(client, auth, made["id"])
        deleted = client.delete(f"{CUSTOMIZED}/{made['id']}", headers=auth)
        assert deleted.status_code == 204
        assert not Path(made["path"]).exists()
        again = client.get(f"{API}/{model['id']}", headers=auth).json()
        assert again["status"] == "ready"
        assert again["model_card"]["lineage"]["customized_model"] == made["name"]
        folder = Path(again["path"])
        complete = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        tokens = greedy(complete, AutoTokenizer.from_pretrained(folder), PROMPTS[0])
        assert len(tokens) > 0

    def test_deleting_a_complete_model_removes_its_folder(self, client, auth, worker, made):
        model = saved(client, auth, made["id"])
        assert Path(model["path"]).is_dir()
        assert client.delete(f"{API}/{model['id']}", headers=auth).status_code == 204
        assert not Path(model["path"]).exists()
        assert complete_dir_entries() == []
        assert client.get(f"{API}/{model['id']}", headers=auth).status_code == 404
        assert Path(made["path"]).is_dir()

    def test_nothing_a_save_uses_can_be_deleted_while_it_is_queued(
        self,
        client,
        auth,
        made,
        tiny_base,
    ):
        response = save(client, auth, made["id"])
        model_id, job_id = response.json()["id"], response.json()["job_id"]
        hint = (
            f"job {job_id} (queued); wait for it or cancel it with `tuneyard jobs cancel {job_id}`."
        )
        customized = client.delete(f"{CUSTOMIZED}/{made['id']}", headers=auth)
        assert customized.status_code == 409
        assert customized.json()["detail"] == (
            f"Customized model {made['name']} is in use by complete.save {hint}"
        )
        complete = client.delete(f"{API}/{model_id}", headers=auth)
        assert complete.status_code == 409
        name = client.get(f"{API}/{model_id}", headers=auth).json()["name"]
        assert (
            complete.json()["detail"] == f"Complete model {name} is in use by complete.save {hint}"
        )
        base = client.delete(f"/api/v1/base-models/{tiny_base}", headers=auth)
        assert base.status_code == 409

        client.post(f"/api/v1/jobs/{job_id}/cancel", headers=auth)
        assert client.delete(f"{API}/{model_id}", headers=auth).status_code == 204
        assert client.delete(f"{CUSTOMIZED}/{made['id']}", headers=auth).status_code == 204
        assert count_complete() == 0


# -- export and push ---------------------------------------------------------------------------


def tar_files(data: bytes, top: str) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        names = archive.getnames()
        assert names[0] == top
        return {
            m.name.removeprefix(f"{top}/"): archive.extractfile(m).read()
            for m in archive.getmembers()
            if m.isfile()
        }


class TestArchive:
    @pytest.mark.parametrize("fmt", ["tar", "tar.gz"])
    def test_complete_model_archive_holds_the_folder(self, client, auth, worker, made, fmt):
        model = saved(client, auth, made["id"])
        with client.stream(
            "GET", f"{API}/{model['id']}/archive", params={"format": fmt}, headers=auth
        ) as response:
            assert response.status_code == 200
            chunks = list(response.iter_bytes())
        data = b"".join(chunks)
        assert response.headers["content-disposition"] == (
            f'attachment; filename="{model["name"]}.{fmt}"'
        )
        if fmt == "tar":
            assert int(response.headers["content-length"]) == len(data)
        else:
            assert data[:2] == b"\x1f\x8b"
        assert tar_files(data, model["name"]) == folder_files(Path(model["path"]))

    def test_adapter_archive(self, client, auth, made):
        response = client.get(f"{CUSTOMIZED}/{made['id']}/archive", headers=auth)
        assert response.status_code == 200
        files = tar_files(response.content, made["name"])
        assert set(ADAPTER_FILES) <= set(files)
        assert files == folder_files(Path(made["path"]))

    def test_archive_refusals(self, client, auth, made):
        model_id = save(client, auth, made["id"]).json()["id"]
        saving = client.get(f"{API}/{model_id}/archive", headers=auth)
        assert saving.status_code == 409
        assert saving.json()["detail"].endswith("is saving; it has no files yet.")
        bad = client.get(f"{CUSTOMIZED}/{made['id']}/archive?format=zip", headers=auth)
        assert bad.status_code == 422
        assert bad.json()["detail"] == "Unknown archive format 'zip'; use one of: tar, tar.gz."


class TestFullFineTune:
    @pytest.mark.backend_free
    @pytest.mark.slow
    def test_a_full_fine_tune_is_a_complete_model_too(self, client, auth, worker, tiny_base):
        dataset = upload(client, auth, "full-data", CHAT)
        training = finish(
            client, auth, start(client, auth, tiny_base, dataset, adapter="full", **QUICK)
        )
        model_id = training["summary"]["complete_model_id"]
        [row] = client.get(API, headers=auth).json()["items"]
        assert (row["id"], row["source"], row["status"]) == (model_id, "full_training", "ready")
        assert row["customized_model_name"] is None and row["base_model_name"] == "tiny"
        model = client.get(f"{API}/{model_id}", headers=auth).json()
        archive = client.get(f"{API}/{model_id}/archive", headers=auth)
        assert archive.status_code == 200
        assert tar_files(archive.content, model["name"]) == folder_files(Path(model["path"]))
        assert client.delete(f"{API}/{model_id}", headers=auth).status_code == 204
        assert not Path(model["path"]).exists()


class _Hub(BaseHTTPRequestHandler):
    """The hub's whoami, and as much of repository creation, card checks and commits (files
    sent inline, as the hub asks for small files) as a push uses; `server.created` keeps each create
    request, `server.committed` the paths of each commit."""

    def _reply(self, status: int, payload: dict) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):  # noqa: N802
        self._reply(200 if self.path == "/api/whoami-v2" else 404, {"name": "me"})

    def do_POST(self):  # noqa: N802
        sent = self.rfile.read(int(self.headers.get("content-length") or 0))
        endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        if self.path == "/api/repos/create":
            created = json.loads(sent)
            self.server.created.append(created)
            self._reply(200, {"url": f"{endpoint}/{created['organization']}/{created['name']}"})
        elif self.path == "/api/validate-yaml":  # the model card's front matter
            self._reply(200, {"errors": [], "warnings": []})
        elif "/preupload/" in self.path:
            files = [
                {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                for f in json.loads(sent)["files"]
            ]
            self._reply(200, {"files": files})
        elif "/commit/" in self.path:
            lines = [json.loads(line) for line in sent.splitlines() if line.strip()]
            self.server.committed.append(
                sorted(line["value"]["path"] for line in lines if line["key"] == "file")
            )
            repo = self.path.split("/api/models/")[1].split("/commit/")[0]
            oid = "0" * 40
            self._reply(200, {"commitUrl": f"{endpoint}/{repo}/commit/{oid}", "commitOid": oid})
        else:
            self._reply(404, {"error": "not here"})

    def log_message(self, *_args):
        pass


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """A local HTTP server answering as the hub, as HF_ENDPOINT, with a token set."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hub)
    server.created, server.committed = [], []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_TOKEN", "hf_test")
    yield server
    server.shutdown()


class TestPush:
    def test_unreachable_hub_answers_503(self, client, auth, worker, made, monkeypatch):
        model = saved(client, auth, made["id"])
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
        response = client.post(
            f"{API}/{model['id']}/push", json={"repo_id": "me/tiny"}, headers=auth
        )
        assert response.status_code == 503
        detail = response.json()["detail"]
        assert detail.startswith(f"Cannot reach the model hub (http://127.0.0.1:{port}: ")
        assert detail.endswith(
            "): export the model as an archive with `tuneyard complete export` instead."
        )
        jobs = client.get("/api/v1/jobs?kind=complete.push", headers=auth).json()
        assert jobs["total"] == 0

    def test_reachable_hub_queues_a_push_that_holds_the_model(
        self, client, auth, worker, made, hub
    ):
        model = saved(client, auth, made["id"])
        worker.stop()  # the push stays queued: nothing here can take an upload
        response = client.post(
            f"{API}/{model['id']}/push", json={"repo_id": "me/tiny"}, headers=auth
        )
        assert response.status_code == 202, response.text
        job = client.get(f"/api/v1/jobs/{response.json()['job_id']}", headers=auth).json()
        assert (job["kind"], job["status"]) == ("complete.push", "queued")
        deleted = client.delete(f"{API}/{model['id']}", headers=auth)
        assert deleted.status_code == 409
        assert deleted.json()["detail"].startswith(
            f"Complete model {model['name']} is in use by complete.push job"
        )

    def test_a_push_creates_a_private_repository_unless_asked(
        self, client, auth, worker, made, hub
    ):
        model = saved(client, auth, made["id"])
        for body, visibility in (({}, "private"), ({"public": True}, "public")):
            response = client.post(
                f"{API}/{model['id']}/push", json={"repo_id": "me/tiny", **body}, headers=auth
            )
            assert response.status_code == 202, response.text
            job = wait_for_job(response.json()["job_id"])
            assert job.status == "succeeded", job.error
            assert hub.created[-1] == {
                "name": "tiny",
                "organization": "me",
                "visibility": visibility,
                "type": "model",
            }
        assert hub.committed[-1] == sorted(folder_files(Path(model["path"])))

    def test_no_token(self, client, auth, worker, made, hub, monkeypatch):
        model = saved(client, auth, made["id"])
        monkeypatch.delenv("HF_TOKEN")
        response = client.post(
            f"{API}/{model['id']}/push", json={"repo_id": "me/tiny"}, headers=auth
        )
        assert response.status_code == 422
        assert "needs a token with write access" in response.json()["detail"]


# -- isolation ---------------------------------------------------------------------------------


class TestIsolation:
    def test_another_project_sees_nothing(self, client, auth, worker, made):
        model = saved(client, auth, made["id"])
        with session_scope() as session:
            create_project(session, "2002", "bob", "bob-password")
        other = login(client, "bob-password", username="bob", project="2002")
        assert client.get(API, headers=other).json() == {"items": [], "total": 0}
        for path in (
            f"{API}/{model['id']}",
            f"{API}/{model['name']}",
            f"{API}/{model['id']}/archive",
        ):
            assert client.get(path, headers=other).status_code == 404
        assert client.delete(f"{API}/{model['id']}", headers=other).status_code == 404
        assert save(client, other, made["id"]).status_code == 404
        archive = client.get(f"{CUSTOMIZED}/{made['id']}/archive", headers=other)
        assert archive.status_code == 404
        assert client.get(f"{API}/{model['id']}", headers=auth).json()["status"] == "ready"
