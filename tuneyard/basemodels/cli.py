"""`tuneyard base`: register, import, list, show and remove base models."""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.table import Table

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

app = typer.Typer(
    help="Base models: the HF-format models training starts from.", no_args_is_help=True
)

NoWaitOption = typer.Option(False, "--no-wait", help="Queue the job, print its id and return.")
CARD_ROWS = (
    ("architecture", "Architecture"),
    ("model_family", "Family"),
    ("parameter_count", "Parameters"),
    ("dtype", "Weights dtype"),
    ("context_length", "Context length"),
    ("vocab_size", "Vocabulary"),
    ("hidden_size", "Hidden size"),
    ("num_layers", "Layers"),
    ("license", "License"),
    ("chat_template", "Chat template"),
    ("special_tokens", "Special tokens"),
    ("disk_size_bytes", "Size on disk"),
    ("deployment_template_source", "Deployment template"),
    ("deployment_stop_tokens", "Stop tokens"),
    ("summary", "Summary"),
    ("deployment_template_note", "Note"),
)


def _out(model):
    from tuneyard.basemodels.schemas import BaseModelOut

    return BaseModelOut.model_validate(model)


def _card_value(key: str, card: dict) -> str:
    from tuneyard.basemodels.card import format_bytes, format_count

    value = card.get(key)
    if key == "parameter_count":
        return format_count(value) + (f" ({value:,})" if value else "")
    if key == "disk_size_bytes":
        return format_bytes(value)
    if key == "chat_template":
        return f"yes ({card.get('chat_template_source')})" if value else "no"
    if key == "special_tokens":
        return ", ".join(f"{role} {token}" for role, token in (value or {}).items() if token)
    if key == "deployment_stop_tokens":
        return " ".join(value or [])
    return "" if value is None else str(value)


def _show(out) -> None:
    print_record(out, skip=("model_card", "deployment_template"))
    if out.model_card:
        table = Table(title="Model card", show_header=False, box=None, title_justify="left")
        table.add_column(style="bold")
        table.add_column()
        for key, label in CARD_ROWS:
            value = _card_value(key, out.model_card)
            if value:
                table.add_row(label, value)
        console.print(table)
    if out.deployment_template:
        console.rule("Deployment template (Ollama TEMPLATE)")
        console.print(out.deployment_template, markup=False, highlight=False)


def _follow(job_id: str, no_wait: bool, model_id: str, project: str | None) -> None:
    """Run the job in the foreground with a progress bar, then show what it made."""
    if no_wait:
        console.print(f"Queued job {job_id}; follow it with `tuneyard jobs show {job_id}`.")
        return
    run_job_with_progress(job_id)
    from tuneyard.basemodels import service

    with cli_session(project) as (session, principal):
        out = _out(service.get_base_model(session, principal, model_id))
    _show(out)


@app.command("add")
def add(
    path: Path = typer.Argument(..., help="An HF-format model folder, registered where it is."),
    name: str = typer.Option(..., "--name", help="Technical name, unique in the project."),
    model_name: str = typer.Option(None, "--model-name", help="Display name (default: --name)."),
    model_type: str = typer.Option("chat", "--type", help="chat or embedding."),
    project: str = ProjectOption,
):
    """Register a local model folder in place (it is never moved or deleted)."""
    from tuneyard.basemodels import service

    with cli_session(project) as (session, principal):
        model = service.register_path(
            session, principal, name, str(path.expanduser().absolute()), model_name, model_type
        )
        out = _out(model)
    _show(out)


@app.command("import-gguf")
def import_gguf(
    file: Path = typer.Argument(..., help="A .gguf model file."),
    name: str = typer.Option(..., "--name", help="Technical name, unique in the project."),
    model_name: str = typer.Option(None, "--model-name", help="Display name (default: --name)."),
    model_type: str = typer.Option("chat", "--type", help="chat or embedding."),
    no_wait: bool = NoWaitOption,
    project: str = ProjectOption,
):
    """Import a GGUF file as a float HF folder that Tuneyard keeps and can train."""
    from tuneyard.basemodels import service

    with cli_session(project) as (session, principal):
        model, job = service.import_gguf(
            session, principal, name, str(file.expanduser().absolute()), model_name, model_type
        )
        model_id, job_id = model.id, job.id
    _follow(job_id, no_wait, model_id, project)


@app.command("add-demo")
def add_demo(no_wait: bool = NoWaitOption, project: str = ProjectOption):
    """Add SmolLM2-135M-Instruct from the demo package (about a minute)."""
    from tuneyard.basemodels import service

    with cli_session(project) as (session, principal):
        model = service.add_demo(session, principal)
        job = service.active_job(session, model)
        out = _out(model)
    if job is None:
        _show(out)
    else:
        _follow(job.id, no_wait, out.id, project)


@app.command("list")
def list_models(project: str = ProjectOption, as_json: bool = JsonOption):
    """List the project's base models, newest first."""
    from tuneyard.basemodels import service

    with cli_session(project) as (session, principal):
        models, total = service.list_base_models(session, principal, limit=500)
        rows = [_out(m) for m in models]
    if as_json:
        print_json(rows)
        return
    print_table(rows, ["id", "technical_name", "model_type", "source", "status", "created_at"])
    err_console.print(f"{len(rows)} of {total}")


@app.command("show")
def show(
    model: str = typer.Argument(..., metavar="ID_OR_NAME"),
    project: str = ProjectOption,
    as_json: bool = JsonOption,
):
    """Show a base model and its card."""
    from tuneyard.basemodels import service

    with cli_session(project) as (session, principal):
        out = _out(service.find_base_model(session, principal, model))
    print_json(out) if as_json else _show(out)


@app.command("rm")
def rm(model: str = typer.Argument(..., metavar="ID_OR_NAME"), project: str = ProjectOption):
    """Unregister a base model; a folder registered in place stays on disk."""
    from tuneyard.basemodels import service

    with cli_session(project) as (session, principal):
        row = service.find_base_model(session, principal, model)
        name, managed, path = row.technical_name, row.managed, row.path
        service.delete_base_model(session, principal, row.id)
    if managed:
        console.print(f"Removed base model {name} and its imported files.")
    else:
        console.print(f"Removed base model {name}; its folder {path} was left in place.")


@app.command("template")
def template(
    model: str = typer.Argument(..., metavar="ID_OR_NAME"),
    set_file: Path = typer.Option(
        None, "--set-file", help="Replace the deployment template with this file's text."
    ),
    project: str = ProjectOption,
):
    """Print the deployment template (Ollama TEMPLATE), or replace it from a file."""
    from tuneyard.basemodels import service

    text = None
    if set_file is not None:
        try:
            text = set_file.read_text(encoding="utf-8")
        except OSError as exc:
            fail(f"Cannot read {set_file}: {exc.strerror}.")
    with cli_session(project) as (session, principal):
        row = service.find_base_model(session, principal, model)
        if text is not None:
            service.update_base_model(session, principal, row.id, deployment_template=text)
        out = _out(row)
    if text is not None:
        console.print(f"Updated the deployment template of {out.technical_name}.")
        return
    current = out.deployment_template or ""
    sys.stdout.write(current if current.endswith("\n") else current + "\n")
