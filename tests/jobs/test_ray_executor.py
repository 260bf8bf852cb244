"""Jobs on a real Ray cluster (TUNEYARD_EXECUTOR=ray): a local head started once for the
session, jobs run in actors there, cancelled, killed, recovered by a new executor, and held
back when no node has what they ask."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import psutil
import pytest
import ray

from tests.helpers import CHAT, FAST, closed_port, finish, start, upload, wait_for_job
from tuneyard.db import session_scope
from tuneyard.errors import Unavailable
from tuneyard.jobs import service
from tuneyard.jobs.engines import new_executor
from tuneyard.jobs.executor import Executor
from tuneyard.jobs.ray_executor import (
    NAMESPACE,
    RayExecutor,
    actor_name,
    check_reachable,
    why_waiting,
)
from tuneyard.jobs.registry import DEFAULT_RESOURCES, get_kind
from tuneyard.models import Job
from tuneyard.storage import partial_path

# What a cluster does with a job (placement, cancel, a lost actor) is the same whichever
# database the job's rows live in: these run once, on SQLite's pass.
pytestmark = pytest.mark.backend_free


def enqueue(principal, kind, **params):
    with session_scope() as session:
        return service.enqueue(session, principal, kind, params).id


def wait_for_pid(path: Path, timeout: float = 60.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text():
            return int(path.read_text())
        time.sleep(0.05)
    raise AssertionError("job process never started")


def job_actors_end(timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not ray.util.list_named_actors(all_namespaces=True):
            return True
        time.sleep(0.1)
    return False


def gone(pid: int, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
            return True
        time.sleep(0.1)
    return False


def test_the_local_executor_stays_the_default():
    assert type(new_executor()) is Executor


def test_training_asks_for_a_gpu_only_when_its_params_do():
    kind = get_kind("training.run")
    assert kind.resources_for({"training_id": "x"})["num_gpus"] == 0
    assert kind.resources_for({"training_id": "x", "gpus_per_worker": 0})["num_gpus"] == 0
    assert kind.resources_for({"training_id": "x", "gpus_per_worker": 1})["num_gpus"] == 1
    assert kind.resources_for({"training_id": "x", "gpus_per_worker": 2})["num_gpus"] == 2
    # Data-parallel: Ray Train places the workers; the job's own process needs no GPU.
    wide = {"training_id": "x", "workers": 2, "gpus_per_worker": 1}
    assert kind.resources_for(wide) == {**kind.resources_for({}), "num_gpus": 0}
    assert get_kind("dataset.parse").resources_for({}) == DEFAULT_RESOURCES


def test_a_job_no_node_can_hold_says_what_it_waits_for():
    nodes = [{"CPU": 2.0, "memory": 4 * 2**30}]
    assert why_waiting({"num_cpus": 1, "num_gpus": 0, "memory": 0}, nodes) is None
    reason = why_waiting({"num_cpus": 1, "num_gpus": 1, "memory": 0}, nodes)
    assert reason is not None
    assert reason.startswith("Waiting for a node with 1 GPU: the cluster has 0.")
    two = [{"CPU": 1.0, "GPU": 1.0}, {"CPU": 4.0}]
    reason = why_waiting({"num_cpus": 2, "num_gpus": 1, "memory": 0}, two)
    assert reason is not None and "no node of the Ray cluster has all of them" in reason


def test_an_unreachable_or_malformed_address_is_refused_at_once():
    port = closed_port()
    with pytest.raises(Unavailable, match=f"Cannot reach the Ray cluster at '127.0.0.1:{port}'"):
        check_reachable(f"127.0.0.1:{port}")
    with pytest.raises(Unavailable, match="is not a Ray address"):
        check_reachable("ray-head")


def test_the_job_page_says_where_a_job_ran_and_with_what():
    from tuneyard.jobs.pages import placement_text

    resources = {"num_cpus": 1.0, "num_gpus": 1.0, "memory": 2.0 * 2**30}
    assert placement_text("gpu-7 (10.0.0.7, node 3f2a)", resources) == (
        "On gpu-7 (10.0.0.7, node 3f2a): 1 CPU, 1 GPU, 2.0 GiB memory"
    )
    assert placement_text(None, None) is None


@pytest.mark.slow
class TestOnTheCluster:
    def test_test_kinds_run_report_and_log_as_local(self, principal, ray_worker, client, auth):
        assert isinstance(ray_worker, RayExecutor)
        events = enqueue(principal, "test.events")
        failing = enqueue(principal, "test.fail")
        job = wait_for_job(events)
        assert job.status == "succeeded", job.error
        assert (job.result, job.progress, job.message) == ({"count": 3}, 100, "Recorded 3 metrics")
        with session_scope() as session:
            assert [row.data["step"] for row in service.events(session, events, "metric")] == [
                0,
                1,
                2,
            ]
        job = wait_for_job(failing)
        assert job.status == "failed"
        assert job.error == "RuntimeError: the disk is full"
        logs = client.get(f"/api/v1/jobs/{failing}/logs", headers=auth).text
        assert "Traceback" in logs and "the disk is full" in logs
        shown = client.get(f"/api/v1/jobs/{events}", headers=auth).json()
        assert shown["resources"] == DEFAULT_RESOURCES
        assert shown["node"].startswith(f"{os.uname().nodename} (")
        # Finished jobs leave no actor holding the cluster's CPUs.
        assert job_actors_end()

    def test_write_job_and_sleep_job_run(self, principal, ray_worker, tmp_path):
        target = tmp_path / "written"
        write = enqueue(
            principal,
            "test.write",
            target=str(target),
            steps=3,
            step_seconds=0,
            pid_file=str(tmp_path / "w.pid"),
        )
        sleep = enqueue(principal, "test.sleep", steps=3, pid_file=str(tmp_path / "s.pid"))
        assert wait_for_job(write).status == "succeeded"
        assert sorted(path.name for path in target.iterdir()) == ["part-0", "part-1", "part-2"]
        job = wait_for_job(sleep)
        assert (job.status, job.result) == ("succeeded", {"steps": 3})
        assert int((tmp_path / "s.pid").read_text()) != os.getpid()

    def test_dataset_parse_and_training_through_the_api(self, client, auth, tiny_base, ray_worker):
        dataset = upload(client, auth, "chat", CHAT)
        training = finish(client, auth, start(client, auth, tiny_base, dataset, **FAST))
        assert training["status"] == "succeeded"
        with session_scope() as session:
            jobs = session.query(Job).order_by(Job.created_at).all()
            assert [(job.kind, job.status) for job in jobs] == [
                ("dataset.parse", "succeeded"),
                ("training.run", "succeeded"),
            ]
            assert all(job.node and job.resources for job in jobs)

    def test_cancel_stops_the_job_process(self, principal, ray_worker, client, auth, tmp_path):
        pid_file = tmp_path / "job.pid"
        job_id = enqueue(principal, "test.sleep", pid_file=str(pid_file))
        pid = wait_for_pid(pid_file)
        response = client.post(f"/api/v1/jobs/{job_id}/cancel", headers=auth)
        assert response.status_code == 200, response.text
        assert wait_for_job(job_id).status == "cancelled"
        assert gone(pid)

    def test_kill_9_of_the_job_process_fails_it_and_removes_its_partial_folder(
        self, principal, ray_worker, tmp_path
    ):
        target = tmp_path / "out"
        pid_file = tmp_path / "job.pid"
        job_id = enqueue(principal, "test.write", target=str(target), pid_file=str(pid_file))
        os.kill(wait_for_pid(pid_file), signal.SIGKILL)
        job = wait_for_job(job_id)
        assert job.status == "failed"
        assert "killed by SIGKILL" in job.error
        assert not target.exists() and not partial_path(target).exists()

    def test_a_killed_actor_fails_the_job_and_takes_its_process(
        self, principal, ray_worker, tmp_path
    ):
        target = tmp_path / "out"
        pid_file = tmp_path / "job.pid"
        job_id = enqueue(principal, "test.write", target=str(target), pid_file=str(pid_file))
        pid = wait_for_pid(pid_file)
        ray.kill(ray.get_actor(actor_name(job_id), namespace=NAMESPACE))
        job = wait_for_job(job_id)
        assert job.status == "failed"
        assert job.error.startswith("The Ray actor running this job died"), job.error
        assert gone(pid)
        assert not target.exists() and not partial_path(target).exists()


@pytest.mark.slow
class TestRecovery:
    def test_a_new_executor_adopts_a_job_still_running_on_the_cluster(
        self, principal, on_ray, admin_password, tmp_path
    ):
        first = new_executor()
        first.start()
        pid_file = tmp_path / "job.pid"
        job_id = enqueue(principal, "test.sleep", steps=40, pid_file=str(pid_file))
        pid = wait_for_pid(pid_file)
        first.stop()  # a restart: the job goes on in its actor
        with session_scope() as session:
            assert session.get_one(Job, job_id).status == "running"
        second = new_executor()
        second.start()
        try:
            job = wait_for_job(job_id)
            assert job.status == "succeeded", job.error
            assert job.worker_id == second.worker_id
            assert job.pid is None and gone(pid)
        finally:
            second.stop()

    def test_a_job_whose_actor_is_gone_when_no_worker_ran_is_failed(
        self, principal, on_ray, admin_password, tmp_path
    ):
        first = new_executor()
        first.start()
        pid_file = tmp_path / "job.pid"
        job_id = enqueue(principal, "test.sleep", pid_file=str(pid_file))
        pid = wait_for_pid(pid_file)
        first.stop()
        ray.kill(ray.get_actor(actor_name(job_id), namespace=NAMESPACE))
        assert gone(pid)
        second = new_executor()
        second.sweep()
        second.stop()
        job = wait_for_job(job_id, timeout=1)
        assert job.status == "failed"
        assert "its process is gone" in job.error


@pytest.mark.slow
class TestResources:
    def test_a_gpu_job_on_a_cluster_without_gpus_stays_queued_saying_why(
        self, principal, ray_worker, client, auth
    ):
        job_id = enqueue(principal, "training.run", training_id="none", gpus_per_worker=1)
        later = enqueue(principal, "test.events")  # not held up behind it
        assert wait_for_job(later).status == "succeeded"
        with session_scope() as session:
            job = session.get_one(Job, job_id)
            assert job.status == "queued"
            assert job.message.startswith("Waiting for a node with 1 GPU: the cluster has 0.")
        shown = client.get(f"/api/v1/jobs/{job_id}", headers=auth).json()
        assert shown["message"] == job.message
        response = client.post(f"/api/v1/jobs/{job_id}/cancel", headers=auth)
        assert response.json()["status"] == "cancelled"

    def test_a_claimed_job_ray_cannot_place_yet_waits_saying_why_and_cancels_at_once(
        self, principal, on_ray, admin_password, tmp_path
    ):
        # Another user of the cluster takes both CPUs between the claim and the placement.
        held = ray.util.placement_group([{"CPU": 2}])
        ray.get(held.ready(), timeout=60)
        executor = new_executor()  # not started: the test drives its loop
        try:
            waiting = enqueue(principal, "test.sleep", steps=1, pid_file=str(tmp_path / "a"))
            cancelled = enqueue(principal, "test.sleep", steps=1, pid_file=str(tmp_path / "b"))
            assert executor.start_job(waiting) and executor.start_job(cancelled)
            with session_scope() as session:
                claimed_beat = session.get_one(Job, waiting).heartbeat_at
            deadline = time.monotonic() + 30
            while True:
                executor.reap()
                with session_scope() as session:
                    job = session.get_one(Job, waiting)
                if job.message.startswith("Waiting for the Ray cluster") or (
                    time.monotonic() > deadline
                ):
                    break
                time.sleep(0.2)
            assert job.status == "running" and job.pid is None
            assert job.message == (
                "Waiting for the Ray cluster to place it (1 CPU): other users of the cluster "
                "hold them"
            )
            assert job.heartbeat_at > claimed_beat  # no worker takes it for dead meanwhile

            with session_scope() as session:
                service.cancel_job(session, principal, cancelled)
            started = time.monotonic()
            assert executor.run_until_finished(cancelled).status == "cancelled"
            assert time.monotonic() - started < 10  # no grace period: it had no process

            ray.util.remove_placement_group(held)
            job = executor.run_until_finished(waiting)
            assert job.status == "succeeded", job.error
            assert job.node is not None
        finally:
            ray.util.remove_placement_group(held)
            executor.stop()
