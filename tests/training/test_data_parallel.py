"""Data-parallel training: worker processes through torch.distributed.run (gloo on the CPU),
against one process that sees the same records per step."""

from __future__ import annotations

import os
import time
from pathlib import Path

import psutil
import pytest

from tests.helpers import PREFERENCE, finish, lora_b_norm, start, upload, wait_for_job

pytestmark = pytest.mark.backend_free

# Answers of different lengths: the workers learn different numbers of tokens per step, so the
# loss is only the same as one process's if it is averaged over all of a step's tokens.
VARIED = [
    {
        "messages": [
            {"role": "user", "content": f"Say the code word {i} times."},
            {"role": "assistant", "content": " ".join(["pineapple"] * (i % 5 + 1))},
        ]
    }
    for i in range(16)
]
# Every worker sees the same data order: no grouping by length (its groups depend on the batch
# size), fp32 so that the only difference is where the sums are taken.
SAME_ORDER = {
    "max_steps": 4,
    "grad_accum_steps": 2,
    "learning_rate": 2e-2,
    "group_by_length": False,
    "precision": "fp32",
    "save_steps": 1000,
}


def data_dir() -> Path:
    return Path(os.environ["TUNEYARD_DATA_DIR"])


def worker_processes() -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["cmdline"]):
        if "tuneyard.training.rank" in (process.info["cmdline"] or []):
            found.append(process)
    return found


def losses(client, auth, training_id: str) -> list[float]:
    series = client.get(f"/api/v1/trainings/{training_id}/metrics", headers=auth).json()
    return [value for _step, value in series["series"]["train"]["loss"]]


class TestDataParallelSFT:
    @pytest.mark.slow
    def test_two_workers_train_like_one_process_with_twice_the_batch(
        self, client, auth, worker, tiny_base
    ):
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        dataset = upload(client, auth, "varied", VARIED)
        parallel = finish(
            client,
            auth,
            start(
                client, auth, tiny_base, dataset, name="dp", workers=2, batch_size=2, **SAME_ORDER
            ),
        )
        single = finish(
            client,
            auth,
            start(client, auth, tiny_base, dataset, name="one", batch_size=4, **SAME_ORDER),
        )
        parallel_losses = losses(client, auth, parallel["id"])
        single_losses = losses(client, auth, single["id"])
        assert len(parallel_losses) == 4
        assert parallel_losses == pytest.approx(single_losses, rel=1e-4), (
            parallel_losses,
            single_losses,
        )
        assert parallel_losses[-1] < parallel_losses[0]

        model = client.get(
            f"/api/v1/customized-models/{parallel['customized_model_id']}", headers=auth
        ).json()
        card = model["model_card"]["training"]
        assert card["params"]["workers"] == 2
        hardware = card["hardware"]
        assert hardware["workers"] == 2 and hardware["gpus_per_worker"] == 0
        assert hardware["effective_batch_size"] == 2 * 2 * 2
        base = AutoModelForCausalLM.from_pretrained(
            client.get(f"/api/v1/base-models/{tiny_base}", headers=auth).json()["path"]
        )
        PeftModel.from_pretrained(base, model["path"])
        assert not worker_processes()

    @pytest.mark.slow
    def test_cancel_stops_every_worker_at_one_step_and_resume_goes_on_from_it(
        self, client, auth, worker, tiny_base
    ):
        dataset = upload(client, auth, "varied", VARIED)
        params = {**SAME_ORDER, "max_steps": 60, "workers": 2}
        response = start(client, auth, tiny_base, dataset, **params)
        training_id = response.json()["id"]
        deadline = time.monotonic() + 240
        while client.get(f"/api/v1/trainings/{training_id}", headers=auth).json()["progress"] < 1:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        cancel = client.post(f"/api/v1/trainings/{training_id}/cancel", headers=auth)
        assert cancel.status_code == 200
        job = wait_for_job(response.json()["job_id"])
        assert job.status == "cancelled", job.error
        assert client.get(f"/api/v1/trainings/{training_id}", headers=auth).json()["status"] == (
            "cancelled"
        )
        folder = data_dir() / "trainings" / training_id
        (checkpoint,) = (folder / "checkpoints").glob("checkpoint-*")
        assert (checkpoint / "adapter_model.safetensors").exists()
        stopped_at = int(checkpoint.name.removeprefix("checkpoint-"))
        assert stopped_at < 60
        assert not (folder / "result").exists()
        assert client.get("/api/v1/customized-models", headers=auth).json()["total"] == 0
        assert not worker_processes()

        resumed = client.post(f"/api/v1/trainings/{training_id}/resume", headers=auth)
        training = finish(client, auth, resumed)
        assert training["customized_model_id"]
        logs = client.get(f"/api/v1/jobs/{resumed.json()['job_id']}/logs", headers=auth).text
        assert f"Resuming from checkpoint at step {stopped_at}" in logs
        series = client.get(f"/api/v1/trainings/{training_id}/metrics", headers=auth).json()
        steps = [step for step, _ in series["series"]["train"]["loss"]]
        assert steps == list(range(1, 61))

    @pytest.mark.slow
    def test_a_worker_killed_mid_run_fails_the_job_and_leaves_no_model(
        self, client, auth, worker, tiny_base
    ):
        dataset = upload(client, auth, "varied", VARIED)
        response = start(
            client, auth, tiny_base, dataset, **{**SAME_ORDER, "max_steps": 400, "workers": 2}
        )
        training_id = response.json()["id"]
        deadline = time.monotonic() + 240
        while client.get(f"/api/v1/trainings/{training_id}", headers=auth).json()["progress"] < 1:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        (second,) = [p for p in worker_processes() if p.environ().get("RANK") == "1"]
        second.kill()
        job = wait_for_job(response.json()["job_id"])
        assert job.status == "failed"
        assert job.error.startswith("A worker of 2 died without saying why"), job.error
        training = client.get(f"/api/v1/trainings/{training_id}", headers=auth).json()
        assert training["status"] == "failed" and training["customized_model_id"] is None
        assert not (data_dir() / "trainings" / training_id / "result").exists()
        assert client.get("/api/v1/customized-models", headers=auth).json()["total"] == 0
        deadline = time.monotonic() + 60
        while worker_processes():
            assert time.monotonic() < deadline, "the other worker outlived the job"
            time.sleep(0.2)

    @pytest.mark.slow
    def test_an_error_in_the_workers_fails_the_job_with_it(self, client, auth, worker, tiny_base):
        dataset = upload(client, auth, "varied", VARIED)
        response = start(client, auth, tiny_base, dataset, workers=2, max_samples=1, eval_split=0.5)
        job = wait_for_job(response.json()["job_id"], timeout=180)
        assert job.status == "failed"
        assert job.error in {
            f"Worker {rank} of 2 failed: eval_split 0.5 leaves no training records out of 1."
            for rank in (0, 1)
        }, job.error
        training = client.get(f"/api/v1/trainings/{response.json()['id']}", headers=auth).json()
        assert training["status"] == "failed" and training["error"] == job.error


