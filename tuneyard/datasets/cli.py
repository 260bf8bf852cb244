"""`tuneyard data`: add, list, show, preview and remove datasets."""

from __future__ import annotations

from pathlib import Path

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
    run_job_with_progress,
)

app = typer.Typer(help="Datasets: upload, inspect, remove.", no_args_is_help=True)


def _column_mapping(pairs: list[str]) -> dict[str, str]:
    mapping = {}
    for pair in pairs:
        source, sep, target = pair.partition("=")
        if not sep or not source or not target:
            fail(f"--map takes SOURCE=FIELD, e.g. --map question=prompt; got '{pair}'.")
        mapping[source] = target
    return mapping


def _print_errors(errors: list[str]) -> None:
    for error in errors:
        err_console.print(f"  {error}", highlight=False, markup=False, soft_wrap=True)


@app.command("add")
def add(
    file: Path = typer.Argument(
        ..., exists=True, dir_okay=False, readable=True, help=".jsonl, .json, .csv or .parquet"
    ),
    name: str = typer.Option(..., "--name", "-n", help="Unique in the project."),
    description: str = typer.Option("", "--description", "-d"),
    mapping: list[str] = typer.Option(
        [], "--map", help="Rename a field to a canonical one: --map question=prompt (repeat)."
    ),
    no_wait: bool = typer.Option(False, "--no-wait", help="Queue the parse and return."),
    project: str = ProjectOption,
):
    """Upload a dataset file and parse it (with a progress bar unless --no-wait)."""
    from tuneyard.datasets import service
    from tuneyard.datasets.schemas import DatasetOut

    column_mapping = _column_mapping(mapping)
    with cli_session(project) as (session, principal), file.open("rb") as content:
        dataset, job = service.create_dataset(
            session,
            principal,
            name=name,
            filename=file.name,
            content=content,
            description=description,
            column_mapping=column_mapping,
        )
        dataset_id, job_id = dataset.id, job.id
    if no_wait:
        console.print(f"Dataset {dataset_id} is being parsed by job {job_id}.")
        return
    try:
        run_job_with_progress(job_id)
    except typer.Exit:
        with cli_session(project) as (session, principal):
            errors = list(service.get_dataset(session, principal, dataset_id).errors)
        _print_errors(errors)
        raise
    with cli_session(project) as (session, principal):
        shown = DatasetOut.model_validate(service.get_dataset(session, principal, dataset_id))
    print_record(shown, skip=("errors",))


@app.command("list")
def list_(
    limit: int = typer.Option(50, min=1, max=500),
    project: str = ProjectOption,
    as_json: bool = JsonOption,
):
    """List datasets, newest first."""
    from tuneyard.datasets import service
    from tuneyard.datasets.schemas import DatasetOut

    with cli_session(project) as (session, principal):
        datasets, total = service.list_datasets(session, principal, limit, 0)
        rows = [DatasetOut.model_validate(d) for d in datasets]
    if as_json:
        print_json(rows)
    else:
        print_table(rows, ["id", "name", "status", "format", "record_count", "created_at"])
        err_console.print(f"{len(rows)} of {total}")


@app.command("show")
def show(id_or_name: str, project: str = ProjectOption, as_json: bool = JsonOption):
    """Show a dataset (by id or name), with the errors of a failed parse."""
    from tuneyard.datasets import service
    from tuneyard.datasets.schemas import DatasetOut

    with cli_session(project) as (session, principal):
        shown = DatasetOut.model_validate(service.find_dataset(session, principal, id_or_name))
    if as_json:
        print_json(shown)
        return
    print_record(shown, skip=("errors",))
    if shown.errors:
        err_console.print("Errors:")
        _print_errors(shown.errors)


@app.command("preview")
def preview(
    id_or_name: str,
    limit: int = typer.Option(10, min=1, max=500),
    offset: int = typer.Option(0, min=0),
    project: str = ProjectOption,
    as_json: bool = JsonOption,
):
    """Show some of a dataset's records."""
    from tuneyard.datasets import service
    from tuneyard.datasets.schemas import DatasetRecord

    with cli_session(project) as (session, principal):
        dataset = service.find_dataset(session, principal, id_or_name)
        records, total = service.preview(session, principal, dataset.id, limit, offset)
        fields = list(dataset.fields)
    if as_json:
        print_json({"items": records, "total": total})
        return
    print_table([DatasetRecord(record) for record in records], fields)
    err_console.print(f"Records {offset + 1}-{offset + len(records)} of {total}")


@app.command("rm")
def rm(id_or_name: str, project: str = ProjectOption):
    """Delete a dataset and its files."""
    from tuneyard.datasets import service

    with cli_session(project) as (session, principal):
        dataset = service.find_dataset(session, principal, id_or_name)
        name = dataset.name
        service.delete_dataset(session, principal, dataset.id)
    console.print(f"Removed dataset '{name}'.")
