"""The CLI: logging in, users, tokens, jobs, tables and JSON, and the server's own commands."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from tests.helpers import closed_port, flat
from tuneyard.cli import app

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[2]


def invoke(*args: str, input: str | None = None, env: dict | None = None):
    return runner.invoke(app, list(args), input=input, env=env)


def run_tuneyard(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    """`tuneyard ARGS` as a person runs it: its own process, only the environment given."""
    base = {"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT), "COLUMNS": "80"}
    return subprocess.run(
        [sys.executable, "-m", "tuneyard", *args],
        env={**base, **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def login_token(url: str, username: str, password: str) -> str:
    response = httpx.post(
        f"{url}/api/v1/auth/login",
        json={"project_code": "1001", "username": username, "password": password},
    )
    response.raise_for_status()
    return response.json()["token"]


@contextmanager
def data_dir_at(path: Path, monkeypatch):
    """Settings that name another data dir (on SQLite), for the server's own commands."""
    from tuneyard.config import get_settings, reset_settings
    from tuneyard.db import engine_for

    saved = {name: os.environ.get(name) for name in ("TUNEYARD_DATA_DIR", "TUNEYARD_DATABASE_URL")}
    monkeypatch.setenv("TUNEYARD_DATA_DIR", str(path))
    monkeypatch.delenv("TUNEYARD_DATABASE_URL", raising=False)
    reset_settings()
    try:
        yield
    finally:
        engine_for(get_settings().db_url).dispose()
        for name, value in saved.items():
            if value is None:
                monkeypatch.delenv(name, raising=False)
            else:
                monkeypatch.setenv(name, value)
        reset_settings()


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
    for group in ("login", "init", "serve", "worker", "base", "data", "jobs", "users", "db"):
        assert group in help_text


class TestServerCommands:
    def test_db_upgrade(self):
        result = invoke("db", "upgrade")
        assert result.exit_code == 0, result.output
        assert "up to date" in result.output

    def test_a_missing_data_dir_is_an_error_and_is_not_made(self, tmp_path, monkeypatch):
        missing = tmp_path / "missing"
        with data_dir_at(missing, monkeypatch):
            for args in (("db", "upgrade"), ("db", "check"), ("worker",), ("serve",)):
                result = invoke(*args)
                assert result.exit_code == 1, (args, result.output)
                assert flat(result.stderr).startswith(f"Error: No data dir at {missing}.")
                assert "`tuneyard init` creates a new one" in flat(result.stderr)
        assert not missing.exists()

    def test_init_makes_the_data_dir_and_the_first_admin(self, tmp_path, monkeypatch):
        fresh = tmp_path / "fresh"
        with data_dir_at(fresh, monkeypatch):
            result = invoke("init")
            assert result.exit_code == 0, result.output
            assert "Created project 1001 with user 'admin', password: " in result.stderr
            assert f"Created the data dir {fresh}." in flat(result.stdout)
            assert "`tuneyard login http://127.0.0.1:8000`" in flat(result.stdout)
            assert stat.S_IMODE(fresh.stat().st_mode) == 0o700
            assert (fresh / "tuneyard.db").is_file()
            again = invoke("init")
            assert again.exit_code == 0, again.output
            assert f"The data dir {fresh} is up to date." in flat(again.stdout)
            assert "Created project" not in again.output

    def test_init_demo_without_waiting_queues_the_import(self, data_dir, smollm2_gguf):
        queued = invoke("init", "--demo", "--no-wait")
        assert queued.exit_code == 0, queued.output
        assert "Queued job " in flat(queued.stdout)
        again = invoke("init", "--demo", "--no-wait")
        assert again.exit_code == 0, again.output
        from tuneyard.auth.service import local_principal
        from tuneyard.basemodels.service import list_base_models
        from tuneyard.db import session_scope

        with session_scope() as session:
            models, _ = list_base_models(session, local_principal(session))
            listed = [(m.technical_name, m.status) for m in models]
        # The chat model waits for its import; the embedding model is registered in place.
        assert sorted(listed) == [
            ("SmolLM2-135M-Instruct", "importing"),
            ("all-MiniLM-L6-v2", "ready"),
        ]

    def test_unknown_project(self, admin_password):
        result = invoke("users", "operator", "admin", "--project", "4242")
        assert result.exit_code == 1
        assert "No project with code '4242'" in result.output

    def test_recover_sets_a_password_without_logging_in(self, api_server, admin_password):
        url = api_server.url
        result = invoke("users", "recover", "admin", env={"TUNEYARD_NEW_PASSWORD": "found-it-99"})
        assert result.exit_code == 0, result.output
        assert login_token(url, "admin", "found-it-99")


