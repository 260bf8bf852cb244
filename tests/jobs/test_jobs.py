"""The job system: real child processes, crashes, cancels and restart recovery."""

from __future__ import annotations

import os
import signal
import time
from datetime import timedelta

import psutil
import pytest

from tests.helpers import stop_executor, wait_for_job
from tuneyard.config import reset_settings
from tuneyard.db import session_scope
from tuneyard.errors import Conflict
from tuneyard.jobs import service
from tuneyard.jobs.child import FENCED_EXIT
from tuneyard.jobs.executor import Executor
from tuneyard.jobs.keys import Resource, UseKey, model_key
from tuneyard.modelref import ModelKind
from tuneyard.models import Job, utcnow
from tuneyard.storage import partial_path


def enqueue(principal, kind, **params):
    with session_scope() as session:
        return service.enqueue(session, principal, kind, params).id


def wait_for_pid(path, timeout=30.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text():
            return int(path.read_text())
        time.sleep(0.05)
    raise AssertionError("job process never started")


class TestRunning:
    def test_success_records_result_progress_and_events(self, principal, worker):
        job_id = enqueue(principal, "test.events")
        job = wait_for_job(job_id)
        assert job.status == "succeeded", job.error
        assert job.progress == 100
        assert job.result == {"count": 3}
        assert job.message == "Recorded 3 metrics"
        with session_scope() as session:
            rows = service.events(session, job_id, "metric")
        assert [row.data["step"] for row in rows] == [0, 1, 2]

    def test_queued_jobs_are_claimed_by_priority_then_age(self, principal):
        with session_scope() as session:
            older = service.enqueue(session, principal, "test.events").id
            low = service.enqueue(session, principal, "test.events", priority=-1).id
            urgent = service.enqueue(session, principal, "test.events", priority=5).id
            newer = service.enqueue(session, principal, "test.events").id
        executor = Executor(concurrency=1)
        order = []
        try:
            for _ in range(4):
                executor.claim_and_start()
                (started,) = executor.running
                order.append(started)
                tick_until_finished(executor, started)
        finally:
            stop_executor(executor)
        assert order == [urgent, older, newer, low]

    def test_exception_fails_job_with_its_message_and_logs_traceback(
        self, principal, worker, client, auth
    ):
        job_id = enqueue(principal, "test.fail")
        job = wait_for_job(job_id)
        assert job.status == "failed"
        assert job.error == "RuntimeError: the disk is full"
        logs = client.get(f"/api/v1/jobs/{job_id}/logs", headers=auth).text
        assert "Traceback" in logs and "the disk is full" in logs

    def test_runs_in_its_own_process(self, principal, worker, tmp_path):
        pid_file = tmp_path / "pid"
        job_id = enqueue(principal, "test.sleep", pid_file=str(pid_file), steps=2)
        assert wait_for_pid(pid_file) != os.getpid()
        assert wait_for_job(job_id).status == "succeeded"


class TestCrash:
    def test_kill_9_marks_job_failed_with_reason(self, principal, worker, tmp_path):
        pid_file = tmp_path / "pid"
        job_id = enqueue(principal, "test.sleep", pid_file=str(pid_file))
        os.kill(wait_for_pid(pid_file), signal.SIGKILL)
        job = wait_for_job(job_id)
        assert job.status == "failed"
        assert "killed by SIGKILL" in job.error
        assert job.finished_at is not None

    def test_restart_fails_jobs_left_running_by_a_dead_process(self, principal, tmp_path):
        pid_file = tmp_path / "pid"
        job_id = enqueue(principal, "test.sleep", pid_file=str(pid_file))
        first = Executor()
        assert first.start_job(job_id)
        os.kill(wait_for_pid(pid_file), signal.SIGKILL)
        first.running[job_id].process.wait()
        first.stop()
        # The server died with its job: nothing reaped it. A new start must recover it.
        with session_scope() as session:
            assert session.get(Job, job_id).status == "running"
        Executor().sweep()
        with session_scope() as session:
            job = session.get(Job, job_id)
        assert job.status == "failed"
        assert "Tuneyard stopped while this job ran" in job.error

    def test_stale_heartbeat_from_another_worker_fails_job(self, principal):
        job_id = enqueue(principal, "test.sleep", pid_file="/dev/null")
        with session_scope() as session:
            job = session.get(Job, job_id)
            job.status = "running"
            job.worker_id = "another-host"
            job.heartbeat_at = utcnow() - timedelta(minutes=5)
        Executor().sweep()
        with session_scope() as session:
            job = session.get(Job, job_id)
        assert job.status == "failed"
        assert "no heartbeat" in job.error


def job_row(job_id: str) -> Job:
    with session_scope() as session:
        return session.get(Job, job_id)


def tick_until_finished(executor: Executor, job_id: str, timeout: float = 60.0) -> Job:
    """Run the executor's loop until the job is finished and its process reaped."""
    deadline = time.monotonic() + timeout
    while (job := job_row(job_id)).status in service.ACTIVE or job_id in executor.running:
        assert time.monotonic() < deadline, f"job {job_id} still {job.status}"
        executor.tick()
        time.sleep(0.1)
    return job


class TestWorkerRestart:
    """A job's process outlives its worker; the next worker of the machine takes it over."""

    @pytest.fixture
    def left_behind(self, principal, tmp_path):
        """A job running in its own process, whose worker has stopped."""
        pid_file = tmp_path / "pid"
        job_id = enqueue(principal, "test.sleep", pid_file=str(pid_file))
        first = Executor()
        assert first.start_job(job_id)
        pid = wait_for_pid(pid_file)
        # While its worker runs, another worker of the machine leaves the job alone.
        bystander = Executor()
        bystander.sweep()
        assert bystander.running == {} and job_row(job_id).worker_id == first.worker_id
        bystander.stop()
        first.stop()
        yield job_id, pid
        stop_executor(first)

    def test_adopted_job_counts_against_the_limit_and_can_be_cancelled(
        self, principal, left_behind
    ):
        job_id, pid = left_behind
        second = Executor(concurrency=1)
        try:
            second.sweep()
            assert list(second.running) == [job_id]
            assert job_row(job_id).status == "running"
            assert job_row(job_id).worker_id == second.worker_id

            waiting = enqueue(principal, "test.events")
            second.claim_and_start()
            assert job_row(waiting).status == "queued"

            with session_scope() as session:
                service.cancel_job(session, principal, job_id)
            job = tick_until_finished(second, job_id)
            assert job.status == "cancelled"
            assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"
            assert tick_until_finished(second, waiting).status == "succeeded"
        finally:
            stop_executor(second)

    def test_adopted_job_whose_process_dies_is_failed_with_the_reason(self, left_behind):
        job_id, pid = left_behind
        second = Executor()
        try:
            second.sweep()
            os.kill(pid, signal.SIGKILL)
            job = tick_until_finished(second, job_id)
        finally:
            stop_executor(second)
        assert job.status == "failed"
        assert "ended without recording an outcome" in job.error
        assert "adopted after its worker stopped" in job.error


class TestTakenForDead:
    """A worker on another machine sees only heartbeats: it may fail a job that still runs."""

    def test_its_files_stay_until_the_fenced_process_exits_then_go(
        self, principal, tmp_path, monkeypatch
    ):
        monkeypatch.setenv("TUNEYARD_JOB_HEARTBEAT_SECONDS", "3600")  # silent from now on
        reset_settings()
        target, pid_file = tmp_path / "out", tmp_path / "pid"
        # Parts two seconds apart: the sweep below comes between two of its progress reports.
        job_id = enqueue(
            principal,
            "test.write",
            target=str(target),
            pid_file=str(pid_file),
            steps=100,
            step_seconds=2,
        )
        owner = Executor()
        try:
            assert owner.start_job(job_id)
            pid = wait_for_pid(pid_file)
            with session_scope() as session:
                job = session.get(Job, job_id)
                job.worker_id = "elsewhere:4242:1700000000.00:1"
                job.heartbeat_at = utcnow() - timedelta(minutes=5)

            Executor().sweep()
            job = job_row(job_id)
            assert job.status == "failed" and "no heartbeat" in job.error
            # The process may be alive (here it is): what it writes is not removed under it.
            assert job.pid == pid and partial_path(target).is_dir()

            # At its next progress report it finds its attempt over and stops writing.
            code = owner.running[job_id].process.wait(timeout=30)
            assert code == FENCED_EXIT
            owner.reap()
        finally:
            stop_executor(owner)
        job = job_row(job_id)
        assert (job.status, job.pid) == ("failed", None)
        assert not target.exists() and not partial_path(target).exists()


class TestCancel:
    def test_cancel_queued_job_never_runs(self, principal, client, auth):
        job_id = enqueue(principal, "test.sleep", pid_file="/dev/null")
        response = client.post(f"/api/v1/jobs/{job_id}/cancel", headers=auth)
        assert response.status_code == 200
        assert response.json()["status"] == "cancelled"
        assert not Executor().start_job(job_id)

    def test_cancel_running_job_terminates_its_process(
        self, principal, worker, client, auth, tmp_path
    ):
        pid_file = tmp_path / "pid"
        job_id = enqueue(principal, "test.sleep", pid_file=str(pid_file))
        pid = wait_for_pid(pid_file)
        response = client.post(f"/api/v1/jobs/{job_id}/cancel", headers=auth)
        assert response.json()["cancel_requested"] is True
        job = wait_for_job(job_id)
        assert job.status == "cancelled"
        with pytest.raises(ProcessLookupError):
            for _ in range(50):
                os.kill(pid, 0)
                time.sleep(0.1)

    def test_cancel_finished_job_is_a_conflict(self, principal, worker, client, auth):
        job_id = enqueue(principal, "test.events")
        wait_for_job(job_id)
        response = client.post(f"/api/v1/jobs/{job_id}/cancel", headers=auth)
        assert response.status_code == 409
        assert response.json()["error"] == "Conflict"
        assert "already succeeded" in response.json()["detail"]


class TestApi:
    def test_list_and_show(self, principal, client, auth):
        ids = [enqueue(principal, "test.events") for _ in range(3)]
        page = client.get("/api/v1/jobs?limit=2", headers=auth).json()
        assert page["total"] == 3 and len(page["items"]) == 2
        shown = client.get(f"/api/v1/jobs/{ids[0]}", headers=auth).json()
        assert shown["status"] == "queued" and shown["kind"] == "test.events"

    def test_unknown_job_is_404(self, client, auth):
        response = client.get("/api/v1/jobs/nope", headers=auth)
        assert response.status_code == 404
        assert "tuneyard jobs list" in response.json()["detail"]

    def test_bad_status_filter(self, client, auth):
        response = client.get("/api/v1/jobs?status=weird", headers=auth)
        assert response.status_code == 422
        assert "Unknown status 'weird'" in response.json()["detail"]


class TestUseKeys:
    """A job's `uses` guards its resources from deletion only if both sides spell each key
    the same; keys are typed, so a misspelt one cannot be written."""

    def test_a_key_reads_as_stored(self):
        assert str(UseKey(Resource.BASE_MODEL, "b1")) == "base_model:b1"
        assert str(model_key("third-party", "t1")) == "third_party_model:t1"
        assert str(model_key(ModelKind.COMPLETE, "c1")) == "complete_model:c1"

    def test_a_misspelt_resource_is_refused(self):
        with pytest.raises(ValueError):
            Resource("base_modle")
        with pytest.raises(AttributeError):
            Resource.BASE_MODLE  # noqa: B018
        with pytest.raises(TypeError, match="Resource member"):
            UseKey("base_model", "b1")
        with pytest.raises(ValueError, match="needs the resource's id"):
            UseKey(Resource.DATASET, "")

    def test_the_jobs_service_takes_no_key_typed_by_hand(self, principal):
        with session_scope() as session, pytest.raises(TypeError, match="UseKey values"):
            service.enqueue(session, principal, "test.events", uses=["base_model:b1"])
        with session_scope() as session:
            assert session.query(Job).count() == 0
            with pytest.raises(TypeError, match="UseKey values"):
                service.ensure_not_in_use(session, "base_model:b1", "Base model 'b1'")

    def test_a_guard_sees_the_key_its_job_was_given(self, principal):
        key = UseKey(Resource.DATASET, "d1")
        with session_scope() as session:
            job = service.enqueue(session, principal, "test.events", uses=[key])
            assert job.uses == ["dataset:d1"]
            with pytest.raises(
                Conflict, match=f"Dataset 'qa' is in use by test.events job {job.id}"
            ):
                service.ensure_not_in_use(session, UseKey(Resource.DATASET, "d1"), "Dataset 'qa'")
            service.ensure_not_in_use(session, UseKey(Resource.BASE_MODEL, "d1"), "Base model")

    def test_no_module_spells_a_key_by_hand(self):
        import re
        from pathlib import Path

        import tuneyard

        names = "|".join(re.escape(resource.value) for resource in Resource)
        spelt = re.compile(r"""["'](?:""" + names + r"""):\{""")
        package = Path(tuneyard.__file__).parent
        found = [
            f"{path.relative_to(package)}: {match.group(0)}"
            for path in package.rglob("*.py")
            if path.name != "keys.py"
            for match in spelt.finditer(path.read_text(encoding="utf-8"))
        ]
        assert found == []
