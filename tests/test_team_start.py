"""A team's Tuneyard, as its processes run: a server and two workers started at the same
instant on an empty database start, and train; SIGTERM to the worker running a training makes
it stop at a checkpoint and exit within its grace, and the other worker finishes the training
from that checkpoint. On PostgreSQL when TUNEYARD_TEST_DATABASE_URL is set, else on SQLite."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, func, select, text

from tests.helpers import CHAT, FAST, PG_URL, closed_port, login
from tests.test_start import (
    ROOT,
    empty_database,
    output,
    ready_probe,
    schema_state_head,
    start_environment,
    wait_ready,
)

pytestmark = pytest.mark.team

GRACE_SECONDS = 60


@contextlib.contextmanager
def team(data: Path, url: str, port: int):
    """`tuneyard serve --no-worker` and two `tuneyard worker`, started at the same instant;
    their processes and log files."""
    env = {
        **start_environment(data),
        "TUNEYARD_DATABASE_URL": url,
        "TUNEYARD_WORKER_STOP_GRACE_SECONDS": str(GRACE_SECONDS),
    }
    migrate = ["--migrate"] if PG_URL else []  # SQLite migrates on start by itself
    commands = [
        ["serve", "--no-worker", "--host", "127.0.0.1", "--port", str(port), *migrate],
        ["worker", *migrate],
        ["worker", *migrate],
    ]
    logs = [data.parent / f"process-{n}.log" for n in range(len(commands))]
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "tuneyard", *args],
            env=env,
            cwd=ROOT,
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        for args, log in zip(commands, logs, strict=True)
    ]
    try:
        yield processes, logs
    finally:
        for process in processes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        for process in processes:
            try:
                process.wait(GRACE_SECONDS + 10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def settled(api: httpx.Client, auth, job_id: str, timeout: float = 240) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        job = api.get(f"/api/v1/jobs/{job_id}", headers=auth).json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job
        assert time.monotonic() < deadline, job
        time.sleep(0.3)


def the_worker_running(api: httpx.Client, auth, job_id: str, timeout: float = 120) -> dict:
    """The dashboard's entry for the worker that runs the job, once the job is running."""
    deadline = time.monotonic() + timeout
    while True:
        for worker in api.get("/api/v1/dashboard", headers=auth).json()["workers"]:
            if job_id in [job["id"] for job in worker["jobs"]]:
                return worker
        assert time.monotonic() < deadline, api.get(f"/api/v1/jobs/{job_id}", headers=auth).text
        time.sleep(0.2)


def pid_of(worker_id: str) -> int:
    return int(worker_id.split(":")[1])


