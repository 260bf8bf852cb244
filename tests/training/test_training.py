"""Training end to end on a tiny llama: real TRL steps in a real job process."""

from __future__ import annotations

import json
import os
import re
import signal
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.helpers import CHAT, FAST, PREFERENCE, finish, lora_b_norm, start, upload, wait_for_job

PROMPTS = [{"prompt": f"What is {i} plus {i}?", "answer": str(2 * i)} for i in range(8)]


class TestSFT:
    @pytest.mark.slow
    def test_trains_learns_and_creates_customized_model(self, client, auth, worker, tiny_base):
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        dataset = upload(client, auth, "codes", CHAT)
        training = finish(
            client,
            auth,
            start(client, auth, tiny_base, dataset, name="codes", **FAST, save_steps=3),
        )
        assert training["status"] == "succeeded" and training["progress"] == 100

        series = client.get(f"/api/v1/trainings/{training['id']}/metrics", headers=auth).json()
        losses = [v for _, v in series["series"]["train"]["loss"]]
        steps = [s for s, _ in series["series"]["train"]["loss"]]
        assert steps == list(range(1, 7))
        assert losses[-1] < losses[0] and sum(losses[-2:]) < sum(losses[:2]), losses
        for key in ("learning_rate", "grad_norm", "epoch", "tokens_per_second"):
            assert key in series["series"]["train"], key

        model_id = training["customized_model_id"]
        model = client.get(f"/api/v1/customized-models/{model_id}", headers=auth).json()
        date = datetime.now(UTC).strftime("%Y%m%d")
        first4 = training["id"].replace("-", "")[:4]
        assert model["name"] == f"tiny_codes_{date}_{first4}"
        card = model["model_card"]
        assert card["lineage"]["base_model"] == "tiny"
        assert card["lineage"]["dataset"] == "codes"
        assert re.fullmatch(r"[0-9a-f]{64}", card["lineage"]["dataset_digest"])
        assert card["training"]["method"] == "sft"
        assert card["training"]["params"]["learning_rate"] == 2e-2
        assert card["training"]["checkpoints"] == [3, 6]
        assert card["metrics"]["final_loss"] == losses[-1]

        folder = Path(model["path"])
        readme = (folder / "README.md").read_text()
        assert readme.startswith("---\n") and "tiny_codes_" in readme
        assert lora_b_norm(folder) > 0  # LoRA B starts at zero: nonzero means it trained
        base = AutoModelForCausalLM.from_pretrained(
            client.get(f"/api/v1/base-models/{tiny_base}", headers=auth).json()["path"]
        )
        PeftModel.from_pretrained(base, folder)

        listed = client.get("/api/v1/customized-models", headers=auth).json()
        assert listed["total"] == 1 and listed["items"][0]["base_model_name"] == "tiny"


class TestFullFineTune:
    @pytest.mark.slow
    def test_full_fine_tune_makes_a_complete_model(self, client, auth, worker, tiny_base):
        from transformers import AutoModelForCausalLM

        dataset = upload(client, auth, "codes", CHAT)
        training = finish(
            client, auth, start(client, auth, tiny_base, dataset, adapter="full", **FAST)
        )
        assert training["customized_model_id"] is None
        complete_id = training["summary"]["complete_model_id"]
        from tuneyard.db import session_scope
        from tuneyard.models import CompleteModel

        with session_scope() as session:
            row = session.get(CompleteModel, complete_id)
            path, card = row.path, row.model_card
        assert card["kind"] == "complete" and card["training"]["params"]["adapter"] == "full"
        tuned = AutoModelForCausalLM.from_pretrained(path)
        base_path = client.get(f"/api/v1/base-models/{tiny_base}", headers=auth).json()["path"]
        base = AutoModelForCausalLM.from_pretrained(base_path)
        changed = [
            name
            for (name, a), (_, b) in zip(
                tuned.state_dict().items(), base.state_dict().items(), strict=True
            )
            if not a.equal(b)
        ]
        assert len(changed) > 10


