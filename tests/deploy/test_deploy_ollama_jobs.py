"""Deploying to Ollama end to end: API -> job process -> Ollama's HTTP API (a protocol double)."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.helpers import (
    add_env,
    assert_fidelity_queued,
    closed_port,
    deploy,
    deployed,
    make_customized,
    saved,
    wait_for_job,
)
from tests.ollama_double import FAMILIES, VERSION
from tuneyard.db import session_scope
from tuneyard.models import LiveModel, ThirdPartyModel

LIVE = "/api/v1/live-models"

# Every family of releases on SQLite's pass; on PostgreSQL's, the default one: what differs
# between releases is what the double answers, not what the deploy writes to the database.
RELEASES = [
    pytest.param(version, marks=[] if version == VERSION else [pytest.mark.backend_free])
    for version in FAMILIES
]


@pytest.fixture
def ollama_env(client, auth, ollama) -> dict:
    return add_env(client, auth, name="ollama", kind="ollama", url=ollama.url)


def blob_posts(ollama) -> int:
    return sum(1 for method, path in ollama.requests if method == "POST" and "/blobs/" in path)


class TestDeployToOllama:
    @pytest.mark.fidelity_check
    @pytest.mark.parametrize("ollama_version", RELEASES)
    def test_base_model_at_q4_k_m(self, client, auth, worker, ollama, ollama_env, tiny_base):
        live = deployed(
            client,
            auth,
            "base",
            tiny_base,
            ollama_env["id"],
            quantization="q4_K_M",
            system="Answer briefly.",
            parameters={"temperature": 0.2},
        )
        prefix = f"tiny_d_{live['id'].replace('-', '')[:4]}"
        assert live["name"] == f"{prefix}_q4_K_M"
        assert live["tag"] == f"{prefix}_q4_k_m"
        assert live["endpoint_url"] == f"{ollama.url}/v1" and live["model_id"] == live["tag"]
        assert live["size_bytes"] > 0

        record = ollama.find(live["tag"])
        # Tuneyard's own GGUF, quantized here: the one file, and Ollama quantizes nothing.
        assert record.quantization == "Q4_K_M" and record.family == "llama"
        assert list(record.files) == ["model.gguf"]
        uploaded = live["model_card"]["served"]["uploaded"]["model.gguf"]
        assert record.files["model.gguf"] == uploaded
        # Since 0.30 Ollama rewrites the GGUF it imports: the digest it stores is another.
        rewrites = ollama.release >= (0, 30, 0)
        assert (record.model_digest != uploaded) is rewrites
        assert live["model_card"]["served"]["stored"]["quantization_level"] == "Q4_K_M"
        assert live["model_card"]["served"]["ollama_version"] == ollama.version
        base = client.get(f"/api/v1/base-models/{tiny_base}", headers=auth).json()
        assert record.template == base["deployment_template"]
        assert record.system == "Answer briefly."
        assert record.parameters["temperature"] == 0.2
        assert "<|im_end|>" in record.parameters["stop"]
        assert live["model_card"]["template_parity"]["status"] == "match"

        job = client.get(f"/api/v1/jobs/{live['job_id']}", headers=auth).json()
        assert job["progress"] == 100
        log = client.get(f"/api/v1/jobs/{live['job_id']}/logs", headers=auth).text
        assert "Ollama: parsing GGUF" in log and "quantizing F16" not in log

        check = client.post(f"{LIVE}/{live['id']}/check", headers=auth).json()
        assert check == {"ok": True, "status": "live", "detail": check["detail"]}
        assert_fidelity_queued(client, auth, live)

    @pytest.mark.fidelity_check
    def test_fidelity_figure_appears_once_its_check_has_run(
        self, client, auth, worker, ollama, ollama_env, tiny_base
    ):
        live = deployed(client, auth, "base", tiny_base, ollama_env["id"])
        check = assert_fidelity_queued(client, auth, live)
        # A base model has no training dataset: the built-in prompts are asked.
        assert check["prompts"] == 16
        job = wait_for_job(check["job_id"], timeout=180)
        assert job.status == "succeeded", job.error
        figure = client.get(f"{LIVE}/{live['id']}", headers=auth).json()["fidelity"]
        assert figure["assessment_id"] == check["assessment_id"]
        # The double answers "[model] hello", which the real tiny model never says.
        assert figure["compared"] == 16 and figure["identical"] == 0
        assert figure["identical_rate"] == 0 and 0 <= figure["token_agreement"] < 1
        assert figure["text"] == "no_quantization agrees with its source on 0 of 16 prompts"
        assessment = client.get(
            f"/api/v1/assessments/{check['assessment_id']}", headers=auth
        ).json()
        assert assessment["dataset_name"] == "built-in prompts"
        assert [c["model"] for c in assessment["config"]["candidates"]] == [
            f"base:{tiny_base}",
            f"live:{live['id']}",
        ]
        assert {c["params"]["temperature"] for c in assessment["config"]["candidates"]} == {0}

    def test_unquantized_leaves_quantize_out(
        self, client, auth, worker, ollama, ollama_env, tiny_base
    ):
        live = deployed(client, auth, "base", tiny_base, ollama_env["id"])
        assert live["name"].endswith("_no_quantization")
        assert ollama.find(live["tag"]).quantization == "F16"

    @pytest.mark.parametrize("ollama_version", RELEASES)
    def test_customized_goes_on_its_base_deployed_first(
        self, client, auth, worker, ollama, ollama_env, tiny_base, made_adapter_dir
    ):
        made = make_customized(tiny_base, made_adapter_dir)
        live = deployed(
            client, auth, "customized", made["id"], ollama_env["id"], quantization="q8_0"
        )
        listed = client.get(LIVE, headers=auth).json()
        assert listed["total"] == 2
        base_live = next(item for item in listed["items"] if item["source_kind"] == "base")
        assert base_live["status"] == "live" and base_live["quantization"] == "q8_0"
        record = ollama.find(live["tag"])
        assert record.parent is not None and record.parent.startswith(base_live["name"].lower())
        assert list(record.adapters) == ["adapter.gguf"]
        assert "GGUF LoRA" in live["model_card"]["served"]["adapter"]
        answer = ollama_chat(ollama, live["model_id"])
        assert answer.endswith("(adapter)")

        # A second adapter on the same base reuses the live base: no model blobs again.
        posts_before = blob_posts(ollama)
        other = make_customized(tiny_base, made_adapter_dir, train_name="again")
        deployed(client, auth, "customized", other["id"], ollama_env["id"], quantization="q8_0")
        assert client.get(LIVE, headers=auth).json()["total"] == 3
        # Only the second adapter's GGUF (it names its own adapter) is uploaded.
        assert blob_posts(ollama) == posts_before + 1

    @pytest.mark.parametrize("ollama_version", ["0.0.0"])
    def test_customized_is_merged_when_the_release_is_unknown(
        self, client, auth, worker, ollama, ollama_env, tiny_base, made_adapter_dir
    ):
        # Development builds say 0.0.0: whether they load a LoRA is unknown, a merged model
        # loads on every release.
        made = make_customized(tiny_base, made_adapter_dir)
        live = deployed(
            client, auth, "customized", made["id"], ollama_env["id"], quantization="q8_0"
        )

        assert client.get(LIVE, headers=auth).json()["total"] == 1
        record = ollama.find(live["tag"])
        assert record.parent is None and record.adapters == {}
        assert list(record.files) == ["model.gguf"] and record.quantization == "Q8_0"
        card = live["model_card"]
        assert card["served"]["adapter"].startswith("Merged into its base and uploaded whole")
        assert any("merged into its base" in warning for warning in card["warnings"])
        assert ollama_chat(ollama, live["model_id"]) == f"[{live['model_id']}] hello"

    @pytest.mark.fidelity_check
    def test_complete_model(
        self, client, auth, worker, ollama, ollama_env, tiny_base, made_adapter_dir
    ):
        made = make_customized(tiny_base, made_adapter_dir)
        complete = saved(client, auth, made["id"])
        live = deployed(
            client,
            auth,
            "complete",
            complete["id"],
            ollama_env["id"],
            quantization="q4_K_S",
            fidelity_check=False,
        )
        # Opted out: no check is queued, and the card says the request asked for none.
        assert "fidelity_check" not in live["model_card"]
        assert live["model_card"]["deploy"]["fidelity_check"] is False
        assert client.get("/api/v1/assessments", headers=auth).json()["total"] == 0
        assert live["name"].startswith(complete["name"] + "_d_")
        assert live["model_card"]["lineage"]["complete_model"] == complete["name"]
        assert ollama.find(live["tag"]).quantization == "Q4_K_S"

    @pytest.mark.fidelity_check
    def test_register_then_delete_keeps_the_entry(
        self, client, auth, worker, ollama, ollama_env, tiny_base
    ):
        live = deployed(client, auth, "base", tiny_base, ollama_env["id"], quantization="q8_0")
        registered = client.post(f"{LIVE}/{live['id']}/register", headers=auth)
        assert registered.status_code == 201, registered.text
        entry = registered.json()
        assert entry["name"] == live["name"] and entry["model_name"] == live["tag"]
        assert entry["base_url"] == f"{ollama.url}/v1" and entry["provider"] == "ollama"
        again = client.post(f"{LIVE}/{live['id']}/register", headers=auth)
        assert again.status_code == 409

        # Deleting it ends the fidelity check its deploy queued rather than waiting for it.
        check = assert_fidelity_queued(client, auth, live)
        assert client.delete(f"{LIVE}/{live['id']}", headers=auth).status_code == 204
        assert ollama.find(live["tag"]) is None
        assert wait_for_job(check["job_id"]).status in ("cancelled", "succeeded")
        assert client.get(f"{LIVE}/{live['id']}", headers=auth).status_code == 404
        with session_scope() as session:
            assert session.get(ThirdPartyModel, entry["id"]).live_model_id == live["id"]

    def test_environment_with_live_models_cannot_be_deleted(
        self, client, auth, worker, ollama, ollama_env, tiny_base
    ):
        live = deployed(client, auth, "base", tiny_base, ollama_env["id"], quantization="q8_0")
        response = client.delete(f"/api/v1/deploy-environments/{ollama_env['id']}", headers=auth)
        assert response.status_code == 409
        assert live["name"] in response.json()["detail"]

    def test_model_removed_on_the_tool_shows_stopped(
        self, client, auth, worker, ollama, ollama_env, tiny_base
    ):
        live = deployed(client, auth, "base", tiny_base, ollama_env["id"], quantization="q8_0")
        ollama.models.clear()
        check = client.post(f"{LIVE}/{live['id']}/check", headers=auth).json()
        assert check["ok"] is False and check["status"] == "stopped"
        assert "no longer has" in check["detail"]


class TestOllamaFailures:
    def test_unreachable_ollama_fails_the_job_and_the_live_model(
        self, client, auth, worker, tiny_base
    ):
        env = add_env(
            client, auth, name="down", kind="ollama", url=f"http://127.0.0.1:{closed_port()}"
        )
        accepted = deploy(client, auth, "base", tiny_base, env["id"], quantization="q8_0")
        job = wait_for_job(accepted["job_id"], timeout=60)
        assert job.status == "failed"
        assert "Cannot reach Ollama" in job.error
        live = client.get(f"{LIVE}/{accepted['id']}", headers=auth).json()
        assert live["status"] == "failed" and live["error"] == job.error
        # A failed live model can be removed even though the tool never had it.
        assert client.delete(f"{LIVE}/{accepted['id']}", headers=auth).status_code == 204

    def test_unsupported_architecture_is_refused_before_upload(
        self, client, auth, ollama, ollama_env, tiny_model_dir, tmp_path
    ):
        folder = tmp_path / "gpt2ish"
        shutil.copytree(tiny_model_dir, folder)
        response = client.post(
            "/api/v1/base-models", json={"technical_name": "odd", "path": str(folder)}, headers=auth
        )
        assert response.status_code == 201, response.text
        config = json.loads((folder / "config.json").read_text())
        config["architectures"] = ["GPT2LMHeadModel"]
        (folder / "config.json").write_text(json.dumps(config))
        refused = client.post(
            f"/api/v1/base-models/{response.json()['id']}/deploy",
            json={"environment_id": ollama_env["id"], "quantization": "q8_0"},
            headers=auth,
        )
        assert refused.status_code == 422
        assert "GPT2LMHeadModel" in refused.json()["detail"]
        assert ollama.requests == [] or all("/blobs/" not in path for _, path in ollama.requests)
        with session_scope() as session:
            assert session.query(LiveModel).count() == 0


def ollama_chat(ollama, model: str) -> str:
    from tuneyard.deploy.ollama import OllamaClient

    return OllamaClient(ollama.url).chat(model, [{"role": "user", "content": "hello"}])


# A chat template offering thinking, as Qwen3's does: Ollama v0.30+ serves it itself.
THINKING_TEMPLATE = (
    "{%- for m in messages %}"
    "{%- if m['role'] == 'assistant' %}{% set content = m['content'].split('</think>')[-1] %}"
    "{%- else %}{% set content = m['content'] %}{% endif %}"
    "<|im_start|>{{ m['role'] }}\n{{ content }}<|im_end|>\n"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}<|im_start|>assistant\n<think>\n\n</think>\n\n{% endif %}"
)


@pytest.fixture
def thinking_base(client, auth, tiny_model_dir, tmp_path) -> str:
    folder = tmp_path / "thinking"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "chat_template.jinja").write_text(THINKING_TEMPLATE)
    body = {"technical_name": "thinking", "path": str(folder)}
    response = client.post("/api/v1/base-models", json=body, headers=auth)
    assert response.status_code == 201, response.text
    return response.json()["id"]


class TestTemplateOllamaRenders:
    """A Go template that does not reproduce a thinking chat template blocks a deploy only
    where Ollama would render it: before 0.30. From 0.30 the GGUF's own template is checked."""

    @pytest.fixture
    def plain_go_template(self, client, auth, thinking_base) -> str:
        response = client.patch(
            f"/api/v1/base-models/{thinking_base}",
            json={"deployment_template": "{{ .System }} {{ .Prompt }}"},
            headers=auth,
        )
        assert response.status_code == 200, response.text
        return thinking_base

    @pytest.mark.parametrize("ollama_version", ["0.31.0"])
    def test_from_0_30_parity_is_checked_on_the_gguf_ollama_renders(
        self, client, auth, worker, ollama, ollama_env, plain_go_template
    ):
        live = deployed(client, auth, "base", plain_go_template, ollama_env["id"])
        assert live["model_card"]["template_parity"] == {
            "status": "match",
            "detail": "The chat template in model.gguf renders the model's own prompt.",
        }
        record = ollama.find(live["tag"])
        assert record.chat_template == THINKING_TEMPLATE and record.renders_chat_template

    @pytest.mark.parametrize("ollama_version", ["0.12.6"])
    def test_before_0_30_the_go_template_is_compared_and_refused(
        self, client, auth, ollama, ollama_env, plain_go_template
    ):
        refused = client.post(
            f"/api/v1/base-models/{plain_go_template}/deploy",
            json={"environment_id": ollama_env["id"]},
            headers=auth,
        )
        assert refused.status_code == 422
        assert "deployment template renders a different prompt" in refused.json()["detail"]
        with session_scope() as session:
            assert session.query(LiveModel).count() == 0
