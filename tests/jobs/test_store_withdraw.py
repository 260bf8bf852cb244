"""What an artifact store no longer needs leaves it: the artifacts of deleted rows and the logs
of finished jobs, once old enough (a job's new folder is published before its row exists)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from tuneyard import artifacts
from tuneyard.config import get_settings
from tuneyard.db import session_scope
from tuneyard.jobs import service
from tuneyard.jobs.ray_executor import withdraw_unneeded
from tuneyard.models import utcnow


def put(root: Path, key: str) -> None:
    (root / key).mkdir(parents=True)
    (root / key / "config.json").write_text("{}")


def test_deleted_rows_and_finished_jobs_leave_the_store(tmp_path, tiny_base, principal):
    settings = get_settings()
    store = artifacts.open_store(f"file://{tmp_path / 'store'}", {})
    source = tmp_path / "api"
    kept, deleted = f"models/base/{tiny_base}", "models/base/deleted-model"
    document = "knowledge/kb-gone/documents/doc-gone"  # a knowledge base's, nested
    for key in (kept, deleted, "datasets/deleted-dataset", document):
        put(source, key)
        artifacts.publish(store, source, key)
    with session_scope() as session:
        finished = service.enqueue(session, principal, "test.events")
        running = service.enqueue(session, principal, "test.events")
        finished.status, finished.finished_at = "succeeded", utcnow() - timedelta(seconds=5)
        running.status = "running"
        job_ids = finished.id, running.id
    for job_id in job_ids:
        (source / "jobs" / job_id).mkdir(parents=True)
        (source / "jobs" / job_id / "log.txt").write_text("step 1\n")
        artifacts.publish_file(store, source, f"jobs/{job_id}/log.txt")

    # Published just now: a row may still be on its way.
    assert withdraw_unneeded(store, settings) == []
    assert artifacts.published(store) == {kept, deleted, "datasets/deleted-dataset", document}

    withdrawn = withdraw_unneeded(store, settings, older_than=0)
    assert sorted(withdrawn) == sorted(
        ["datasets/deleted-dataset", deleted, document, f"jobs/{job_ids[0]}"]
    )
    assert artifacts.published(store) == {kept}
    assert not store.fs.exists(store.path(f"jobs/{job_ids[0]}/log.txt"))
    assert store.fs.exists(store.path(f"jobs/{job_ids[1]}/log.txt"))
    assert withdraw_unneeded(store, settings, older_than=0) == []
