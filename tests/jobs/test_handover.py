"""A worker that stops hands its jobs over: they go back to the queue (a resumable job with a
checkpoint, the others from the start) and another worker claims them once. A job whose
worker died resumes from its checkpoint instead of failing, a limited number of times."""

from __future__ import annotations

import os
import signal
import time
from datetime import timedelta

import psutil
import pytest

from tests.helpers import stop_executor
from tests.jobs.test_jobs import enqueue, job_row, tick_until_finished, wait_for_pid
from tuneyard.config import reset_settings
from tuneyard.db import session_scope
from tuneyard.jobs import service
from tuneyard.jobs.context import HANDOVER_SIGNAL
from tuneyard.jobs.executor import Executor
from tuneyard.models import Job, utcnow
from tuneyard.storage import partial_path


def requeued_events(job_id: str) -> list[dict]:
    with session_scope() as session:
        return [row.data for row in service.events(session, job_id, service.REQUEUED)]


def started_from(job_id: str) -> list[int]:
    with session_scope() as session:
        return [row.data["from_step"] for row in service.events(session, job_id, "started")]


@pytest.fixture
def counting(principal, tmp_path):
    """A queued resumable job counting 400 steps of 0.05 s, saving every 5 steps."""
    checkpoint, pid_file = tmp_path / "checkpoint", tmp_path / "pid"
    job_id = enqueue(
        principal,
        "test.steps",
        checkpoint=str(checkpoint),
        pid_file=str(pid_file),
        steps=400,
        step_seconds=0.05,
    )
    return job_id, checkpoint, pid_file


class TestWorkerStops:
    def test_a_resumable_job_stops_at_a_checkpoint_and_another_worker_resumes_it(
        self, principal, counting
    ):
        job_id, checkpoint, pid_file = counting
        waiting = enqueue(principal, "test.events")
        first, second = Executor(concurrency=1), Executor(concurrency=1)
        try:
            assert first.start_job(job_id)
            pid = wait_for_pid(pid_file)
            while not checkpoint.exists():
                first.tick()
                time.sleep(0.05)
            first.drain(grace_seconds=30)
            # Its process ended by itself, having put the job back with its checkpoint.
            assert first.running == {} and not psutil.pid_exists(pid)
            step = int(checkpoint.read_text())
            job = job_row(job_id)
            assert (job.status, job.attempt, job.worker_id, job.pid) == ("queued", 1, None, None)
            assert (
                job.message
                == f"Worker stopped; resumes from checkpoint step {step} on another worker"
            )
            assert requeued_events(job_id) == [
                {"reason": service.HANDED_OVER, "attempt": 1, "resume_step": step}
            ]
            # The stopping worker claimed nothing more.
            assert job_row(waiting).status == "queued"

            done = tick_until_finished(second, job_id)
        finally:
            stop_executor(first)
            stop_executor(second)
        assert (done.status, done.attempt) == ("succeeded", 2), done.error
        assert done.worker_id == second.worker_id
        assert done.result == {"from_step": step}
        assert started_from(job_id) == [0, step]

    def test_a_job_that_cannot_resume_has_half_the_grace_then_runs_again_from_the_start(
        self, principal, tmp_path
    ):
        target, pid_file = tmp_path / "out", tmp_path / "pid"
        job_id = enqueue(
            principal, "test.write", target=str(target), pid_file=str(pid_file), steps=600
        )
        first = Executor()
        try:
            assert first.start_job(job_id)
            wait_for_pid(pid_file)
            first.drain(grace_seconds=10)  # 5 s to finish (too short here), then interrupted
            assert first.running == {}
        finally:
            stop_executor(first)
        job = job_row(job_id)
        assert job.status == "queued"
        assert job.message == "Worker stopped; resumes from the start on another worker"
        # What it had half written was removed before it went back.
        assert not partial_path(target).exists() and not target.exists()
        with session_scope() as session:  # a shorter run this time, to end the test sooner
            session.get_one(Job, job_id).params = {**job.params, "steps": 3}
        second = Executor()
        try:
            pid_file.unlink()
            done = tick_until_finished(second, job_id)
        finally:
            stop_executor(second)
        assert (done.status, done.attempt) == ("succeeded", 2), done.error
        assert sorted(part.name for part in target.iterdir()) == ["part-0", "part-1", "part-2"]

    def test_a_job_that_ends_within_the_grace_just_finishes(self, principal, tmp_path):
        job_id = enqueue(principal, "test.sleep", pid_file=str(tmp_path / "pid"), steps=10)
        first = Executor()
        try:
            assert first.start_job(job_id)
            first.drain(grace_seconds=60)
        finally:
            stop_executor(first)
        assert job_row(job_id).status == "succeeded"
        assert requeued_events(job_id) == []

    def test_the_worker_that_handed_a_job_over_leaves_its_new_attempt_alone(self, counting):
        job_id, checkpoint, pid_file = counting
        first, second = Executor(), Executor()
        try:
            assert first.start_job(job_id)
            os.kill(wait_for_pid(pid_file), HANDOVER_SIGNAL)
            first.running[job_id].process.wait(timeout=30)
            assert job_row(job_id).status == "queued"
            pid_file.unlink()
            second.claim_and_start()
            assert job_row(job_id).worker_id == second.worker_id
            # The first worker reaps its ended process after the second claimed the job.
            first.reap()
            job = job_row(job_id)
            assert (job.status, job.attempt, job.worker_id) == ("running", 2, second.worker_id)
            wait_for_pid(pid_file)
        finally:
            stop_executor(first)
            stop_executor(second)

    def test_a_cancel_wins_over_a_handover(self, principal, counting):
        job_id, checkpoint, pid_file = counting
        first = Executor()
        try:
            assert first.start_job(job_id)
            wait_for_pid(pid_file)
            with session_scope() as session:
                service.cancel_job(session, principal, job_id)
            first.drain(grace_seconds=30)
        finally:
            stop_executor(first)
        assert job_row(job_id).status == "cancelled"
        assert requeued_events(job_id) == []


