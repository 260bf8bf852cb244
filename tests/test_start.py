"""A team's Tuneyard starts cleanly: processes started together migrate one database once and
make one first admin; code and schema versions are checked at start; readiness says when the
API can do its work."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import make_url

from tests.helpers import PG_URL, closed_port, pg_admin_engine
from tuneyard.config import get_settings, reset_settings
from tuneyard.db import SchemaMismatch, engine_for, schema_state, upgrade

ROOT = Path(__file__).resolve().parent.parent
# The rule for a shared PostgreSQL database, and the one for the embedded SQLite database: each
# test runs on its backend's pass only (tests/conftest.py deselects it on the other).
on_postgres = pytest.mark.postgres_only
on_sqlite = pytest.mark.sqlite_only


def set_revision(revision: str) -> None:
    with engine_for(get_settings().db_url).begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = :r"), {"r": revision})


def downgrade_one() -> None:
    from alembic import command

    from tuneyard.db import alembic_config

    command.downgrade(alembic_config(), "-1")


@contextlib.contextmanager
def empty_database(data: Path):
    """The URL of a database with no tables: a new PostgreSQL database on the test server, or a
    new SQLite file in `data`."""
    if not PG_URL:
        yield f"sqlite:///{data / 'tuneyard.db'}"
        return
    name = f"ty_empty_{uuid.uuid4().hex[:10]}"
    admin = pg_admin_engine()
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        engine_for.cache_clear()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


class TestSchemaLock:
    def test_a_second_holder_waits_for_the_first_and_says_so(self, data_dir):
        import threading

        from tuneyard.db import WAITING_FOR_LOCK, schema_lock

        held, release, order, said = threading.Event(), threading.Event(), [], []

        def first():
            with schema_lock():
                held.set()
                release.wait(10)
                order.append("first")

        thread = threading.Thread(target=first)
        thread.start()
        assert held.wait(10)
        threading.Timer(0.5, release.set).start()
        with schema_lock(announce=said.append):
            order.append("second")
        thread.join(10)
        assert order == ["first", "second"]
        assert said == [WAITING_FOR_LOCK]
        with schema_lock(announce=said.append):
            pass  # free again: no waiting
        assert said == [WAITING_FOR_LOCK]


class TestSchemaVersions:
    def test_code_older_than_the_schema_refuses_to_start(self, data_dir):
        from tuneyard.api import prepare

        set_revision("9999")
        with pytest.raises(SchemaMismatch) as refused:
            prepare(announce=lambda _text: None, migrate=True)
        assert "revision 9999" in refused.value.message
        assert "newer Tuneyard migrated it" in refused.value.message
        with pytest.raises(SchemaMismatch):
            upgrade()  # nor does `tuneyard db upgrade` touch it
        assert schema_state().current == "9999"

    @on_sqlite
    def test_code_newer_than_an_sqlite_schema_migrates_it(self, data_dir):
        from tuneyard.api import prepare

        head = schema_state().head
        downgrade_one()
        behind = schema_state().current
        assert behind != head
        said = []
        prepare(announce=said.append)
        assert schema_state().current == head
        assert said[0] == f"Migrating the database from {behind} to {head}."

    @on_postgres
    def test_code_newer_than_a_postgresql_schema_refuses_and_names_the_command(self, data_dir):
        from tuneyard.api import prepare

        downgrade_one()
        behind = schema_state().current
        with pytest.raises(SchemaMismatch) as refused:
            prepare(announce=lambda _text: None)
        assert f"is at revision {behind}" in refused.value.message
        assert "Run `tuneyard db upgrade` once" in refused.value.message
        assert "--migrate" in refused.value.message
        assert schema_state().current == behind  # nothing migrated behind the team's back

    @on_postgres
    def test_migrate_or_the_setting_lets_a_start_migrate_postgresql(self, data_dir, monkeypatch):
        from tuneyard.api import prepare

        head = schema_state().head
        downgrade_one()
        prepare(announce=lambda _text: None, migrate=True)
        assert schema_state().current == head
        downgrade_one()
        monkeypatch.setenv("TUNEYARD_AUTO_MIGRATE", "true")
        reset_settings()
        prepare(announce=lambda _text: None)
        assert schema_state().current == head

    @on_postgres
    def test_a_worker_on_an_empty_postgresql_database_says_what_to_run(self, tmp_path):
        data = tmp_path / "team"
        data.mkdir()
        with empty_database(data) as url:
            env = {**start_environment(data), "TUNEYARD_DATABASE_URL": url}
            result = subprocess.run(
                [sys.executable, "-m", "tuneyard", "worker"],
                env=env,
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert result.returncode == 1
            said = " ".join(result.stdout.split() + result.stderr.split())
            assert "The database is empty" in said
            assert "Run `tuneyard db upgrade` once" in said
            tables = (
                create_engine(url)
                .connect()
                .execute(
                    text(
                        "SELECT count(*) FROM information_schema.tables WHERE table_schema='public'"
                    )
                )
            )
            assert tables.scalar() == 0


class TestReadiness:
    def test_without_a_worker_it_is_not_ready_and_says_why(self, client, data_dir):
        response = client.get("/api/v1/health/ready")
        assert response.status_code == 503
        body = response.json()
        assert body == {
            "ready": False,
            "reasons": [
                "No worker was seen recently: start one with `tuneyard worker` (or "
                "`tuneyard serve` without --no-worker)."
            ],
            "database": True,
            "schema_current": True,
            "workers": 0,
            "backlog": 0,
        }
        assert str(data_dir) not in response.text

    def test_a_running_worker_makes_it_ready_and_its_stop_unready(self, client, worker):
        from tests.helpers import stop_executor

        body = wait_ready(lambda: client.get("/api/v1/health/ready"))
        assert body["workers"] == 1 and body["reasons"] == []
        stop_executor(worker)
        assert client.get("/api/v1/health/ready").status_code == 503

    def test_counts_the_backlog(self, client, principal):
        from tuneyard.db import session_scope
        from tuneyard.jobs import service

        with session_scope() as session:
            for _ in range(2):
                service.enqueue(session, principal, "test.events", {})
        assert client.get("/api/v1/health/ready").json()["backlog"] == 2

    def test_a_schema_behind_the_code_is_not_ready(self, client, data_dir):
        downgrade_one()
        response = client.get("/api/v1/health/ready")
        assert response.status_code == 503
        assert response.json()["schema_current"] is False
        assert response.json()["reasons"] == [
            "The database's schema is behind this Tuneyard; run `tuneyard db upgrade`."
        ]

    def test_an_unreachable_database_is_not_ready_and_reveals_nothing(
        self, client, data_dir, monkeypatch
    ):
        monkeypatch.setenv("TUNEYARD_DATABASE_URL", f"sqlite:///{data_dir}/absent/no.db")
        reset_settings()
        response = client.get("/api/v1/health/ready")
        assert response.status_code == 503
        assert response.json()["reasons"] == ["The database does not answer."]
        assert str(data_dir) not in response.text

    def test_health_stays_alive_only(self, client):
        assert client.get("/api/v1/health").json()["status"] == "ok"


def wait_ready(probe, timeout: float = 60.0, workers: int = 1) -> dict:
    """The readiness answer once it is 200 with at least `workers` workers seen."""
    deadline = time.monotonic() + timeout
    while True:
        response = probe()
        if response.status_code == 200 and response.json()["workers"] >= workers:
            return response.json()
        if time.monotonic() > deadline:
            raise AssertionError(f"not ready in {timeout} s: {response.text}")
        time.sleep(0.3)


def start_environment(data: Path) -> dict[str, str]:
    keep = ("PATH", "HOME", "LANG", "TUNEYARD_MODEL_ROOTS", "TUNEYARD_PLUGINS")
    env = {name: os.environ[name] for name in keep if name in os.environ}
    return {
        **env,
        "PYTHONPATH": str(ROOT),
        "COLUMNS": "200",
        "TUNEYARD_DATA_DIR": str(data),
        "TUNEYARD_JOB_HEARTBEAT_SECONDS": "0.5",
    }


@pytest.mark.slow
@pytest.mark.parametrize("round_", range(3))
def test_a_server_and_two_workers_start_together_on_an_empty_database(tmp_path, round_):
    """Started at the same instant against an empty database, they all start: one schema, one
    first admin and project, and readiness answers 200 once a worker is seen."""
    data = tmp_path / "team"
    data.mkdir()
    port = closed_port()
    with empty_database(data) as url:
        env = {**start_environment(data), "TUNEYARD_DATABASE_URL": url}
        migrate = ["--migrate"] if PG_URL else []  # SQLite migrates on start by itself
        commands = [
            ["serve", "--no-worker", "--host", "127.0.0.1", "--port", str(port), *migrate],
            ["worker", *migrate],
            ["worker", *migrate],
        ]
        logs = [tmp_path / f"process-{n}.log" for n in range(len(commands))]
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
            body = wait_ready(lambda: ready_probe(port, processes, logs))
            assert body["workers"] >= 1 and body["schema_current"]
            assert [p.poll() for p in processes] == [None, None, None], output(logs)
            said = output(logs)
            assert said.count("Created project 1001 with user 'admin'") == 1, said
            assert "Traceback" not in said, said

            from tuneyard.models import Project, User

            engine = create_engine(url)
            with engine.connect() as conn:
                versions = conn.execute(text("SELECT version_num FROM alembic_version")).all()
                projects = conn.scalar(select(func.count()).select_from(Project))
                admins = conn.scalar(select(func.count()).select_from(User))
            engine.dispose()
            assert versions == [(schema_state_head(),)]
            assert (projects, admins) == (1, 1)
            # Both workers are seen; one that stops is no longer counted.
            wait_ready(lambda: ready_probe(port, processes, logs), workers=2)
            os.killpg(processes[2].pid, signal.SIGTERM)
            processes[2].wait(20)
            assert ready_probe(port, processes[:2], logs).json()["workers"] == 1
        finally:
            for process in processes:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
            for process in processes:
                try:
                    process.wait(20)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()


def schema_state_head() -> str:
    from tuneyard.db import _migration_scripts

    return _migration_scripts().get_current_head()


def ready_probe(port: int, processes, logs) -> httpx.Response:
    ended = [p.args[3:] for p in processes if p.poll() is not None]
    assert not ended, f"{ended} stopped:\n{output(logs)}"
    try:
        return httpx.get(f"http://127.0.0.1:{port}/api/v1/health/ready", timeout=5)
    except httpx.TransportError:
        return httpx.Response(599, text="not listening yet")


def output(logs) -> str:
    return "\n".join(f"--- {log.name}\n{log.read_text()}" for log in logs)