class TestValidation:
    @pytest.fixture
    def chat_dataset(self, client, auth, worker):
        return upload(client, auth, "chat", CHAT)

    @pytest.mark.parametrize(
        "params,needle",
        [
            ({"learning_rat": 0.1}, "learning_rat: unknown parameter"),
            ({"batch_size": 0}, "batch_size: Input should be greater than or equal to 1"),
            ({"lr_scheduler": "wobbly"}, "lr_scheduler"),
        ],
    )
    def test_bad_params_refused_before_any_job(
        self, client, auth, tiny_base, chat_dataset, params, needle
    ):
        response = start(client, auth, tiny_base, chat_dataset, **params)
        assert response.status_code == 422, response.text
        assert needle in response.json()["detail"]
        assert client.get("/api/v1/trainings", headers=auth).json()["total"] == 0
        jobs = client.get("/api/v1/jobs?kind=training.run", headers=auth).json()
        assert jobs["total"] == 0

    @pytest.mark.skipif(
        __import__("torch").cuda.is_available(), reason="this machine has the GPU it needs"
    )
    @pytest.mark.parametrize(
        "params,needle",
        [
            ({"adapter": "qlora"}, "QLoRA loads the base model in 4 bits, which needs a CUDA GPU"),
            ({"precision": "fp16"}, "precision=fp16 needs a CUDA GPU"),
        ],
    )
    def test_a_gpu_option_fails_the_job_on_a_machine_without_one(
        self, client, auth, tiny_base, chat_dataset, params, needle
    ):
        """The machine that runs the job decides what hardware it has, not the server."""
        response = start(client, auth, tiny_base, chat_dataset, **{**FAST, **params})
        assert response.status_code == 202, response.text
        job = wait_for_job(response.json()["job_id"])
        assert job.status == "failed"
        assert needle in job.error and "the machine running this training has none" in job.error
        training = client.get(f"/api/v1/trainings/{response.json()['id']}", headers=auth).json()
        assert training["status"] == "failed" and needle in training["error"]

    @pytest.mark.parametrize(
        "method,records,params,message",
        [
            (
                "kto",
                [{"prompt": "Say hi.", "completion": "hi"}] * 4,
                {},
                "KTO on prompt_completion records needs a boolean 'label' field (true = "
                "desirable); dataset 'd' has none. Add it, or use a preference dataset.",
            ),
            (
                "grpo",
                [{"prompt": f"What is {i} plus {i}?"} for i in range(4)],
                {"rewards": ["answer_match"]},
                "Rewards answer_match compare with each record's 'answer', and dataset 'd' has "
                "no answer field.",
            ),
        ],
    )
    def test_a_method_checks_what_it_needs_of_a_dataset(
        self, client, auth, worker, tiny_base, method, records, params, message
    ):
        dataset = upload(client, auth, "d", records)
        response = start(client, auth, tiny_base, dataset, method, **params)
        assert response.status_code == 422, response.text
        assert response.json()["detail"] == message
        assert client.get("/api/v1/trainings", headers=auth).json()["total"] == 0

    def test_the_generic_checks_name_no_method(self):
        """A method's own needs are its check_dataset hook's, not the training service's."""
        import inspect

        from tuneyard.training import service

        for check in (service.check_dataset_fits, service.start_training):
            source = inspect.getsource(check).lower()
            for method in ("sft", "dpo", "orpo", "kto", "grpo"):
                assert f'"{method}"' not in source and f"{method}params" not in source

    def test_dataset_format_must_fit_method(self, client, auth, tiny_base, chat_dataset):
        response = start(client, auth, tiny_base, chat_dataset, method="dpo")
        assert response.status_code == 422
        assert response.json()["detail"] == (
            "Dataset 'chat' is in chat format, but dpo trains on preference records. "
            "Pick another dataset or method."
        )

    def test_unknown_method(self, client, auth, tiny_base, chat_dataset):
        response = start(client, auth, tiny_base, chat_dataset, method="magic")
        assert response.status_code == 422
        assert "Unknown training method 'magic'" in response.json()["detail"]

    def test_no_chat_template(self, client, auth, worker, tiny_model_dir, tmp_path):
        import shutil

        folder = tmp_path / "no-template"
        shutil.copytree(tiny_model_dir, folder)
        (folder / "chat_template.jinja").unlink()
        config = json.loads((folder / "tokenizer_config.json").read_text())
        config.pop("chat_template", None)
        (folder / "tokenizer_config.json").write_text(json.dumps(config))
        base = client.post(
            "/api/v1/base-models",
            json={"technical_name": "plain", "path": str(folder)},
            headers=auth,
        ).json()["id"]
        dataset = upload(client, auth, "chat", CHAT)
        response = start(client, auth, base, dataset)
        assert response.status_code == 422
        assert "has no chat template" in response.json()["detail"]

    def test_training_free_mode_refuses(self, client, auth, tiny_base, chat_dataset, monkeypatch):
        from tuneyard.config import reset_settings

        monkeypatch.setenv("TUNEYARD_TRAINING_ENABLED", "false")
        reset_settings()
        response = start(client, auth, tiny_base, chat_dataset)
        assert response.status_code == 503
        assert "TUNEYARD_TRAINING_ENABLED=true" in response.json()["detail"]
        assert client.get("/api/v1/health").json()["mode"] == "training-free"


