"""How the CLI talks to a person: its session, tables or JSON, errors, and job progress bars."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import typer
from pydantic import BaseModel
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from sqlalchemy.orm import Session

from tuneyard.errors import AppError

console = Console()
err_console = Console(stderr=True)

ProjectOption = typer.Option(
    None, "--project", "-p", envvar="TUNEYARD_PROJECT", help="Project code (default 1001)."
)
JsonOption = typer.Option(False, "--json", help="Print JSON instead of a table.")


@contextmanager
def cli_session(project: str | None = None) -> Iterator[tuple[Session, Any]]:
    """A unit of work and the CLI's principal; AppErrors become a message and exit code 1."""
    from tuneyard.api import prepare
    from tuneyard.auth.service import local_principal
    from tuneyard.db import session_scope

    try:
        prepare(announce=lambda text: err_console.print(text))
        with session_scope() as session:
            yield session, local_principal(session, project)
    except AppError as exc:
        fail(exc.message)


def fail(message: str, code: int = 1):
    err_console.print(f"[bold red]Error:[/] {message}", highlight=False)
    raise typer.Exit(code)


def to_plain(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, list):
        return [to_plain(v) for v in value]
    return value


def print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(to_plain(value), indent=2, default=str) + "\n")


def print_table(rows: Sequence[BaseModel], columns: Sequence[str], title: str | None = None):
    table = Table(title=title)
    for column in columns:
        table.add_column(column)
    for row in rows:
        data = row.model_dump(mode="json")
        table.add_row(*(_cell(data.get(c)) for c in columns))
    console.print(table)


def print_record(record: BaseModel, skip: Sequence[str] = ()) -> None:
    table = Table(show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column()
    for key, value in record.model_dump(mode="json").items():
        if key not in skip:
            table.add_row(key, _cell(value, width=None))
    console.print(table)


def _cell(value: Any, width: int | None = 60) -> str:
    if value is None:
        return ""
    text = json.dumps(value, default=str) if isinstance(value, dict | list) else str(value)
    if width is not None and len(text) > width:
        return text[: width - 1] + "…"
    return text


def run_job_with_progress(job_id: str, describe: Callable[[Any], str] | None = None):
    """Run (or follow) a job in the foreground with a progress bar; Ctrl-C cancels it."""
    from tuneyard.db import session_scope
    from tuneyard.jobs.executor import Executor
    from tuneyard.models import Job

    executor = Executor()
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=False,
    ) as bar:
        task = bar.add_task("queued", total=100)

        def on_poll(job):
            bar.update(task, completed=job.progress, description=job.message or job.status)

        try:
            job = executor.run_until_finished(job_id, on_poll)
        except KeyboardInterrupt:
            with session_scope() as session:
                row = session.get(Job, job_id)
                if row.status in ("queued", "running"):
                    row.cancel_requested = True
            err_console.print("Cancelling…")
            job = executor.run_until_finished(job_id, on_poll)
    if job.status != "succeeded":
        fail(f"Job {job.id} {job.status}: {job.error or job.message}")
    return job