class TestLogin:
    def test_login_keeps_the_token_readable_by_you_alone(
        self, api_server, admin_password, cli_home
    ):
        url = api_server.url
        result = invoke(
            "login", url + "/", "--project", "1001", "--username", "admin",
            "--password", admin_password,
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        stored = cli_home / ".config" / "tuneyard" / "credentials.json"
        assert f"Logged in to {url} as admin (admin of project 1001)" in flat(result.stdout)
        assert stat.S_IMODE(stored.stat().st_mode) == 0o600
        assert stat.S_IMODE(stored.parent.stat().st_mode) == 0o700
        kept = json.loads(stored.read_text())
        assert kept["url"] == url and kept["token"].startswith("ty")

        listed = invoke("users", "list", "--json")
        assert listed.exit_code == 0, listed.output
        assert [u["username"] for u in json.loads(listed.stdout)] == ["admin"]

        out = invoke("logout")
        assert out.exit_code == 0 and not stored.exists()
        missing = invoke("users", "list")
        assert missing.exit_code == 1
        assert flat(missing.stderr) == "Error: not logged in: run `tuneyard login URL`"

    def test_login_asks_what_it_is_not_given(self, api_server, admin_password, cli_home):
        url = api_server.url
        result = invoke("login", url, input=f"1001\nadmin\n{admin_password}\n")
        assert result.exit_code == 0, result.output
        assert admin_password not in result.output
        assert (cli_home / ".config" / "tuneyard" / "credentials.json").is_file()

    def test_login_with_a_token(self, api_server, admin_password, cli_home):
        url = api_server.url
        token = login_token(url, "admin", admin_password)
        result = invoke("login", url, "--token", token)
        assert result.exit_code == 0, result.output
        assert invoke("jobs", "list", "--json").stdout.strip() == "[]"

    def test_wrong_password_and_bad_token_keep_nothing(self, api_server, admin_password, cli_home):
        url = api_server.url
        wrong = invoke("login", url, "-p", "1001", "-u", "admin", "--password", "nope")
        assert wrong.exit_code == 1
        assert flat(wrong.stderr) == "Error: Wrong project code, username or password."
        bad = invoke("login", url, "--token", "ty_not-a-token")
        assert bad.exit_code == 1
        assert "Invalid or revoked token" in flat(bad.stderr)
        assert not (cli_home / ".config" / "tuneyard").exists()

    def test_not_a_server_address(self, cli_home):
        result = invoke("login", "127.0.0.1:8000", "--token", "t")
        assert result.exit_code == 1
        assert "give one like http://127.0.0.1:8000" in flat(result.stderr)

    def test_unreachable_server(self, cli_home):
        url = f"http://127.0.0.1:{closed_port()}"
        result = invoke("base", "list", env={"TUNEYARD_URL": url, "TUNEYARD_TOKEN": "t"})
        assert result.exit_code == 1
        assert flat(result.stderr).startswith(f"Error: Cannot reach the Tuneyard server at {url}")

    def test_a_stored_token_is_not_sent_to_another_server(
        self, api_server, admin_password, cli_home
    ):
        url = api_server.url
        token = login_token(url, "admin", admin_password)
        assert invoke("login", url, "--token", token).exit_code == 0
        other = f"http://127.0.0.1:{closed_port()}"
        result = invoke("base", "list", env={"TUNEYARD_URL": other})
        assert result.exit_code == 1
        assert flat(result.stderr) == "Error: not logged in: run `tuneyard login URL`"

    def test_an_expired_session_says_to_log_in_again(self, cli, monkeypatch):
        monkeypatch.setenv("TUNEYARD_TOKEN", "ty_revoked")
        result = invoke("base", "list")
        assert result.exit_code == 1
        assert f"Run `tuneyard login {cli}`." in flat(result.stderr)


class TestAsAClient:
    def test_a_client_in_another_folder_makes_no_data_dir(self, cli, tmp_path):
        elsewhere = tmp_path / "laptop"
        elsewhere.mkdir()
        env = {
            "HOME": str(elsewhere),
            "TUNEYARD_URL": cli,
            "TUNEYARD_TOKEN": os.environ["TUNEYARD_TOKEN"],
        }
        result = run_tuneyard("base", "list", env=env, cwd=elsewhere)
        assert result.returncode == 0, result.stderr
        assert result.stderr.strip() == "0 of 0"
        assert list(elsewhere.iterdir()) == []

        no_login = run_tuneyard("jobs", "list", env={"HOME": str(elsewhere)}, cwd=elsewhere)
        assert no_login.returncode == 1
        assert "not logged in: run `tuneyard login URL`" in no_login.stderr
        assert list(elsewhere.iterdir()) == []

    def test_a_viewer_is_refused_in_the_servers_words(self, cli):
        added = invoke("users", "add", "vera", "--role", "viewer",
                       env={"TUNEYARD_NEW_PASSWORD": "viewer-pass-1"})  # fmt: skip
        assert added.exit_code == 0, added.output
        token = login_token(cli, "vera", "viewer-pass-1")
        refused = httpx.delete(
            f"{cli}/api/v1/users/admin", headers={"Authorization": f"Bearer {token}"}
        )
        assert refused.status_code == 403
        as_viewer = {"TUNEYARD_TOKEN": token}
        result = invoke("users", "rm", "admin", env=as_viewer)
        assert result.exit_code == 1
        assert flat(result.stderr) == f"Error: {refused.json()['detail']}"
        listed = invoke("users", "list", "--json", env=as_viewer)
        assert listed.exit_code == 0, listed.output

    def test_a_long_id_is_printed_whole_in_a_pipe(self, cli, tiny_base):
        listed = invoke("base", "list")
        assert listed.exit_code == 0, listed.output
        header, row = listed.stdout.splitlines()
        assert header.split("\t") == [
            "id", "technical_name", "model_type", "source", "status", "created_at",
        ]  # fmt: skip
        assert row.split("\t")[:2] == [tiny_base, "tiny"]

        env = {"TUNEYARD_URL": cli, "TUNEYARD_TOKEN": os.environ["TUNEYARD_TOKEN"]}
        piped = run_tuneyard("base", "list", env=env, cwd=Path(os.getcwd()))
        assert tiny_base in piped.stdout.split()

        shown = invoke("base", "show", "tiny")
        assert re.search(rf"^id +{tiny_base}$", shown.stdout, re.MULTILINE)


class TestUsers:
    def test_add_list_rm(self, cli):
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

    def test_passwd(self, cli):
        invoke("users", "add", "ana", env={"TUNEYARD_NEW_PASSWORD": "pw-12345678"})
        result = invoke("users", "passwd", "ana", env={"TUNEYARD_NEW_PASSWORD": "pw-87654321"})
        assert result.exit_code == 0, result.output
        assert login_token(cli, "ana", "pw-87654321")

    def test_errors_exit_non_zero_with_message(self, cli):
        result = invoke("users", "add", "ana", env={"TUNEYARD_NEW_PASSWORD": "short"})
        assert result.exit_code == 1
        assert "at least 8 characters" in result.output
        result = invoke("users", "rm", "ghost")
        assert result.exit_code == 1
        assert "No user 'ghost'" in result.output


class TestTokens:
    def test_created_token_works_against_the_api(self, cli, client):
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
    def test_list_show_logs_cancel(self, cli, principal):
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

    def test_follow_a_job_to_its_end(self, cli, principal, worker):
        from tuneyard.db import session_scope
        from tuneyard.jobs import service

        with session_scope() as session:
            job_id = service.enqueue(session, principal, "test.events").id
        result = invoke("jobs", "follow", job_id)
        assert result.exit_code == 0, result.output
        assert f"Job {job_id} succeeded" in flat(result.stdout)

    def test_ctrl_c_cancels_the_job_it_follows(self, cli, principal, worker, tmp_path, monkeypatch):
        from tests.helpers import wait_for_job
        from tuneyard.client import Client
        from tuneyard.db import session_scope
        from tuneyard.jobs import service

        with session_scope() as session:
            params = {"pid_file": str(tmp_path / "pid")}
            job_id = service.enqueue(session, principal, "test.sleep", params).id
        wait_for_job(job_id, statuses=("running",))
        get = Client.get

        def interrupted_once(client, path, **params):
            if not interrupted:
                interrupted.append(path)
                raise KeyboardInterrupt
            return get(client, path, **params)

        interrupted: list[str] = []
        monkeypatch.setattr(Client, "get", interrupted_once)
        result = invoke("jobs", "follow", job_id)
        assert result.exit_code == 1
        assert "Cancelling" in result.stderr
        assert f"Error: Job {job_id} cancelled" in flat(result.stderr)
        assert wait_for_job(job_id).status == "cancelled"

    def test_show_unknown(self, cli):
        result = invoke("jobs", "show", "nope")
        assert result.exit_code == 1
        assert "No job 'nope'" in result.output


class TestTables:
    ROWS = [{"id": "1786893d-66b1-4b7c-9b3e-5d7c2a0e9f41", "name": "SmolLM2-135M-Instruct"}]

    def printed(self, monkeypatch, capsys, width: int) -> str:
        from io import StringIO

        from rich.console import Console

        from tuneyard import terminal

        screen = StringIO()
        sized = Console(file=screen, width=width, force_terminal=True, color_system=None)
        monkeypatch.setattr(terminal, "console", sized)
        terminal.print_table(self.ROWS, ["id", "name", "status"])
        return screen.getvalue() + capsys.readouterr().out

    def test_a_wide_terminal_gets_a_table(self, monkeypatch, capsys):
        shown = self.printed(monkeypatch, capsys, 120)
        assert "┃ id " in shown and f"│ {self.ROWS[0]['id']} │ {self.ROWS[0]['name']} │" in shown

    def test_a_narrow_terminal_gets_whole_values_a_row_a_line(self, monkeypatch, capsys):
        shown = self.printed(monkeypatch, capsys, 50)
        assert shown == f"id\tname\tstatus\n{self.ROWS[0]['id']}\t{self.ROWS[0]['name']}\t\n"


@pytest.mark.parametrize("command", [("base", "list"), ("data", "list"), ("jobs", "list")])
def test_list_commands_print_json(cli, command):
    result = invoke(*command, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == []


def test_a_list_longer_than_a_page_is_printed_whole(cli, monkeypatch):
    from tuneyard import client

    monkeypatch.setattr(client, "PAGE", 2)
    names = [f"script-{n}" for n in range(5)]
    for name in names:
        assert invoke("tokens", "create", name).exit_code == 0
    rows = json.loads(invoke("tokens", "list", "--json").stdout)
    assert sorted(row["name"] for row in rows) == names
