"""The dashboard's numbers: counts, trainings per day over the last week, base model usage."""

from __future__ import annotations

import socket
import time
from datetime import timedelta

from tests.helpers import CHAT, FAST, start, stop_executor, upload, user_in
from tuneyard.auth.service import local_principal
from tuneyard.db import session_scope
from tuneyard.jobs import service
from tuneyard.models import Training, utcnow

DASHBOARD = "/api/v1/dashboard"


def test_an_empty_project(client, auth):
    body = client.get(DASHBOARD, headers=auth).json()
    assert set(body["counts"].values()) == {0}
    days = body["trainings_per_day"]
    assert len(days) == 7 and all(day["total"] == 0 for day in days)
    assert days[-1]["day"] == utcnow().date().isoformat()
    assert body["base_model_usage"] == []
    assert body["workers"] == []


def test_counts_days_and_usage(client, auth, worker, tiny_base, tiny_model_dir):
    other = client.post(
        "/api/v1/base-models",
        json={"technical_name": "unused", "path": str(tiny_model_dir)},
        headers=auth,
    )
    assert other.status_code == 201
    dataset = upload(client, auth, "chat", CHAT)
    first = start(client, auth, tiny_base, dataset, name="today", **FAST)
    second = start(client, auth, tiny_base, dataset, name="long-ago", **FAST)
    assert first.status_code == second.status_code == 202
    with session_scope() as session:
        session.get(Training, second.json()["id"]).created_at = utcnow() - timedelta(days=10)

    body = client.get(DASHBOARD, headers=auth).json()
    assert body["counts"]["base_models"] == 2
    assert body["counts"]["datasets"] == 1
    assert body["counts"]["trainings"] == 2
    # Only the training of the last 7 days is on the chart, on today's bar.
    assert [day["total"] for day in body["trainings_per_day"]] == [0] * 6 + [1]
    assert body["base_model_usage"] == [
        {"base_model": "tiny", "trainings": 2, "customized_models": 0},
        {"base_model": "unused", "trainings": 0, "customized_models": 0},
    ]


def test_shows_live_workers_their_hosts_and_jobs(client, auth, principal, worker, tmp_path):
    """The project's own jobs in full; another project's only counted."""
    user_in(client, "2002", "other")
    worker.concurrency = 2
    with session_scope() as session:
        mine = service.enqueue(
            session, principal, "test.sleep", {"pid_file": str(tmp_path / "mine")}
        ).id
    with session_scope() as session:
        other_principal = local_principal(session, "2002")
        service.enqueue(
            session, other_principal, "test.sleep", {"pid_file": str(tmp_path / "other")}
        )
    deadline = time.monotonic() + 60
    while True:
        workers = client.get(DASHBOARD, headers=auth).json()["workers"]
        if workers and workers[0]["jobs"] and workers[0]["other_projects_jobs"]:
            break
        assert time.monotonic() < deadline, workers
        time.sleep(0.2)
    (seen,) = workers
    assert seen["id"] == worker.worker_id and seen["host"] == socket.gethostname()
    assert [job["id"] for job in seen["jobs"]] == [mine]
    assert seen["jobs"][0]["kind"] == "test.sleep" and seen["jobs"][0]["attempt"] == 1
    stop_executor(worker)
    assert client.get(DASHBOARD, headers=auth).json()["workers"] == []


def test_needs_a_token(client):
    assert client.get(DASHBOARD).status_code == 401
