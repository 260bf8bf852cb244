"""`tuneyard customized`: the adapters trainings produced."""

from __future__ import annotations

import typer

from tuneyard.terminal import (
    JsonOption,
    ProjectOption,
    cli_session,
    console,
    print_json,
    print_record,
    print_table,
)

app = typer.Typer(help="Customized models: adapters tied to their base.", no_args_is_help=True)


@app.command("list")
def list_(project: str = ProjectOption, as_json: bool = JsonOption):
    """List customized models."""
    from tuneyard.customized import service
    from tuneyard.customized.schemas import CustomizedModelSummary

    with cli_session(project) as (session, principal):
        rows, _ = service.list_customized(session, principal, limit=500)
        out = [CustomizedModelSummary.model_validate(service.summary(r)) for r in rows]
    if as_json:
        print_json(out)
    else:
        print_table(out, ["id", "name", "base_model_name", "method", "final_loss", "created_at"])


@app.command("show")
def show(model: str, project: str = ProjectOption, as_json: bool = JsonOption):
    """Show a customized model and its card (by name or id)."""
    from tuneyard.customized import service
    from tuneyard.customized.schemas import CustomizedModelOut

    with cli_session(project) as (session, principal):
        out = CustomizedModelOut.model_validate(service.get_customized(session, principal, model))
    print_json(out) if as_json else print_record(out)


@app.command("rm")
def rm(model: str, project: str = ProjectOption):
    """Delete a customized model's adapter; complete models saved from it stay."""
    from tuneyard.customized import service

    with cli_session(project) as (session, principal):
        service.delete_customized(session, principal, model)
    console.print(f"Deleted customized model {model}.")
