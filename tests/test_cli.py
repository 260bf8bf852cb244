"""The CLI: users, tokens, jobs and the start-up commands."""

from __future__ import annotations

import json
import subprocess
import sys

from typer.testing import CliRunner

from tuneyard.cli import app

runner = CliRunner()


def invoke(*args: str, input: str | None = None, env: dict | None = None):
    return runner.invoke(app, list(args), input=input, env=env)


def test_help_is_fast_and_imports_no_training_stack():
    code = (
        "import sys, tuneyard.cli, tuneyard.api; tuneyard.api.create_app();"
        "heavy = [m for m in ('torch', 'transformers', 'peft', 'trl', 'datasets') "
        "if m in sys.modules]; print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    help_text = subprocess.run(
        [sys.executable, "-m", "tuneyard", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for group in ("serve", "worker", "base", "data", "jobs", "users", "tokens", "db"):
        assert group in help_text


def test_db_upgrade():
    result = invoke("db", "upgrade")
    assert result.exit_code == 0, result.output
    assert "up to date" in result.output


class TestUsers:
    def test_add_list_rm(self, admin_password):
        added = invoke(
            "users", "add", "ana", "--role", "viewer", env={"TUNEYARD_NEW_PASSWORD": "pw-12345678"}
        )
        assert added.exit_code == 0, added.output
        listed = json.loads(invoke("users", "list", "--json").stdout)
        assert {(u["username"], u["role"]) for u in listed} == {
            ("admin", "admin"),
            ("ana", "viewer"),
        }
        assert invoke("users", "rm", "ana").exit_code == 0
        assert [u["username"] for u in json.loads(invoke("users", "list", "--json").stdout)] == [
            "admin"
        ]

    def test_errors_exit_non_zero_with_message(self, admin_password):
        result = invoke("users", "add", "ana", env={"TUNEYARD_NEW_PASSWORD": "short"})
        assert result.exit_code == 1
        assert "at least 8 characters" in result.output
        result = invoke("users", "rm", "ghost")
        assert result.exit_code == 1
        assert "No user 'ghost'" in result.output

    def test_unknown_project(self, admin_password):
        result = invoke("users", "list", "--project", "4242")
        assert result.exit_code == 1
        assert "No project with code '4242'" in result.output


class TestTokens:
    def test_created_token_works_against_the_api(self, client):
        created = invoke("tokens", "create", "laptop")
        assert created.exit_code == 0, created.output
        secret = created.stdout.strip().splitlines()[-1]
        me = client.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {secret}"})
        assert me.status_code == 200 and me.json()["username"] == "admin"

        rows = json.loads(invoke("tokens", "list", "--json").stdout)
        assert [r["name"] for r in rows] == ["laptop"]
        assert secret not in invoke("tokens", "list", "--json").stdout

        assert invoke("tokens", "revoke", rows[0]["id"]).exit_code == 0
        me = client.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {secret}"})
        assert me.status_code == 401


class TestJobs:
    def test_list_show_logs_cancel(self, principal):
        from tuneyard.db import session_scope
        from tuneyard.jobs import service

        with session_scope() as session:
            job_id = service.enqueue(session, principal, "test.events").id
        rows = json.loads(invoke("jobs", "list", "--json").stdout)
        assert [r["id"] for r in rows] == [job_id]
        shown = json.loads(invoke("jobs", "show", job_id, "--json").stdout)
        assert shown["status"] == "queued"
        assert invoke("jobs", "cancel", job_id).exit_code == 0
        assert json.loads(invoke("jobs", "show", job_id, "--json").stdout)["status"] == "cancelled"
        again = invoke("jobs", "cancel", job_id)
        assert again.exit_code == 1 and "already cancelled" in again.output
        assert invoke("jobs", "logs", job_id).exit_code == 0

    def test_show_unknown(self, admin_password):
        result = invoke("jobs", "show", "nope")
        assert result.exit_code == 1
        assert "No job 'nope'" in result.output
