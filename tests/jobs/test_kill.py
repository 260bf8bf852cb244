"""Kill -9 loses nothing: job processes and workers killed in the middle of the long jobs
(dataset parse, training, save, deploy), then the worker restarted.

After each: no job stays queued or running, no folder is half-written or without its row, and
every row that says ready (or live) points at complete files that a serving tool serves.
Points named `random` are a commit drawn at random (the job's steps of work lie between its
commits); the test prints the seed, and TUNEYARD_TEST_KILL_SEED=SEED draws the same again.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from sqlalchemy import select

from tests.helpers import (
    CHAT,
    add_env,
    deploy,
    make_customized,
    save,
    start,
    stop_executor,
    upload,
    wait_for_job,
)
from tuneyard.config import reset_settings
from tuneyard.db import session_scope
from tuneyard.jobs.executor import Executor
from tuneyard.jobs.service import FINISHED
from tuneyard.models import (
    BaseModel,
    CompleteModel,
    CustomizedModel,
    Dataset,
    DeployEnvironment,
    Job,
    LiveModel,
    Training,
)
from tuneyard.storage import Layout

FAST = {"max_steps": 4, "batch_size": 2, "grad_accum_steps": 1, "save_steps": 2}


# -- what must hold after any kill -------------------------------------------------------------


def safetensors_whole(folder: Path) -> bool:
    from safetensors import safe_open

    files = list(folder.glob("*.safetensors"))
    for path in files:
        with safe_open(path, "pt") as weights:
            for key in weights.keys():  # noqa: SIM118 - safe_open has no __iter__
                weights.get_slice(key)
    return bool(files)


def dataset_whole(row: Dataset, folder: Path) -> bool:
    lines = (folder / "records.jsonl").read_text().splitlines()
    return len(lines) == row.record_count and all(json.loads(line) for line in lines)


def model_whole(folder: Path, *names: str) -> bool:
    return all((folder / name).is_file() for name in names) and safetensors_whole(folder)


def assert_nothing_lost_or_half_written() -> None:
    layout = Layout()
    whole: dict[Path, bool] = {}  # every folder that must exist, and whether it is complete
    served: dict[str, set[Path]] = {}  # per managed llama.cpp environment, the live folders
    with session_scope() as session:
        jobs = session.scalars(select(Job)).all()
        assert [(j.kind, j.status) for j in jobs if j.status not in FINISHED] == []
        assert [(j.kind, j.status) for j in jobs if j.pid is not None] == []  # nothing pending
        for row in session.scalars(select(Training)):
            assert row.status in ("succeeded", "failed", "cancelled"), row.status
        for row in session.scalars(select(Dataset)):
            assert row.status in ("ready", "failed"), (row.name, row.status)
            if row.status == "ready":
                folder = layout.dataset_dir(row.id)
                whole[folder] = dataset_whole(row, folder)
        for row in session.scalars(select(BaseModel).where(BaseModel.managed.is_(True))):
            assert row.status in ("ready", "failed"), (row.technical_name, row.status)
            if row.status == "ready":
                whole[Path(row.path)] = model_whole(Path(row.path), "config.json")
        for row in session.scalars(select(CustomizedModel)):
            folder = Path(row.path)
            whole[folder] = model_whole(folder, "adapter_config.json", "README.md")
        for row in session.scalars(select(CompleteModel)):
            assert row.status in ("ready", "failed"), (row.name, row.status)
            if row.status == "ready":
                whole[Path(row.path)] = model_whole(Path(row.path), "config.json", "README.md")
        for env in session.scalars(select(DeployEnvironment)):
            if env.kind == "llama.cpp" and env.url is None:
                served[env.id] = set()
        for row in session.scalars(select(LiveModel)):
            assert row.status in ("live", "failed"), (row.name, row.status)
            if row.status == "live" and row.environment_id in served:
                folder = layout.live_model_dir(row.id)
                whole[folder] = (folder / "model.gguf").is_file()
                served[row.environment_id].add(folder)
    assert {str(folder): ok for folder, ok in whole.items() if not ok} == {}
    roots = [layout.dataset_dir("x").parent, layout.base_model_dir("x").parent]
    roots += [layout.customized_model_dir("x").parent, layout.complete_model_dir("x").parent]
    roots.append(layout.live_model_dir("x").parent)
    on_disk = {entry for root in roots if root.exists() for entry in root.iterdir()}
    assert sorted(map(str, on_disk - set(whole))) == [], "folders without a row, or half-written"
    assert sorted(map(str, set(whole) - on_disk)) == [], "rows whose folder is missing"
    for env_id, folders in served.items():
        config = layout.environment_dir(env_id) / "config.json"
        models = json.loads(config.read_text())["models"] if config.exists() else []
        assert {Path(model["model"]).parent for model in models} == folders


# -- killing ------------------------------------------------------------------------------------


@pytest.fixture
def kill_seed() -> int:
    seed = int(os.environ.get("TUNEYARD_TEST_KILL_SEED") or random.randrange(10**6))
    print(f"TUNEYARD_TEST_KILL_SEED={seed}")
    return seed


@pytest.fixture
def kill_at(monkeypatch, kill_seed):
    """kill_at(point, commits): job processes started from now on kill themselves there
    (`random`: before one of the job's first `commits` commits)."""

    def arm(point: str, commits: int) -> str:
        if point == "random":
            point = f"commit:{random.Random(kill_seed).randint(1, commits)}"
        print(f"kill point {point}")
        monkeypatch.setenv("TUNEYARD_TEST_KILL_AT", point)
        return point

    return arm


@pytest.fixture
def plugins(monkeypatch):
    """The job kinds of the tests, the kill points and the slowed merge in job processes."""
    monkeypatch.setenv(
        "TUNEYARD_PLUGINS", "tests.jobkinds,tests.killpoints,tests.complete_slow_merge"
    )
    reset_settings()


@pytest.fixture
def restarted(admin_password, plugins):
    """Start a worker (again) on demand; stopped, with its jobs, at the end."""
    started = []

    def start_worker() -> Executor:
        executor = Executor()
        executor.start()
        started.append(executor)
        return executor

    yield start_worker
    for executor in started:
        stop_executor(executor)


def settle(job_id: str, timeout: float = 240) -> Job:
    """Wait for the job to end and for its process to be reaped (nothing left pending)."""
    job = wait_for_job(job_id, timeout=timeout)
    deadline = time.monotonic() + 30
    while True:
        with session_scope() as session:
            job = session.get(Job, job_id)
        if job.pid is None or time.monotonic() > deadline:
            return job
        time.sleep(0.1)


class TestJobProcessKilled:
    """The job's process dies at a point; its worker reaps it."""

    @pytest.mark.parametrize("point", ["commit:1", "random", "writes:Dataset", "finish"])
    def test_dataset_parse(self, client, auth, restarted, kill_at, point):
        restarted()
        kill_at(point, commits=5)
        response = client.post(
            "/api/v1/datasets",
            data={"name": "chats"},
            files={"file": ("chats.jsonl", "\n".join(json.dumps(r) for r in CHAT), "text/plain")},
            headers=auth,
        )
        assert response.status_code == 202, response.text
        job = settle(response.json()["job_id"])
        if point != "random":
            assert job.status == "failed" and "SIGKILL" in job.error
        assert_nothing_lost_or_half_written()

    @pytest.mark.parametrize("point", ["random", "writes:CompleteModel", "finish"])
    def test_save(self, client, auth, restarted, kill_at, tiny_base, made_adapter_dir, point):
        restarted()
        made = make_customized(tiny_base, made_adapter_dir)
        kill_at(point, commits=8)
        job = settle(save(client, auth, made["id"]).json()["job_id"])
        if point != "random":
            assert job.status == "failed" and "SIGKILL" in job.error
        assert_nothing_lost_or_half_written()

    @pytest.mark.slow
    @pytest.mark.parametrize("point", ["random", "writes:CustomizedModel"])
    def test_training(self, client, auth, restarted, kill_at, monkeypatch, tiny_base, point):
        restarted()
        dataset = upload(client, auth, "chats", CHAT)
        kill_at(point, commits=30)
        response = start(client, auth, tiny_base, dataset, **FAST)
        assert response.status_code == 202, response.text
        job = settle(response.json()["job_id"])
        assert_nothing_lost_or_half_written()
        if point == "writes:CustomizedModel":
            # Killed with the model in place and not recorded: the resumed run ends with the
            # one model the training makes.
            assert job.status == "failed" and "SIGKILL" in job.error
            monkeypatch.delenv("TUNEYARD_TEST_KILL_AT")
            resumed = client.post(f"/api/v1/trainings/{response.json()['id']}/resume", headers=auth)
            assert resumed.status_code == 202, resumed.text
            assert settle(resumed.json()["job_id"]).status == "succeeded"
            assert client.get("/api/v1/customized-models", headers=auth).json()["total"] == 1
            assert_nothing_lost_or_half_written()

    @pytest.mark.parametrize("point", ["random", "writes:LiveModel"])
    def test_llamacpp_deploy(
        self, client, auth, restarted, kill_at, tiny_base, stop_servers, point
    ):
        # writes:LiveModel: the server took the model, and its row does not say live yet.
        restarted()
        env = add_env(client, auth, name="local", kind="llama.cpp")
        kill_at(point, commits=12)
        accepted = deploy(client, auth, "base", tiny_base, env["id"], quantization="q8_0")
        job = settle(accepted["job_id"])
        if point != "random":
            assert job.status == "failed" and "SIGKILL" in job.error
        assert_nothing_lost_or_half_written()


class TestWorkerKilled:
    """`tuneyard worker` dies (kill -9) while a job runs, its job's process with it or not; a
    worker starts again on the machine."""

    @pytest.mark.parametrize("job_dies_too", [False, True])
    def test_save(
        self,
        client,
        auth,
        restarted,
        monkeypatch,
        kill_seed,
        tiny_base,
        made_adapter_dir,
        tmp_path,
        job_dies_too,
    ):
        monkeypatch.setenv("TUNEYARD_TEST_MERGE_DELAY", "0.1")
        made = make_customized(tiny_base, made_adapter_dir)
        log = (tmp_path / "worker.log").open("wb")
        worker = subprocess.Popen(
            [sys.executable, "-m", "tuneyard", "worker"], stdout=log, stderr=subprocess.STDOUT
        )
        try:
            job_id = save(client, auth, made["id"]).json()["job_id"]
            deadline = time.monotonic() + 120
            while (pid := settle_pid(job_id)) is None:
                assert time.monotonic() < deadline, (tmp_path / "worker.log").read_text()
                time.sleep(0.05)
            time.sleep(random.Random(kill_seed).uniform(0, 3))
            worker.kill()
            worker.wait()
            if job_dies_too:
                with_pid_gone(pid)
            with session_scope() as session:
                done_before = session.get(Job, job_id).status == "succeeded"
        finally:
            worker.kill()
            worker.wait()
            log.close()
        again = restarted()
        with session_scope() as session:
            job = session.get(Job, job_id)
        if job.status == "running":  # adopted: the restarted worker can cancel it
            assert job.worker_id == again.worker_id and job_id in again.running
        job = settle(job_id)
        expected = "failed" if job_dies_too and not done_before else "succeeded"
        assert job.status == expected, job.error
        assert_nothing_lost_or_half_written()


def settle_pid(job_id: str) -> int | None:
    """The pid of the job's process once it runs (it records it), else None."""
    with session_scope() as session:
        job = session.get(Job, job_id)
        return job.pid if job.status == "running" else None


def with_pid_gone(pid: int) -> None:
    """Kill -9 the job's process group, and wait until it is gone."""
    try:
        os.killpg(pid, signal.SIGKILL)
        psutil.Process(pid).wait(10)
    except (ProcessLookupError, psutil.NoSuchProcess):
        pass
