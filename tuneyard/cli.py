"""The `tuneyard` command, for a person at a terminal: a client of a Tuneyard server's REST
API (log in once with `tuneyard login URL`), and the commands that run the server itself on
its machine (`init`, `serve`, `worker`, `db`, `users operator`)."""

from __future__ import annotations

import typer

from tuneyard.terminal import (
    JsonOption,
    ProjectOption,
    api,
    console,
    err_console,
    fail,
    local_session,
    print_json,
    print_record,
    print_table,
    require_data_dir,
)

app = typer.Typer(
    help="Tuneyard: base models and datasets in, fine-tuned models out.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(help="The database (on the server's machine).", no_args_is_help=True)
users_app = typer.Typer(help="Users of your project (admin).", no_args_is_help=True)
tokens_app = typer.Typer(help="API tokens for scripts and the REST API.", no_args_is_help=True)
jobs_app = typer.Typer(help="Background jobs: list, follow, cancel.", no_args_is_help=True)

NewPassword = typer.Option(
    ...,
    prompt="New password",
    hide_input=True,
    confirmation_prompt=True,
    envvar="TUNEYARD_NEW_PASSWORD",
)


def _mount() -> None:
    from tuneyard.assessment.cli import app as assess_app
    from tuneyard.basemodels.cli import app as base_app
    from tuneyard.chat.cli import chat as chat_command
    from tuneyard.complete.cli import app as complete_app
    from tuneyard.complete.cli import save as save_command
    from tuneyard.customized.cli import app as customized_app
    from tuneyard.datasets.cli import app as data_app
    from tuneyard.deploy.cli import deploy as deploy_command
    from tuneyard.deploy.cli import env_app, live_app
    from tuneyard.images.cli import app as image_app
    from tuneyard.knowledge.cli import app as kb_app
    from tuneyard.thirdparty.cli import app as thirdparty_app
    from tuneyard.training.cli import app as train_app

    app.add_typer(db_app, name="db")
    app.add_typer(base_app, name="base")
    app.add_typer(data_app, name="data")
    app.add_typer(train_app, name="train")
    app.add_typer(customized_app, name="customized")
    app.command("save")(save_command)
    app.add_typer(complete_app, name="complete")
    app.add_typer(env_app, name="env")
    app.command("deploy")(deploy_command)
    app.add_typer(live_app, name="live")
    app.command("chat")(chat_command)
    app.add_typer(thirdparty_app, name="thirdparty")
    app.add_typer(assess_app, name="assess")
    app.add_typer(kb_app, name="kb")
    app.add_typer(image_app, name="image")
    app.add_typer(jobs_app, name="jobs")
    app.add_typer(users_app, name="users")
    app.add_typer(tokens_app, name="tokens")


# -- logging in --------------------------------------------------------------------------


@app.command()
def login(
    url: str = typer.Argument(..., help="The server, e.g. http://127.0.0.1:8000."),
    project: str = typer.Option(None, "--project", "-p", help="Project code (asked if left out)."),
    username: str = typer.Option(None, "--username", "-u", help="Asked if left out."),
    password: str = typer.Option(
        None, "--password", envvar="TUNEYARD_PASSWORD", help="Asked (hidden) if left out."
    ),
    token: str = typer.Option(
        None, "--token", help="An API token (`tuneyard tokens create`) instead of a password."
    ),
):
    """Log in to a Tuneyard server; the commands after it talk to that server.

    The server and token are kept, readable by you alone, in
    $XDG_CONFIG_HOME/tuneyard/credentials.json (~/.config/tuneyard/credentials.json);
    TUNEYARD_URL and TUNEYARD_TOKEN, when set, are used instead.
    """
    from tuneyard.client import ApiError, Client, Credentials, server_url, store

    try:
        url = server_url(url)
        if token is None:
            project = project or typer.prompt("Project code", default="1001")
            username = username or typer.prompt("Username")
            password = password or typer.prompt("Password", hide_input=True)
            with Client(url) as anonymous:
                token = anonymous.post(
                    "/auth/login",
                    {"project_code": project, "username": username, "password": password},
                )["token"]
        with Client(url, token) as client:
            me = client.get("/auth/me")
    except ApiError as exc:
        fail(exc.message)
    path = store(Credentials(url, token))
    console.print(
        f"Logged in to {url} as {me['username']} ({me['role']} of project "
        f"{me['project_code']}); the token is kept in {path}.",
        soft_wrap=True,
    )


@app.command()
def logout():
    """Forget the server and token `tuneyard login` kept.

    A login token stays valid until it expires; revoke an API token with
    `tuneyard tokens revoke`.
    """
    from tuneyard.client import forget

    path = forget()
    console.print(f"Logged out; removed {path}." if path else "Not logged in.", soft_wrap=True)


# -- the server's own commands -----------------------------------------------------------


@app.command()
def init(
    demo: bool = typer.Option(
        False, "--demo", help="Add the demo base model SmolLM2-135M-Instruct (about a minute)."
    ),
    no_wait: bool = typer.Option(
        False, "--no-wait", help="Queue the demo import for the server to run, and return."
    ),
    project: str = ProjectOption,
):
    """Create a server's data dir, database and first admin (on the server's machine).

    The data dir is TUNEYARD_DATA_DIR, by default ./tuneyard-data; an existing one is
    brought up to date.
    """
    from tuneyard.config import get_settings
    from tuneyard.storage import Layout

    settings = get_settings()
    existed = settings.data_dir.is_dir()
    Layout(settings).ensure_root()
    with local_session(project, migrate=True) as (session, principal):
        model_id = _queue_demo(session, principal) if demo else None
    if existed:
        console.print(f"The data dir {settings.data_dir} is up to date.", soft_wrap=True)
    else:
        console.print(f"Created the data dir {settings.data_dir}.", soft_wrap=True)
    if model_id is not None:
        _finish_demo(model_id, no_wait, project)
    console.print(
        "Start the server with `tuneyard serve`, then log in with "
        f"`tuneyard login http://{settings.host}:{settings.port}`.",
        soft_wrap=True,
    )


def _queue_demo(session, principal) -> str:
    from tuneyard.basemodels import service

    return service.add_demo(session, principal).id


def _finish_demo(model_id: str, no_wait: bool, project: str | None) -> None:
    from tuneyard.basemodels import service
    from tuneyard.models import BaseModel
    from tuneyard.terminal import run_job_here

    with local_session(project) as (session, _principal):
        model = session.get(BaseModel, model_id)
        job = service.active_job(session, model)
        name, status, job_id = model.technical_name, model.status, job.id if job else None
    if job_id is None:
        console.print(f"Base model {name} is {status}.")
        return
    if no_wait:
        console.print(f"Queued job {job_id}: the server imports {name} when it starts.")
        return
    run_job_here(job_id, project)
    console.print(f"Base model {name} is ready.")


MigrateOption = typer.Option(
    False,
    "--migrate",
    help="Migrate a PostgreSQL database whose schema is behind this Tuneyard (SQLite is "
    "always migrated). Without it, a team runs `tuneyard db upgrade` once.",
)


def _prepare_or_fail(migrate: bool) -> None:
    from tuneyard.api import prepare
    from tuneyard.errors import AppError

    try:
        prepare(migrate=migrate)
    except AppError as exc:
        fail(exc.message)


@app.command()
def serve(
    host: str = typer.Option(None, help="Address to bind (default from TUNEYARD_HOST)."),
    port: int = typer.Option(None, help="Port (default from TUNEYARD_PORT, 8000)."),
    worker: bool = typer.Option(True, help="Run a job worker in the same process."),
    migrate: bool = MigrateOption,
):
    """Start the web console, the API (and a job worker) on HOST:PORT.

    Without TUNEYARD_DATA_DIR, a first start makes ./tuneyard-data; a data dir that is set
    must exist (`tuneyard init` makes one).
    """
    import uvicorn

    from tuneyard.api import create_app
    from tuneyard.config import get_settings
    from tuneyard.storage import Layout

    settings = get_settings()
    if "data_dir" in settings.model_fields_set:
        require_data_dir()
    elif not settings.data_dir.is_dir():
        Layout(settings).ensure_root()
        console.print(f"Created the data dir {settings.data_dir}.", soft_wrap=True)
    _prepare_or_fail(migrate)
    host = host or settings.host
    port = port or settings.port
    console.print(
        f"Tuneyard console on http://{host}:{port}/console  (API at /api/v1, docs at /docs, "
        f"mode {settings.mode}); log in from a terminal with `tuneyard login http://{host}:{port}`",
        soft_wrap=True,
    )
    application = create_app(run_worker=worker, console=True)
    # On SIGTERM uvicorn stops listening, lets requests in flight finish (up to the grace),
    # then the app's shutdown hands its worker's jobs over (Executor.drain).
    uvicorn.run(
        application,
        host=host,
        port=port,
        log_level="info",
        timeout_graceful_shutdown=settings.server_stop_grace_seconds,
    )


@app.command()
def worker(
    concurrency: int = typer.Option(None, min=1, help="Jobs at once (default from settings)."),
    migrate: bool = MigrateOption,
):
    """Run a job worker alone, beside a `tuneyard serve --no-worker`.

    It may run on another machine that shares the database and data dir. SIGTERM (or Ctrl-C)
    stops it gracefully: it claims nothing more, its trainings stop at a checkpoint and go back
    to the queue for another worker, and it exits within TUNEYARD_WORKER_STOP_GRACE_SECONDS.
    """
    import signal
    import threading

    from tuneyard.deploy.supervisor import Supervisor
    from tuneyard.errors import AppError
    from tuneyard.jobs.engines import new_executor

    require_data_dir()
    _prepare_or_fail(migrate)
    try:
        executor = new_executor(concurrency=concurrency)
    except AppError as exc:
        fail(exc.message)
    executor.sweep()
    Supervisor().start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    console.print(f"Worker running {executor.concurrency} job(s) at a time; Ctrl-C stops it.")
    try:
        while not stop.is_set():
            executor.tick()
            stop.wait(0.5)
    except KeyboardInterrupt:
        pass
    except BaseException:
        executor.stop()  # no longer counted as a live worker
        raise
    console.print(
        f"Stopping: handing {len(executor.running)} running job(s) over to other workers "
        f"(at most {executor.settings.worker_stop_grace_seconds:.0f} s)."
    )
    try:
        executor.drain()
    except KeyboardInterrupt:
        executor.stop()  # a second Ctrl-C: leave the jobs to the usual handling


@db_app.command("upgrade")
def db_upgrade():
    """Apply database migrations (once, before a team's servers and workers start)."""
    from tuneyard.db import upgrade
    from tuneyard.errors import AppError

    require_data_dir()
    try:
        upgrade()
    except AppError as exc:
        fail(exc.message)
    console.print("Database is up to date.")


@db_app.command("check")
def db_check():
    """Fail if the tables in the code differ from what the migrations build."""
    from alembic.util.exc import AutogenerateDiffsDetected

    from tuneyard.db import check

    require_data_dir()
    try:
        check()
    except AutogenerateDiffsDetected as exc:
        fail(f"The migrations are behind the models: {exc}. Add a new migration.")
    console.print("Migrations match the models.")


@users_app.command("operator")
def users_operator(
    username: str,
    revoke: bool = typer.Option(False, "--revoke", help="Stop the user being an operator."),
    project: str = ProjectOption,
):
    """Make a user the server's operator, or --revoke it (on the server's machine).

    The operator, and only the operator, uploads code the server runs (custom training
    methods, GRPO reward files), when TUNEYARD_ALLOW_CODE_UPLOADS is on.
    """
    from tuneyard.auth import service

    with local_session(project) as (session, principal):
        service.set_operator(session, principal, username, not revoke)
        code = principal.project_code
    state = "is no longer an operator" if revoke else "is now the server's operator"
    console.print(f"{username} (project {code}) {state}.")


@users_app.command("recover")
def users_recover(username: str, password: str = NewPassword, project: str = ProjectOption):
    """Set a user's password without logging in (on the server's machine).

    For a lost password of the only admin; the user's sessions end.
    """
    from tuneyard.auth import service

    with local_session(project) as (session, principal):
        service.reset_password(session, principal, username, password)
        code = principal.project_code
    console.print(f"Changed the password of {username} (project {code}); their sessions ended.")


# -- users -------------------------------------------------------------------------------


@users_app.command("add")
def users_add(
    username: str,
    role: str = typer.Option("member", help="admin, member or viewer."),
    password: str = typer.Option(
        ..., prompt=True, hide_input=True, confirmation_prompt=True, envvar="TUNEYARD_NEW_PASSWORD"
    ),
):
    """Add a user to your project."""
    with api() as client:
        user = client.post("/users", {"username": username, "password": password, "role": role})
    print_record(user)


@users_app.command("list")
def users_list(as_json: bool = JsonOption):
    """List your project's users."""
    with api() as client:
        users = client.every("/users")
    columns = ["username", "role", "operator", "created_at"]
    print_json(users) if as_json else print_table(users, columns)


@users_app.command("passwd")
def users_passwd(username: str, password: str = NewPassword):
    """Set a user's password; their sessions end.

    A lost admin password is set with `tuneyard users recover` on the server's machine.
    """
    from tuneyard.client import path_part

    with api() as client:
        client.post(f"/users/{path_part(username)}/password", {"new_password": password})
    console.print(f"Changed the password of {username}; their sessions have ended.")


@users_app.command("rm")
def users_rm(username: str):
    """Remove a user from your project."""
    from tuneyard.client import path_part

    with api() as client:
        client.delete(f"/users/{path_part(username)}")
    console.print(f"Removed user {username}.")


# -- tokens ------------------------------------------------------------------------------


@tokens_app.command("create")
def tokens_create(
    name: str,
    days: int = typer.Option(None, min=1, help="Lifetime in days (default: no expiry)."),
):
    """Create an API token that acts as you; the secret is printed once."""
    with api() as client:
        created = client.post("/tokens", {"name": name, "days": days})
    console.print(f"Token {created['id']} ({name}). Store the secret now; it is not shown again:")
    print(created["token"])


@tokens_app.command("list")
def tokens_list(as_json: bool = JsonOption):
    """List API tokens (never their secrets)."""
    with api() as client:
        tokens = client.every("/tokens")
    if as_json:
        print_json(tokens)
    else:
        print_table(tokens, ["id", "name", "prefix", "created_at", "expires_at", "revoked_at"])


@tokens_app.command("revoke")
def tokens_revoke(token_id: str):
    """Revoke an API token."""
    from tuneyard.client import path_part

    with api() as client:
        client.delete(f"/tokens/{path_part(token_id)}")
    console.print(f"Revoked token {token_id}.")


# -- jobs --------------------------------------------------------------------------------


@jobs_app.command("list")
def jobs_list(
    status: str = typer.Option(None, help="queued, running, succeeded, failed, cancelled."),
    limit: int = typer.Option(50, min=1, max=500),
    as_json: bool = JsonOption,
):
    """List jobs, newest first."""
    with api() as client:
        jobs, total = client.items("/jobs", status=status, limit=limit)
    if as_json:
        print_json(jobs)
    else:
        print_table(jobs, ["id", "kind", "status", "progress", "message", "created_at"])
        err_console.print(f"{len(jobs)} of {total}")


@jobs_app.command("show")
def jobs_show(job_id: str, as_json: bool = JsonOption):
    """Show one job."""
    from tuneyard.client import path_part

    with api() as client:
        job = client.get(f"/jobs/{path_part(job_id)}")
    print_json(job) if as_json else print_record(job)


@jobs_app.command("logs")
def jobs_logs(
    job_id: str,
    tail: int = typer.Option(None, min=1, help="Only the last N bytes."),
):
    """Print a job's log."""
    from tuneyard.client import path_part

    with api() as client:
        text = client.request("GET", f"/jobs/{path_part(job_id)}/logs", params=_tail(tail)).text
    print(text, end="")


def _tail(tail: int | None) -> dict[str, int]:
    return {"tail": tail} if tail is not None else {}


@jobs_app.command("follow")
def jobs_follow(job_id: str):
    """Follow a job with a progress bar until it ends; Ctrl-C cancels it."""
    from tuneyard.terminal import follow_job

    with api() as client:
        job = follow_job(client, job_id)
    console.print(f"Job {job_id} {job['status']}: {job['message']}", soft_wrap=True)


@jobs_app.command("cancel")
def jobs_cancel(job_id: str):
    """Cancel a queued or running job."""
    from tuneyard.client import path_part

    with api() as client:
        job = client.post(f"/jobs/{path_part(job_id)}/cancel")
    state = "cancelled" if job["status"] == "cancelled" else "cancel requested"
    console.print(f"Job {job_id}: {state}.")


_mount()

__all__ = ["app", "fail"]