class TestCancelAndResume:
    @pytest.mark.slow
    def test_kill_9_then_resume_finishes_with_one_model(self, client, auth, worker, tiny_base):
        dataset = upload(client, auth, "codes", CHAT)
        params = {**FAST, "max_steps": 40, "save_steps": 2, "learning_rate": 1e-3}
        response = start(client, auth, tiny_base, dataset, **params)
        training_id, job_id = response.json()["id"], response.json()["job_id"]
        checkpoint_dir = Path(os.environ["TUNEYARD_DATA_DIR"]) / "trainings" / training_id
        deadline = time.monotonic() + 240
        while not (checkpoint_dir / "checkpoints" / "checkpoint-4").exists():
            assert time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.2)
        pid = client.get(f"/api/v1/jobs/{job_id}", headers=auth)
        from tuneyard.db import session_scope
        from tuneyard.models import Job

        with session_scope() as session:
            pid = session.get(Job, job_id).pid
        os.killpg(pid, signal.SIGKILL)
        job = wait_for_job(job_id)
        assert job.status == "failed" and "SIGKILL" in job.error
        failed = client.get(f"/api/v1/trainings/{training_id}", headers=auth).json()
        assert failed["status"] == "failed" and failed["customized_model_id"] is None

        resumed = client.post(f"/api/v1/trainings/{training_id}/resume", headers=auth)
        assert resumed.status_code == 202
        done = finish(client, auth, resumed, timeout=400)
        assert done["customized_model_id"]
        assert client.get("/api/v1/customized-models", headers=auth).json()["total"] == 1
        logs = client.get(f"/api/v1/jobs/{resumed.json()['job_id']}/logs", headers=auth).text
        assert "Resuming from checkpoint at step" in logs
        steps = client.get(f"/api/v1/trainings/{training_id}/metrics", headers=auth).json()
        loss_steps = [s for s, _ in steps["series"]["train"]["loss"]]
        assert loss_steps == sorted(set(loss_steps)) and loss_steps[-1] == 40

    @pytest.mark.slow
    def test_cancel_stops_at_a_step_and_keeps_a_checkpoint(self, client, auth, worker, tiny_base):
        dataset = upload(client, auth, "codes", CHAT)
        params = {**FAST, "max_steps": 400, "save_steps": 1000}
        response = start(client, auth, tiny_base, dataset, **params)
        training_id = response.json()["id"]
        deadline = time.monotonic() + 240
        while client.get(f"/api/v1/trainings/{training_id}", headers=auth).json()["progress"] < 1.5:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        cancel = client.post(f"/api/v1/trainings/{training_id}/cancel", headers=auth)
        assert cancel.status_code == 200
        job = wait_for_job(response.json()["job_id"])
        assert job.status == "cancelled", job.error
        training = client.get(f"/api/v1/trainings/{training_id}", headers=auth).json()
        assert training["status"] == "cancelled"
        checkpoints = list(
            (
                Path(os.environ["TUNEYARD_DATA_DIR"]) / "trainings" / training_id / "checkpoints"
            ).glob("checkpoint-*")
        )
        assert len(checkpoints) == 1