def leave_running(job_id: str, worker_id: str, attempt: int = 1) -> None:
    """The job as a worker on another machine left it when that machine died."""
    with session_scope() as session:
        job = session.get(Job, job_id)
        job.status, job.attempt, job.worker_id = "running", attempt, worker_id
        job.started_at = job.heartbeat_at = utcnow() - timedelta(minutes=5)


ELSEWHERE = "elsewhere:4242:1700000000.00:1"


class TestWorkerDied:
    def test_a_resumable_job_goes_back_to_the_queue_once_then_fails(self, counting):
        job_id, checkpoint, _ = counting
        checkpoint.write_text("15")
        leave_running(job_id, ELSEWHERE)
        Executor().sweep()
        job = job_row(job_id)
        assert job.status == "queued"
        assert job.message == "Worker lost; resumes from checkpoint step 15 on another worker"
        # A second worker sweeping after it changes nothing more.
        Executor().sweep()
        assert requeued_events(job_id) == [
            {"reason": service.LOST, "attempt": 1, "resume_step": 15}
        ]

        # Claimed again, and lost again: the allowed resumes are used up.
        leave_running(job_id, ELSEWHERE, attempt=2)
        Executor().sweep()
        job = job_row(job_id)
        assert job.status == "failed"
        assert "no heartbeat" in job.error
        assert "already put back in the queue 1 time(s) after losing its worker" in job.error
        assert "TUNEYARD_JOB_LOST_RESUMES" in job.error

    def test_the_limit_is_a_setting(self, counting, monkeypatch):
        monkeypatch.setenv("TUNEYARD_JOB_LOST_RESUMES", "0")
        reset_settings()
        job_id, checkpoint, _ = counting
        checkpoint.write_text("15")
        leave_running(job_id, ELSEWHERE)
        Executor().sweep()
        assert job_row(job_id).status == "failed"

    def test_without_a_checkpoint_it_fails_as_before(self, counting):
        job_id, _, _ = counting
        leave_running(job_id, ELSEWHERE)
        Executor().sweep()
        job = job_row(job_id)
        assert job.status == "failed" and "no heartbeat" in job.error
        assert "put back in the queue" not in job.error
        assert requeued_events(job_id) == []

    def test_a_dead_process_on_this_machine_resumes_on_the_next_worker(self, counting):
        job_id, checkpoint, pid_file = counting
        first = Executor()
        try:
            assert first.start_job(job_id)
            pid = wait_for_pid(pid_file)
            while not checkpoint.exists():
                time.sleep(0.05)
            os.kill(pid, signal.SIGKILL)
            first.running[job_id].process.wait()
            first.stop()  # the worker died too: nothing reaped the job
        finally:
            stop_executor(first)
        step = int(checkpoint.read_text())
        second = Executor()
        try:
            pid_file.unlink()
            second.sweep()
            job = job_row(job_id)
            assert job.status == "queued"
            assert (
                job.message == f"Worker lost; resumes from checkpoint step {step} on another worker"
            )
            done = tick_until_finished(second, job_id)
        finally:
            stop_executor(second)
        assert (done.status, done.attempt) == ("succeeded", 2), done.error
        assert started_from(job_id) == [0, step]

    def test_a_requeue_applies_once_and_a_claim_once(self, counting):
        job_id, checkpoint, _ = counting
        checkpoint.write_text("5")
        leave_running(job_id, ELSEWHERE)
        with session_scope() as session:
            job = session.get_one(Job, job_id)
            assert service.requeue(session, job, attempt=1, reason=service.LOST)
        with session_scope() as session:
            job = session.get_one(Job, job_id)
            assert not service.requeue(session, job, attempt=1, reason=service.LOST)
        assert len(requeued_events(job_id)) == 1
        one, other = Executor(), Executor()
        try:
            claims = [one.claim(job_id), other.claim(job_id)]
        finally:
            one.stop()
            other.stop()
        assert claims == [("test.steps", 2), None]


class TestTrainingRequeued:
    def test_a_requeued_training_waits_again_and_says_where_it_resumes(
        self, client, auth, worker, tiny_base
    ):
        from tests.helpers import CHAT, start, upload
        from tuneyard.models import Training
        from tuneyard.storage import Layout

        dataset = upload(client, auth, "chat", CHAT)
        stop_executor(worker)  # the training stays queued: this test plays its worker
        response = start(client, auth, tiny_base, dataset)
        assert response.status_code == 202, response.text
        training_id, job_id = response.json()["id"], response.json()["job_id"]
        with session_scope() as session:
            job = session.get_one(Job, job_id)
            job.status, job.attempt, job.worker_id = "running", 1, "elsewhere:1:1:1"
            session.get_one(Training, training_id).status = "running"
        kept = Layout().training_dir(training_id) / "checkpoints" / "checkpoint-2"
        kept.mkdir(parents=True)
        (kept / "trainer_state.json").write_text('{"global_step": 2}')

        with session_scope() as session:
            job = session.get_one(Job, job_id)
            assert service.requeue(session, job, attempt=1, reason=service.HANDED_OVER)

        shown = client.get(f"/api/v1/trainings/{training_id}", headers=auth).json()
        assert shown["status"] == "queued"
        job = client.get(f"/api/v1/jobs/{job_id}", headers=auth).json()
        assert job["status"] == "queued"
        assert job["message"] == "Worker stopped; resumes from checkpoint step 2 on another worker"
