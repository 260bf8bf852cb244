"""The `tuneyard` command: a thin client of the services, for a person at a terminal."""

from __future__ import annotations

import typer

from tuneyard.terminal import (
    JsonOption,
    ProjectOption,
    cli_session,
    console,
    err_console,
    fail,
    print_json,
    print_record,
    print_table,
)

app = typer.Typer(
    help="Tuneyard: base models and datasets in, fine-tuned models out.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(help="The database.", no_args_is_help=True)
users_app = typer.Typer(help="Users of a project (admin).", no_args_is_help=True)
tokens_app = typer.Typer(help="API tokens for scripts and the REST API.", no_args_is_help=True)
jobs_app = typer.Typer(help="Background jobs: list, follow, cancel.", no_args_is_help=True)


def _mount() -> None:
    from tuneyard.basemodels.cli import app as base_app
    from tuneyard.datasets.cli import app as data_app

    app.add_typer(db_app, name="db")
    app.add_typer(base_app, name="base")
    app.add_typer(data_app, name="data")
    app.add_typer(jobs_app, name="jobs")
    app.add_typer(users_app, name="users")
    app.add_typer(tokens_app, name="tokens")


@app.command()
def serve(
    host: str = typer.Option(None, help="Address to bind (default from TUNEYARD_HOST)."),
    port: int = typer.Option(None, help="Port (default from TUNEYARD_PORT, 8000)."),
    worker: bool = typer.Option(True, help="Run a job worker in the same process."),
):
    """Start the API (and a job worker) on HOST:PORT."""
    import uvicorn

    from tuneyard.api import create_app, prepare
    from tuneyard.config import get_settings

    settings = get_settings()
    prepare()
    host = host or settings.host
    port = port or settings.port
    console.print(f"Tuneyard on http://{host}:{port}  (API docs at /docs, mode {settings.mode})")
    uvicorn.run(create_app(run_worker=worker), host=host, port=port, log_level="info")


@app.command()
def worker(
    concurrency: int = typer.Option(None, min=1, help="Jobs at once (default from settings)."),
):
    """Run a job worker alone (beside a `tuneyard serve --no-worker`, or on another machine)."""
    import signal
    import threading

    from tuneyard.api import prepare
    from tuneyard.jobs.executor import Executor

    prepare()
    executor = Executor(concurrency=concurrency)
    executor.recover()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    console.print(f"Worker running {executor.concurrency} job(s) at a time; Ctrl-C stops it.")
    try:
        while not stop.is_set():
            executor.tick()
            stop.wait(0.5)
    except KeyboardInterrupt:
        pass


@db_app.command("upgrade")
def db_upgrade():
    """Apply database migrations."""
    from tuneyard.db import upgrade

    upgrade()
    console.print("Database is up to date.")


# -- users -------------------------------------------------------------------------------


@users_app.command("add")
def users_add(
    username: str,
    role: str = typer.Option("member", help="admin, member or viewer."),
    password: str = typer.Option(
        ..., prompt=True, hide_input=True, confirmation_prompt=True, envvar="TUNEYARD_NEW_PASSWORD"
    ),
    project: str = ProjectOption,
):
    """Add a user to the project."""
    from tuneyard.auth import service
    from tuneyard.auth.schemas import UserOut

    with cli_session(project) as (session, principal):
        proj = service.get_project_by_code(session, principal.project_code)
        user = service.create_user(session, proj, username, password, role)
        print_record(UserOut.model_validate(user))


@users_app.command("list")
def users_list(project: str = ProjectOption, as_json: bool = JsonOption):
    """List the project's users."""
    from tuneyard.auth import service
    from tuneyard.auth.schemas import UserOut

    with cli_session(project) as (session, principal):
        users, _ = service.list_users(session, principal, limit=500)
        rows = [UserOut.model_validate(u) for u in users]
    print_json(rows) if as_json else print_table(rows, ["username", "role", "created_at"])


@users_app.command("rm")
def users_rm(username: str, project: str = ProjectOption):
    """Remove a user from the project."""
    from tuneyard.auth import service

    with cli_session(project) as (session, principal):
        service.delete_user(session, principal, username)
    console.print(f"Removed user {username}.")


# -- tokens ------------------------------------------------------------------------------


@tokens_app.command("create")
def tokens_create(
    name: str,
    days: int = typer.Option(None, min=1, help="Lifetime in days (default: no expiry)."),
    project: str = ProjectOption,
):
    """Create an API token for the project's admin; the secret is printed once."""
    from tuneyard.auth import service

    with cli_session(project) as (session, principal):
        token, row = service.create_token(session, principal, name, days)
        token_id = row.id
    console.print(f"Token {token_id} ({name}). Store the secret now; it is not shown again:")
    print(token)


@tokens_app.command("list")
def tokens_list(project: str = ProjectOption, as_json: bool = JsonOption):
    """List API tokens (never their secrets)."""
    from tuneyard.auth import service
    from tuneyard.auth.schemas import TokenOut

    with cli_session(project) as (session, principal):
        tokens, _ = service.list_tokens(session, principal, limit=500)
        rows = [TokenOut.model_validate(t) for t in tokens]
    if as_json:
        print_json(rows)
    else:
        print_table(rows, ["id", "name", "prefix", "created_at", "expires_at", "revoked_at"])


@tokens_app.command("revoke")
def tokens_revoke(token_id: str, project: str = ProjectOption):
    """Revoke an API token."""
    from tuneyard.auth import service

    with cli_session(project) as (session, principal):
        service.revoke_token(session, principal, token_id)
    console.print(f"Revoked token {token_id}.")


# -- jobs --------------------------------------------------------------------------------


@jobs_app.command("list")
def jobs_list(
    status: str = typer.Option(None, help="queued, running, succeeded, failed, cancelled."),
    limit: int = typer.Option(50, min=1, max=500),
    project: str = ProjectOption,
    as_json: bool = JsonOption,
):
    """List jobs, newest first."""
    from tuneyard.jobs import service
    from tuneyard.jobs.schemas import JobOut

    with cli_session(project) as (session, principal):
        jobs, total = service.list_jobs(session, principal, status, None, limit, 0)
        rows = [JobOut.model_validate(j) for j in jobs]
    if as_json:
        print_json(rows)
    else:
        print_table(rows, ["id", "kind", "status", "progress", "message", "created_at"])
        err_console.print(f"{len(rows)} of {total}")


@jobs_app.command("show")
def jobs_show(job_id: str, project: str = ProjectOption, as_json: bool = JsonOption):
    """Show one job."""
    from tuneyard.jobs import service
    from tuneyard.jobs.schemas import JobOut

    with cli_session(project) as (session, principal):
        job = JobOut.model_validate(service.get_job(session, principal, job_id))
    print_json(job) if as_json else print_record(job)


@jobs_app.command("logs")
def jobs_logs(
    job_id: str,
    tail: int = typer.Option(None, min=1, help="Only the last N bytes."),
    project: str = ProjectOption,
):
    """Print a job's log."""
    from tuneyard.jobs import service

    with cli_session(project) as (session, principal):
        text = service.read_log(service.get_job(session, principal, job_id), tail)
    print(text, end="")


@jobs_app.command("cancel")
def jobs_cancel(job_id: str, project: str = ProjectOption):
    """Cancel a queued or running job."""
    from tuneyard.jobs import service

    with cli_session(project) as (session, principal):
        job = service.cancel_job(session, principal, job_id)
        status = job.status
    console.print(f"Job {job_id}: {'cancelled' if status == 'cancelled' else 'cancel requested'}.")


_mount()

__all__ = ["app", "fail"]