class TestOtherMethods:
    """Each method runs real steps on the tiny model and changes the adapter's weights."""

    @pytest.mark.parametrize(
        "method,records,extra",
        [
            ("dpo", PREFERENCE, {}),
            ("orpo", PREFERENCE, {}),
            ("kto", PREFERENCE, {}),
            (
                "grpo",
                PROMPTS,
                {
                    "num_generations": 2,
                    "max_completion_length": 8,
                    "rewards": ["answer_match", "length_penalty"],
                    "length_target": 4,  # random tokens differ in length: rewards vary
                },
            ),
        ],
    )
    @pytest.mark.slow
    def test_method_trains(self, client, auth, worker, tiny_base, method, records, extra):
        dataset = upload(client, auth, f"{method}-data", records)
        params = {**FAST, "max_steps": 2, "learning_rate": 1e-2, **extra}
        training = finish(client, auth, start(client, auth, tiny_base, dataset, method, **params))
        model = client.get(
            f"/api/v1/customized-models/{training['customized_model_id']}", headers=auth
        ).json()
        assert model["model_card"]["training"]["method"] == method
        assert lora_b_norm(Path(model["path"])) > 0
        series = client.get(f"/api/v1/trainings/{training['id']}/metrics", headers=auth).json()
        train = series["series"]["train"]
        assert [s for s, _ in train["loss"]] == [1, 2]
        if method == "dpo":
            assert "rewards/chosen" in train and "rewards/rejected" in train
        if method == "grpo":
            assert "reward" in train and "reward_std" in train

    @pytest.mark.slow
    def test_grpo_with_an_uploaded_reward_file(self, code_uploads, client, auth, worker, tiny_base):
        # It runs in a process of its own, which has none of Tuneyard's settings.
        source = (
            b"import os\n"
            b"def reward(completions, answer, **_):\n"
            b"    assert not [name for name in os.environ if name.startswith('TUNEYARD_')]\n"
            b"    return [float(len(c) % 3) for c in completions]\n"
        )
        uploaded = client.post(
            "/api/v1/reward-files",
            data={"name": "mod3"},
            files={"file": ("mod3.py", source, "text/x-python")},
            headers=auth,
        )
        assert uploaded.status_code == 201, uploaded.text
        dataset = upload(client, auth, "prompts", PROMPTS)
        params = {
            **FAST,
            "max_steps": 1,
            "num_generations": 2,
            "max_completion_length": 8,
            "rewards": ["file:mod3"],
        }
        training = finish(client, auth, start(client, auth, tiny_base, dataset, "grpo", **params))
        series = client.get(f"/api/v1/trainings/{training['id']}/metrics", headers=auth).json()
        assert "rewards/file_mod3/mean" in series["series"]["train"]

    def test_a_reward_that_names_a_file_elsewhere_is_refused_before_any_job(
        self, code_uploads, client, auth, worker, tiny_base, tmp_path
    ):
        from tuneyard.auth.service import local_principal
        from tuneyard.db import session_scope
        from tuneyard.storage import Layout

        source = "def reward(completions, **_):\n    return [1.0 for _ in completions]\n"
        (tmp_path / "placed.py").write_text(source)  # anywhere a member can put a file
        data = Path(os.environ["TUNEYARD_DATA_DIR"])
        (data / "placed.py").write_text(source)
        with session_scope() as session:
            folder = Layout().reward_dir(local_principal(session).project_id)
        folder.mkdir(parents=True)
        (folder / "linked.py").symlink_to(tmp_path / "placed.py")
        dataset = upload(client, auth, "prompts", PROMPTS)
        grpo = {**FAST, "num_generations": 2, "max_completion_length": 8}
        rule = "a reward file's name is 1-64 letters, digits, '_' or '-'"
        for reward, detail in (
            (
                f"file:{tmp_path / 'placed'}",
                f"Invalid parameters for grpo: 'file:{tmp_path / 'placed'}' does not name a "
                f"reward file: {rule} (see GET /api/v1/reward-files). See GET "
                "/api/v1/training-methods for every parameter.",
            ),
            (
                "file:../../placed",
                "Invalid parameters for grpo: 'file:../../placed' does not name a reward file: "
                f"{rule} (see GET /api/v1/reward-files). See GET /api/v1/training-methods for "
                "every parameter.",
            ),
            ("file:linked", "No reward file 'linked'. Upload one with POST /api/v1/reward-files."),
        ):
            response = start(client, auth, tiny_base, dataset, "grpo", rewards=[reward], **grpo)
            assert response.status_code == 422, response.text
            assert response.json()["detail"] == detail
        assert client.get("/api/v1/trainings", headers=auth).json()["total"] == 0

    def test_reward_file_errors(self, code_uploads, client, auth):
        bad = client.post(
            "/api/v1/reward-files",
            data={"name": "bad"},
            files={"file": ("bad.py", b"def nope(:\n", "text/x-python")},
            headers=auth,
        )
        assert bad.status_code == 422 and "not valid UTF-8 Python" in bad.json()["detail"]
        missing = client.post(
            "/api/v1/reward-files",
            data={"name": "other"},
            files={"file": ("o.py", b"def score(c):\n    return c\n", "text/x-python")},
            headers=auth,
        )
        assert missing.status_code == 422 and "def reward(" in missing.json()["detail"]


