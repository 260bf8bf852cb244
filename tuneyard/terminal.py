"""How the CLI talks to a person: the server it speaks to (or, for the server's own commands,
the data dir), tables or JSON, errors, and job progress bars."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, NoReturn

import typer
from pydantic import BaseModel
from rich.console import Console
from rich.measure import Measurement
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from tuneyard.client import ApiError, Client

console = Console()
err_console = Console(stderr=True)

ProjectOption = typer.Option(
    None, "--project", "-p", envvar="TUNEYARD_PROJECT", help="Project code (default 1001)."
)
JsonOption = typer.Option(False, "--json", help="Print JSON instead of a table.")
FINISHED = ("succeeded", "failed", "cancelled")
POLL_SECONDS = 0.5
# Columns that name or point at something: shown whole, never wrapped or cut.
WHOLE_COLUMNS = {"id", "name", "prefix", "username", "model_id", "technical_name"}


def fail(message: str, code: int = 1) -> NoReturn:
    err_console.print(f"[bold red]Error:[/] {message}", highlight=False)
    raise typer.Exit(code)


@contextmanager
def api() -> Iterator[Client]:
    """The server you are logged in to; its errors become a message and exit code 1."""
    from tuneyard.client import connect

    try:
        with connect() as client:
            yield client
    except ApiError as exc:
        fail(exc.message)


@contextmanager
def local_session(project: str | None = None, migrate: bool = False) -> Iterator[tuple[Any, Any]]:
    """For the server's own commands: a unit of work on its database, as the project's first
    admin with the operator's trust. The data dir must exist (`tuneyard init` makes one);
    `migrate` brings a shared database's schema up to date (db.ensure_schema)."""
    from tuneyard.api import prepare
    from tuneyard.auth.service import local_principal
    from tuneyard.db import session_scope
    from tuneyard.errors import AppError

    require_data_dir()
    try:
        prepare(announce=lambda text: err_console.print(text), migrate=migrate)
        with session_scope() as session:
            yield session, local_principal(session, project)
    except AppError as exc:
        fail(exc.message)


def require_data_dir() -> None:
    """Refuse to run on a data dir that is not there, rather than start an empty one."""
    from tuneyard.config import get_settings

    data_dir = get_settings().data_dir
    if not data_dir.is_dir():
        fail(
            f"No data dir at {data_dir}. Run this on the server's machine, in the folder it "
            "runs in or with TUNEYARD_DATA_DIR set; `tuneyard init` creates a new one."
        )


# -- output ------------------------------------------------------------------------------


def to_plain(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, list):
        return [to_plain(v) for v in value]
    return value


def print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(to_plain(value), indent=2, default=str) + "\n")


def print_table(rows: Sequence[Any], columns: Sequence[str]) -> None:
    """Rows as a table on a terminal wide enough to show every value whole; else (a pipe, a
    narrow window) as tab-separated lines with a header, still whole."""
    cells = [[_cell(to_plain(row).get(c)) for c in columns] for row in rows]
    if console.is_terminal:
        table = Table()
        for column in columns:
            whole = column in WHOLE_COLUMNS or column.endswith(("_id", "_name", "url"))
            table.add_column(column, no_wrap=whole, overflow="fold")
        for row in cells:
            table.add_row(*(Text(cell) for cell in row))  # values, never rich markup
        unbounded = console.options.update(max_width=sys.maxsize)
        if Measurement.get(console, unbounded, table).minimum <= console.width:
            console.print(table)
            return
    lines = ["\t".join(columns), *("\t".join(_one_line(c) for c in row) for row in cells)]
    sys.stdout.write("\n".join(lines) + "\n")


def print_record(record: Any, skip: Sequence[str] = ()) -> None:
    """One object, a field a line; long values wrap on a terminal and are whole in a pipe."""
    data = to_plain(record)
    shown = [(key, _cell(value)) for key, value in data.items() if key not in skip]
    if console.is_terminal:
        table = Table(show_header=False, box=None)
        table.add_column(style="bold", no_wrap=True)
        table.add_column(overflow="fold")
        for key, value in shown:
            table.add_row(key, Text(value))
        console.print(table)
        return
    width = max((len(key) for key, _ in shown), default=0)
    sys.stdout.write("".join(f"{key:<{width}}  {_one_line(value)}\n" for key, value in shown))


def _cell(value: Any) -> str:
    if value is None:
        return ""
    return json.dumps(value, default=str) if isinstance(value, dict | list) else str(value)


def _one_line(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")


# -- jobs --------------------------------------------------------------------------------


def _progress_bar() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=False,
    )


def follow_job(client: Client, job_id: str) -> dict[str, Any]:
    """Follow a job the server runs, with a progress bar, until it ends; Ctrl-C asks the
    server to cancel it (and a second Ctrl-C leaves it to the server). Exits 1 unless it
    succeeded."""
    from tuneyard.client import path_part

    url = f"/jobs/{path_part(job_id)}"
    with _progress_bar() as bar:
        task = bar.add_task("queued", total=100)

        def poll() -> dict[str, Any]:
            while True:
                job = client.get(url)
                waiting = job["status"] == "queued" and not job["message"]
                message = "queued: waiting for the server's worker" if waiting else job["message"]
                bar.update(task, completed=job["progress"], description=message or job["status"])
                if job["status"] in FINISHED:
                    return job
                time.sleep(POLL_SECONDS)

        try:
            job = poll()
        except KeyboardInterrupt:
            err_console.print("Cancelling… (Ctrl-C again stops following; the job goes on)")
            try:
                client.post(f"{url}/cancel")
            except ApiError as exc:
                if exc.status != 409:  # finished meanwhile: its status says how
                    raise
            try:
                job = poll()
            except KeyboardInterrupt:
                fail(f"Stopped following job {job_id}; `tuneyard jobs show {job_id}` shows it.")
    if job["status"] != "succeeded":
        fail(f"Job {job_id} {job['status']}: {job['error'] or job['message']}")
    return job


def run_job_here(job_id: str, project: str | None = None) -> None:
    """Run a job in this process with a progress bar (the server's own commands, before any
    server runs); Ctrl-C cancels it. Exits 1 unless it succeeded."""
    from tuneyard.auth.service import local_principal
    from tuneyard.db import session_scope
    from tuneyard.errors import Conflict
    from tuneyard.jobs import service
    from tuneyard.jobs.engines import new_executor

    executor = new_executor()
    with _progress_bar() as bar:
        task = bar.add_task("queued", total=100)

        def on_poll(job) -> None:
            bar.update(task, completed=job.progress, description=job.message or job.status)

        try:
            job = executor.run_until_finished(job_id, on_poll)
        except KeyboardInterrupt:
            err_console.print("Cancelling…")
            try:
                with session_scope() as session:
                    service.cancel_job(session, local_principal(session, project), job_id)
            except Conflict:
                pass  # it finished meanwhile
            job = executor.run_until_finished(job_id, on_poll)
    if job.status != "succeeded":
        fail(f"Job {job.id} {job.status}: {job.error or job.message}")


def find_by_name(client: Client, path: str, ref: str, name_field: str) -> dict[str, Any]:
    """An object by id (GET PATH/REF), else by its name among the list at PATH; the server's
    "not found" when neither matches."""
    from tuneyard.client import path_part

    try:
        return client.get(f"{path}/{path_part(ref)}")
    except ApiError as exc:
        if exc.status != 404:
            raise
        missing = exc
    for item in client.every(path):
        if item.get(name_field) == ref:
            return item
    raise missing
