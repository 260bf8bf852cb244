"""With an artifact store, files move on threads of their own: a job whose inputs take long to
reach the store holds up no other job, and a worker that stops while they go puts the job back
in the queue."""

from __future__ import annotations

import threading
import time

import pytest

from tests.helpers import DATASETS, wait_for_job
from tuneyard import artifacts
from tuneyard.config import reset_settings
from tuneyard.db import session_scope
from tuneyard.jobs.engines import new_executor
from tuneyard.jobs.ray_executor import RayExecutor
from tuneyard.models import Job

pytestmark = [pytest.mark.backend_free, pytest.mark.slow]


@pytest.fixture
def file_store(on_ray, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TUNEYARD_ARTIFACT_STORE", f"file://{tmp_path / 'store'}")
    monkeypatch.setenv("TUNEYARD_NODE_DATA_DIR", str(tmp_path / "node"))
    reset_settings()


def post_dataset(client, auth, name: str) -> tuple[str, str]:
    response = client.post(
        DATASETS,
        data={"name": name},
        files={
            "file": (f"{name}.jsonl", b'{"prompt": "a", "completion": "b"}\n', "application/json")
        },
        headers=auth,
    )
    assert response.status_code == 202, response.text
    return response.json()["id"], response.json()["job_id"]


def wait_for(check, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "the condition never held"
        time.sleep(0.1)


def job_row(job_id: str) -> Job:
    with session_scope() as session:
        job = session.get_one(Job, job_id)
        session.expunge(job)
        return job


def test_a_slow_transfer_holds_up_no_other_job(
    file_store, client, auth, admin_password, monkeypatch
):
    gate = threading.Event()
    slow: set[str] = set()
    publish = artifacts.publish

    def held_publish(store, data_dir, key):
        if key in slow:
            assert gate.wait(120), "the gate never opened"
        return publish(store, data_dir, key)

    monkeypatch.setattr(artifacts, "publish", held_publish)
    executor = new_executor(concurrency=2)
    assert isinstance(executor, RayExecutor)
    executor.start()
    try:
        held_id, held_job = post_dataset(client, auth, "held")
        slow.add(f"datasets/{held_id}")
        wait_for(lambda: "artifact store" in job_row(held_job).message)
        assert job_row(held_job).status == "running"

        _, other_job = post_dataset(client, auth, "other")
        other = wait_for_job(other_job)
        assert other.status == "succeeded", other.error
        assert job_row(held_job).status == "running"  # its inputs still on their way
    finally:
        executor.stop()
    stopped = job_row(held_job)
    assert stopped.status == "queued"
    assert stopped.message.startswith("Its worker stopped before the job started")

    gate.set()
    executor = new_executor()
    executor.start()
    try:
        assert wait_for_job(held_job).status == "succeeded"
    finally:
        executor.stop()
    shown = client.get(f"{DATASETS}/{held_id}", headers=auth).json()
    assert shown["status"] == "ready"