@pytest.fixture
def on_ray(data_dir, monkeypatch):
    """Data-parallel workers run through Ray Train, on a Ray instance the job starts (the jobs
    themselves still run in local processes: the test's worker is the local executor)."""
    pytest.importorskip("ray.train.torch", reason="needs the cluster extra")
    from tuneyard.config import reset_settings

    monkeypatch.setenv("TUNEYARD_EXECUTOR", "ray")
    monkeypatch.setenv("TUNEYARD_RAY_ADDRESS", "local")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    reset_settings()


class TestOnRay:
    @pytest.mark.slow
    def test_two_ray_workers_make_a_customized_model(self, on_ray, client, auth, worker, tiny_base):
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        dataset = upload(client, auth, "varied", VARIED)
        training = finish(
            client,
            auth,
            start(client, auth, tiny_base, dataset, workers=2, batch_size=2, **SAME_ORDER),
            timeout=600,
        )
        assert len(losses(client, auth, training["id"])) == 4
        model = client.get(
            f"/api/v1/customized-models/{training['customized_model_id']}", headers=auth
        ).json()
        assert model["model_card"]["training"]["hardware"]["workers"] == 2
        assert lora_b_norm(Path(model["path"])) > 0
        base = AutoModelForCausalLM.from_pretrained(
            client.get(f"/api/v1/base-models/{tiny_base}", headers=auth).json()["path"]
        )
        PeftModel.from_pretrained(base, model["path"])
        assert not (data_dir() / "jobs" / training["job_id"] / "workers").exists()
        logs = client.get(f"/api/v1/jobs/{training['job_id']}/logs", headers=auth).text
        assert "Started a local Ray instance" in logs


