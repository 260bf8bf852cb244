"""GGUF import with the real SmolLM2 file: the job, the folder it writes, and crashes."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from tests.helpers import wait_for_job
from tuneyard.basemodels.gguf_import import convert_gguf
from tuneyard.db import session_scope
from tuneyard.models import Job
from tuneyard.storage import Layout, partial_path

API = "/api/v1/base-models"
CHAT = [{"role": "user", "content": "What is the capital of France?"}]


def start_import(client, auth, gguf, name="smol"):
    response = client.post(API, json={"technical_name": name, "gguf_path": str(gguf)}, headers=auth)
    assert response.status_code == 202, response.text
    return response.json()


@pytest.fixture(scope="module")
def converted_dir(tmp_path_factory, smollm2_gguf):
    """The folder the import job writes, made once by the same conversion for these tests."""
    out = tmp_path_factory.mktemp("smollm2-hf")
    convert_gguf(smollm2_gguf, out, "chat", lambda _percent, _message: None)
    return out


@pytest.mark.slow
class TestImportJob:
    @pytest.mark.backend_free
    def test_job_writes_a_ready_managed_folder(self, client, auth, worker, smollm2_gguf):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        accepted = start_import(client, auth, smollm2_gguf)
        job = wait_for_job(accepted["job_id"], timeout=600)
        assert job.status == "succeeded", job.error
        assert job.message == "Imported smol: 134.5M parameters, float32"
        log = client.get(f"/api/v1/jobs/{job.id}/logs", headers=auth).text
        assert "Dequantizing SmolLM2-135M-Instruct.Q4_1.gguf" in log

        model = client.get(f"{API}/{accepted['id']}", headers=auth).json()
        folder = Layout().base_model_dir(accepted["id"])
        assert (model["status"], model["managed"], model["path"]) == ("ready", True, str(folder))
        card = model["model_card"]
        assert card["architecture"] == "LlamaForCausalLM"
        assert card["context_length"] == 8192
        assert card["parameter_count"] == 134_515_008
        assert card["chat_template"] is True
        assert card["deployment_template_source"] == "derived:chat_template"
        assert not partial_path(folder).exists()

        config = json.loads((folder / "config.json").read_text())
        assert "quantization_config" not in config
        assert (folder / "model.safetensors").is_file()
        assert (folder / "generation_config.json").is_file()
        assert AutoTokenizer.from_pretrained(folder).chat_template
        loaded = AutoModelForCausalLM.from_pretrained(folder)
        assert sum(p.numel() for p in loaded.parameters()) == card["parameter_count"]

        assert client.delete(f"{API}/{accepted['id']}", headers=auth).status_code == 204
        assert not folder.exists()


class TestImportCrash:
    def test_kill_9_leaves_the_model_failed_and_no_folder(self, client, auth, worker, smollm2_gguf):
        accepted = start_import(client, auth, smollm2_gguf)
        folder = Layout().base_model_dir(accepted["id"])
        deadline = time.monotonic() + 60
        while not partial_path(folder).exists():
            assert time.monotonic() < deadline, "the import never started writing"
            time.sleep(0.05)
        with session_scope() as session:
            pid = session.get(Job, accepted["job_id"]).pid
        os.kill(pid, signal.SIGKILL)
        job = wait_for_job(accepted["job_id"])
        assert job.status == "failed"
        model = client.get(f"{API}/{accepted['id']}", headers=auth).json()
        assert model["status"] == "failed"
        assert model["error"].startswith("The GGUF import failed: The job's process was killed")
        assert model["path"] is None
        assert not folder.exists() and not partial_path(folder).exists()


@pytest.mark.slow
@pytest.mark.nodb
class TestImportedFolder:
    def test_sft_trainer_with_lora_runs_a_step(self, converted_dir, tmp_path):
        from datasets import Dataset
        from peft import LoraConfig
        from trl import SFTConfig, SFTTrainer

        records = Dataset.from_list(
            [
                {"messages": [*CHAT, {"role": "assistant", "content": "Paris."}]},
                {
                    "messages": [
                        {"role": "user", "content": "Name a colour."},
                        {"role": "assistant", "content": "Blue."},
                    ]
                },
            ]
        )
        args = SFTConfig(
            output_dir=str(tmp_path / "out"),
            max_steps=1,
            per_device_train_batch_size=2,
            max_length=64,
            learning_rate=1e-3,
            report_to=[],
            save_strategy="no",
            logging_steps=1,
            bf16=False,
            gradient_checkpointing=False,
        )
        trainer = SFTTrainer(
            model=str(converted_dir),
            args=args,
            train_dataset=records,
            peft_config=LoraConfig(r=8, target_modules="all-linear", task_type="CAUSAL_LM"),
        )
        assert trainer.model.peft_config["default"].r == 8
        result = trainer.train()
        assert result.global_step == 1
        assert result.training_loss > 0

    def test_greedy_generation_matches_the_gguf(self, converted_dir, smollm2_gguf):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        def generate(model, tokenizer):
            prompt = tokenizer.apply_chat_template(
                CHAT, add_generation_prompt=True, return_tensors="pt", return_dict=True
            )
            with torch.no_grad():
                output = model.generate(**prompt, max_new_tokens=8, do_sample=False)
            return output[0, prompt["input_ids"].shape[1] :].tolist()

        imported = generate(
            AutoModelForCausalLM.from_pretrained(converted_dir),
            AutoTokenizer.from_pretrained(converted_dir),
        )
        source = dict(pretrained_model_name_or_path=str(smollm2_gguf.parent))
        reference = generate(
            AutoModelForCausalLM.from_pretrained(**source, gguf_file=smollm2_gguf.name),
            AutoTokenizer.from_pretrained(**source, gguf_file=smollm2_gguf.name),
        )
        assert len(imported) == 8
        assert imported == reference
