"""`tuneyard data`: upload, list, show, preview and remove datasets."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from tuneyard.terminal import (
    JsonOption,
    api,
    console,
    err_console,
    fail,
    find_by_name,
    follow_job,
    print_json,
    print_record,
    print_table,
)

app = typer.Typer(help="Datasets: upload, inspect, remove.", no_args_is_help=True)


def find(client, ref: str) -> dict:
    """A dataset by id or name."""
    return find_by_name(client, "/datasets", ref, "name")


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
):
    """Upload a dataset file to the server and parse it (with a progress bar unless
    --no-wait)."""
    column_mapping = _column_mapping(mapping)
    form = {"name": name, "description": description}
    if column_mapping:
        form["column_mapping"] = json.dumps(column_mapping)
    with api() as client:
        with file.open("rb") as content:
            accepted = client.post("/datasets", data=form, files={"file": (file.name, content)})
        dataset_id, job_id = accepted["id"], accepted["job_id"]
        if no_wait:
            console.print(f"Dataset {dataset_id} is being parsed by job {job_id}.")
            return
        try:
            follow_job(client, job_id)
        except typer.Exit:
            _print_errors(client.get(f"/datasets/{dataset_id}")["errors"])
            raise
        shown = client.get(f"/datasets/{dataset_id}")
    print_record(shown, skip=("errors",))


@app.command("list")
def list_(limit: int = typer.Option(50, min=1, max=500), as_json: bool = JsonOption):
    """List datasets, newest first."""
    with api() as client:
        rows, total = client.items("/datasets", limit=limit)
    if as_json:
        print_json(rows)
    else:
        print_table(rows, ["id", "name", "status", "format", "record_count", "created_at"])
        err_console.print(f"{len(rows)} of {total}")


@app.command("show")
def show(id_or_name: str, as_json: bool = JsonOption):
    """Show a dataset (by id or name), with the errors of a failed parse."""
    with api() as client:
        shown = find(client, id_or_name)
    if as_json:
        print_json(shown)
        return
    print_record(shown, skip=("errors",))
    if shown["errors"]:
        err_console.print("Errors:")
        _print_errors(shown["errors"])


@app.command("preview")
def preview(
    id_or_name: str,
    limit: int = typer.Option(10, min=1, max=500),
    offset: int = typer.Option(0, min=0),
    as_json: bool = JsonOption,
):
    """Show some of a dataset's records."""
    with api() as client:
        dataset = find(client, id_or_name)
        records, total = client.items(
            f"/datasets/{dataset['id']}/preview", limit=limit, offset=offset
        )
    if as_json:
        print_json({"items": records, "total": total})
        return
    print_table(records, dataset["fields"])
    err_console.print(f"Records {offset + 1}-{offset + len(records)} of {total}")


@app.command("rm")
def rm(id_or_name: str):
    """Delete a dataset and its files."""
    with api() as client:
        dataset = find(client, id_or_name)
        client.delete(f"/datasets/{dataset['id']}")
    console.print(f"Removed dataset '{dataset['name']}'.")