@pytest.mark.slow
@pytest.mark.parametrize("round_", range(5))
def test_a_team_starts_together_trains_and_hands_a_training_over(tmp_path, tiny_model_dir, round_):
    """Each round: one schema, one first admin; a dataset parsed and a tiny model trained on
    one of the workers. Round 0 also SIGTERMs the worker running the training after its first
    checkpoint: the other worker resumes it from there."""
    data = tmp_path / "team"
    data.mkdir()
    port = closed_port()
    with empty_database(data) as url, team(data, url, port) as (processes, logs):
        probe = lambda: ready_probe(port, processes, logs)  # noqa: E731
        wait_ready(probe, workers=2)
        said = output(logs)
        assert said.count("Created project 1001 with user 'admin'") == 1, said
        from tuneyard.models import Project, User

        engine = create_engine(url)
        with engine.connect() as conn:
            versions = conn.execute(text("SELECT version_num FROM alembic_version")).all()
            counts = [
                conn.scalar(select(func.count()).select_from(table)) for table in (Project, User)
            ]
        engine.dispose()
        assert versions == [(schema_state_head(),)] and counts == [1, 1]

        api = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
        auth = login(api, (data / "admin-password.txt").read_text().strip())
        base = api.post(
            "/api/v1/base-models",
            json={"technical_name": "tiny", "path": str(tiny_model_dir)},
            headers=auth,
        )
        assert base.status_code == 201, base.text
        body = "\n".join(json.dumps(record) for record in CHAT).encode()
        uploaded = api.post(
            "/api/v1/datasets",
            data={"name": "codes"},
            files={"file": ("codes.jsonl", body, "application/json")},
            headers=auth,
        )
        assert uploaded.status_code == 202, uploaded.text
        assert settled(api, auth, uploaded.json()["job_id"])["status"] == "succeeded"

        hand_over = round_ == 0
        params = {**FAST, "max_steps": 30, "save_steps": 5} if hand_over else FAST
        started = api.post(
            "/api/v1/trainings",
            json={
                "name": "codes",
                "method": "sft",
                "base_model_id": base.json()["id"],
                "dataset_id": uploaded.json()["id"],
                "params": params,
            },
            headers=auth,
        )
        assert started.status_code == 202, started.text
        training_id, job_id = started.json()["id"], started.json()["job_id"]
        workers = {
            pid_of(w["id"]): w["id"]
            for w in api.get("/api/v1/dashboard", headers=auth).json()["workers"]
        }
        assert sorted(workers) == sorted(p.pid for p in processes[1:]), workers

        if hand_over:
            first = the_worker_running(api, auth, job_id)
            (stopped,) = [p for p in processes[1:] if p.pid == pid_of(first["id"])]
            checkpoint = data / "trainings" / training_id / "checkpoints" / "checkpoint-5"
            deadline = time.monotonic() + 180
            while not checkpoint.exists():
                assert time.monotonic() < deadline, output(logs)
                time.sleep(0.1)
            stopped.send_signal(signal.SIGTERM)
            assert stopped.wait(GRACE_SECONDS) == 0, output(logs)
            requeued = api.get(
                f"/api/v1/jobs/{job_id}/events", params={"kind": "requeued"}, headers=auth
            ).json()
            assert [event["data"]["reason"] for event in requeued] == ["worker stopped"]
            step = requeued[0]["data"]["resume_step"]
            assert 5 <= step < 30
            kept = data / "trainings" / training_id / "checkpoints" / f"checkpoint-{step}"
            assert (kept / "trainer_state.json").exists()

        job = settled(api, auth, job_id)
        assert job["status"] == "succeeded", (job, output(logs))
        training = api.get(f"/api/v1/trainings/{training_id}", headers=auth).json()
        assert training["status"] == "succeeded" and training["customized_model_id"]
        if hand_over:
            assert job["attempt"] == 2
            log = api.get(f"/api/v1/jobs/{job_id}/logs", headers=auth).text
            assert f"Resuming from checkpoint at step {step}" in log, log
            series = api.get(f"/api/v1/trainings/{training_id}/metrics", headers=auth).json()
            loss_steps = [s for s, _ in series["series"]["train"]["loss"]]
            assert loss_steps == sorted(set(loss_steps)) and loss_steps[-1] == 30
            # The other worker finished it; the stopped one is no longer seen.
            (finisher,) = api.get("/api/v1/dashboard", headers=auth).json()["workers"]
            assert finisher["id"] != first["id"]
        else:
            assert job["attempt"] == 1
        assert "Traceback" not in output(logs[:1])


@pytest.mark.slow
def test_sigterm_to_the_server_hands_its_workers_jobs_over(principal, data_dir, tmp_path):
    """`tuneyard serve` with its own worker: SIGTERM lets requests finish, then stops the
    worker as `tuneyard worker` stops; its job resumes from its checkpoint on the next one."""
    from tests.jobs.test_handover import started_from
    from tests.jobs.test_jobs import job_row, tick_until_finished
    from tuneyard.db import session_scope
    from tuneyard.jobs import service
    from tuneyard.jobs.executor import Executor

    checkpoint, pid_file = tmp_path / "checkpoint", tmp_path / "pid"
    with session_scope() as session:
        params = {
            "checkpoint": str(checkpoint),
            "pid_file": str(pid_file),
            "steps": 400,
            "step_seconds": 0.05,
        }
        job_id = service.enqueue(session, principal, "test.steps", params).id
    env = {**start_environment(data_dir), "TUNEYARD_WORKER_STOP_GRACE_SECONDS": "30"}
    if "TUNEYARD_DATABASE_URL" in os.environ:
        env["TUNEYARD_DATABASE_URL"] = os.environ["TUNEYARD_DATABASE_URL"]
    port = closed_port()
    log = tmp_path / "serve.log"
    server = subprocess.Popen(
        [sys.executable, "-m", "tuneyard", "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        cwd=ROOT,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not checkpoint.exists():
            assert server.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        server.send_signal(signal.SIGTERM)
        # uvicorn shuts down, then ends by the signal it caught, as its own users expect.
        assert server.wait(40) == -signal.SIGTERM, log.read_text()
        assert "Application shutdown complete" in log.read_text()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGKILL)
        server.wait()
    job = job_row(job_id)
    step = int(checkpoint.read_text())
    assert job.status == "queued", (job.status, job.error, log.read_text())
    assert job.message == f"Worker stopped; resumes from checkpoint step {step} on another worker"
    pid_file.unlink()
    executor = Executor()
    try:
        done = tick_until_finished(executor, job_id)
    finally:
        executor.stop()
    assert done.status == "succeeded", done.error
    assert started_from(job_id) == [0, step]
