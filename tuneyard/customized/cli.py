"""`tuneyard customized`: the adapters trainings produced."""

from __future__ import annotations

import typer

from tuneyard.terminal import JsonOption, api, console, print_json, print_record, print_table

app = typer.Typer(help="Customized models: adapters tied to their base.", no_args_is_help=True)


def _url(model: str) -> str:
    from tuneyard.client import path_part

    return f"/customized-models/{path_part(model)}"


@app.command("list")
def list_(as_json: bool = JsonOption):
    """List customized models."""
    with api() as client:
        rows = client.every("/customized-models")
    if as_json:
        print_json(rows)
    else:
        print_table(rows, ["id", "name", "base_model_name", "method", "final_loss", "created_at"])


@app.command("show")
def show(model: str, as_json: bool = JsonOption):
    """Show a customized model and its card (by name or id)."""
    with api() as client:
        out = client.get(_url(model))
    print_json(out) if as_json else print_record(out)


@app.command("rm")
def rm(model: str):
    """Delete a customized model's adapter; complete models saved from it stay."""
    with api() as client:
        client.delete(_url(model))
    console.print(f"Deleted customized model {model}.")