class TestOtherMethods:
    @pytest.mark.parametrize(
        "method,records,extra",
        [
            # ORPO and KTO go through the same preference trainer path as DPO.
            ("dpo", PREFERENCE, {}),
            ("sft", VARIED, {"adapter": "full"}),
        ],
    )
    @pytest.mark.slow
    def test_method_trains_data_parallel(
        self, client, auth, worker, tiny_base, method, records, extra
    ):
        dataset = upload(client, auth, f"{method}-data", records)
        params = {"max_steps": 2, "batch_size": 2, "grad_accum_steps": 1, "workers": 2, **extra}
        training = finish(client, auth, start(client, auth, tiny_base, dataset, method, **params))
        series = client.get(f"/api/v1/trainings/{training['id']}/metrics", headers=auth).json()
        assert [step for step, _ in series["series"]["train"]["loss"]] == [1, 2]
        if extra.get("adapter") == "full":
            from transformers import AutoModelForCausalLM

            from tuneyard.db import session_scope
            from tuneyard.models import CompleteModel

            with session_scope() as session:
                row = session.get_one(CompleteModel, training["summary"]["complete_model_id"])
                path, card = row.path, row.model_card
            assert card["training"]["hardware"]["workers"] == 2
            AutoModelForCausalLM.from_pretrained(path)
        else:
            model = client.get(
                f"/api/v1/customized-models/{training['customized_model_id']}", headers=auth
            ).json()
            assert model["model_card"]["training"]["hardware"]["workers"] == 2
            assert lora_b_norm(Path(model["path"])) > 0


class TestValidation:
    @pytest.mark.parametrize(
        "params,needle",
        [
            ({"workers": 0}, "workers: Input should be greater than or equal to 1"),
            ({"workers": 65}, "workers: Input should be less than or equal to 64"),
            (
                {"gpus_per_worker": -2},
                "gpus_per_worker: Input should be greater than or equal to -1",
            ),
        ],
    )
    def test_out_of_bounds_refused_before_any_job(
        self, client, auth, worker, tiny_base, params, needle
    ):
        dataset = upload(client, auth, "varied", VARIED)
        response = start(client, auth, tiny_base, dataset, **params)
        assert response.status_code == 422, response.text
        assert needle in response.json()["detail"]
        assert client.get("/api/v1/trainings", headers=auth).json()["total"] == 0

    def test_grpo_trains_in_one_process(self, client, auth, worker, tiny_base):
        dataset = upload(
            client, auth, "sums", [{"prompt": f"{i}+{i}?", "answer": str(2 * i)} for i in range(4)]
        )
        response = start(client, auth, tiny_base, dataset, "grpo", workers=2, num_generations=2)
        assert response.status_code == 422, response.text
        assert response.json()["detail"] == (
            "Invalid parameters for grpo: workers must be 1: GRPO samples and scores its groups "
            "of completions in one process; data-parallel GRPO is not supported. "
            "See GET /api/v1/training-methods for every parameter."
        )
        assert client.get("/api/v1/trainings", headers=auth).json()["total"] == 0

    def test_an_uploaded_method_trains_in_one_process(self):
        from pydantic import ValidationError

        from tuneyard.training.custom import params_model

        model = params_model("loop", "adapter", {})
        assert model().workers == 1
        with pytest.raises(ValidationError, match="an uploaded method runs its own training loop"):
            model(workers=2)

    def test_more_gpus_than_the_machine_has_fail_the_job_with_the_count(
        self, client, auth, worker, tiny_base
    ):
        import torch

        found = torch.cuda.device_count() if torch.cuda.is_available() else 0
        dataset = upload(client, auth, "varied", VARIED)
        response = start(client, auth, tiny_base, dataset, workers=64, gpus_per_worker=8)
        assert response.status_code == 202, response.text
        job = wait_for_job(response.json()["job_id"], timeout=180)
        # The job says what it asks of a cluster node: Ray Train places the 64 workers.
        assert (job.params["workers"], job.params["gpus_per_worker"]) == (64, 8)
        assert job.status == "failed"
        assert job.error == (
            f"workers=64 x gpus_per_worker=8 needs 512 GPUs, and the machine running this "
            f"training has {found} visible. Start it again with fewer workers or GPUs per "
            "worker, or gpus_per_worker=0 to train on the CPU."
        )
        assert not worker_processes()

    def test_the_parameters_are_documented(self, client, auth):
        methods = client.get("/api/v1/training-methods", headers=auth).json()
        sft = next(method for method in methods if method["name"] == "sft")
        properties = sft["params_schema"]["properties"]
        assert properties["workers"]["default"] == 1
        assert "data-parallel" in properties["workers"]["description"]
        assert "workers x gpus_per_worker GPUs" in properties["gpus_per_worker"]["description"]
        assert "effective batch" in properties["batch_size"]["description"]