class TestProfilesAndCopy:
    @pytest.mark.slow
    def test_profile_applies_and_request_wins(self, client, auth, worker, tiny_base):
        profile = client.post(
            "/api/v1/profiles",
            json={"name": "quick", "method": "sft", "params": {"lora_rank": 4, "max_steps": 2}},
            headers=auth,
        )
        assert profile.status_code == 201, profile.text
        dataset = upload(client, auth, "codes", CHAT)
        response = client.post(
            "/api/v1/trainings",
            json={
                "name": "p",
                "method": "sft",
                "base_model_id": tiny_base,
                "dataset_id": dataset,
                "params": {"max_steps": 1, "batch_size": 2, "grad_accum_steps": 1},
                "profile_id": profile.json()["id"],
            },
            headers=auth,
        )
        training = finish(client, auth, response)
        assert training["params"]["lora_rank"] == 4
        assert training["params"]["max_steps"] == 1
        copied = client.get(f"/api/v1/trainings/{training['id']}/copy", headers=auth).json()
        assert copied["params"] == training["params"] and copied["method"] == "sft"

    def test_profile_with_bad_params(self, client, auth):
        response = client.post(
            "/api/v1/profiles",
            json={"name": "bad", "method": "sft", "params": {"lora_rank": 0}},
            headers=auth,
        )
        assert response.status_code == 422 and "lora_rank" in response.json()["detail"]

    def test_methods_list_documents_every_parameter(self, client, auth):
        methods = {
            m["name"]: m for m in client.get("/api/v1/training-methods", headers=auth).json()
        }
        assert set(methods) == {"sft", "dpo", "orpo", "kto", "grpo"}
        for method in methods.values():
            for name, prop in method["params_schema"]["properties"].items():
                assert prop.get("description"), f"{method['name']}.{name} is undocumented"
                assert "default" in prop, f"{method['name']}.{name} has no default"


class TestGRPOPromptLength:
    def test_prompts_longer_than_the_room_are_left_out(self, tokenizer_dir):
        from datasets import Dataset
        from transformers import AutoTokenizer

        from tuneyard.errors import Invalid
        from tuneyard.training.methods import _prompts_that_fit
        from tuneyard.training.params import GRPOParams

        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
        rows = Dataset.from_list(
            [
                {"prompt": [{"role": "user", "content": "Hi"}]},
                {"prompt": [{"role": "user", "content": "word " * 200}]},
            ]
        )
        params = GRPOParams(max_seq_length=64, max_completion_length=16)
        kept = _prompts_that_fit(rows, tokenizer, params)
        assert [r["prompt"][0]["content"] for r in kept] == ["Hi"]
        with pytest.raises(Invalid, match="Every prompt is longer"):
            _prompts_that_fit(rows.select([1]), tokenizer, params)
