"""`tuneyard base`: register, import, list, show and remove base models on the server."""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.table import Table

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


def find(client, ref: str) -> dict:
    """A base model by id or technical name."""
    return find_by_name(client, "/base-models", ref, "technical_name")


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


def _show(out: dict) -> None:
    print_record(out, skip=("model_card", "deployment_template"))
    if out["model_card"]:
        table = Table(title="Model card", show_header=False, box=None, title_justify="left")
        table.add_column(style="bold", no_wrap=True)
        table.add_column(overflow="fold")
        for key, label in CARD_ROWS:
            value = _card_value(key, out["model_card"])
            if value:
                table.add_row(label, value)
        console.print(table)
    if out["deployment_template"]:
        console.rule("Deployment template (Ollama TEMPLATE)")
        console.print(out["deployment_template"], markup=False, highlight=False)


def _create(body: dict, no_wait: bool) -> None:
    """Register or import; follow an import's job with a progress bar, then show the model."""
    with api() as client:
        response = client.request("POST", "/base-models", json=body)
        created = response.json()
        if response.status_code != 202:  # a folder, registered at once
            _show(created)
            return
        job_id = created["job_id"]
        if no_wait:
            console.print(f"Queued job {job_id}; follow it with `tuneyard jobs follow {job_id}`.")
            return
        follow_job(client, job_id)
        _show(client.get(f"/base-models/{created['id']}"))


def _server_path(path: Path) -> str:
    # A path on the server's machine; a relative one is read from here, as typed.
    return str(path.expanduser().absolute())


@app.command("add")
def add(
    path: Path = typer.Argument(
        ..., help="An HF-format model folder on the server's machine, registered where it is."
    ),
    name: str = typer.Option(..., "--name", help="Technical name, unique in the project."),
    model_name: str = typer.Option(None, "--model-name", help="Display name (default: --name)."),
    model_type: str = typer.Option("chat", "--type", help="chat or embedding."),
):
    """Register a model folder on the server in place (it is never moved or deleted); it must
    lie in one of the server's model roots."""
    body = {
        "technical_name": name,
        "path": _server_path(path),
        "model_name": model_name,
        "model_type": model_type,
    }
    _create(body, no_wait=False)


@app.command("add-demo")
def add_demo(no_wait: bool = typer.Option(False, "--no-wait", help="Queue the import and return.")):
    """Add the demo models: the chat model SmolLM2-135M-Instruct (imported, about a minute) and
    the embedding model all-MiniLM-L6-v2 (for knowledge bases)."""
    with api() as client:
        for model in client.post("/base-models/demo"):
            if model["job_id"] and not no_wait:
                follow_job(client, model["job_id"])
                model = client.get(f"/base-models/{model['id']}")
            console.print(f"{model['technical_name']} ({model['model_type']}): {model['status']}")


@app.command("import-gguf")
def import_gguf(
    file: Path = typer.Argument(..., help="A .gguf model file on the server's machine."),
    name: str = typer.Option(..., "--name", help="Technical name, unique in the project."),
    model_name: str = typer.Option(None, "--model-name", help="Display name (default: --name)."),
    model_type: str = typer.Option("chat", "--type", help="chat or embedding."),
    no_wait: bool = NoWaitOption,
):
    """Import a GGUF file on the server as a float HF folder that Tuneyard keeps and can
    train; it must lie in one of the server's model roots."""
    body = {
        "technical_name": name,
        "gguf_path": _server_path(file),
        "model_name": model_name,
        "model_type": model_type,
    }
    _create(body, no_wait)


@app.command("list")
def list_models(as_json: bool = JsonOption):
    """List the project's base models, newest first."""
    with api() as client:
        rows, total = client.items("/base-models", limit=500)
    if as_json:
        print_json(rows)
        return
    print_table(rows, ["id", "technical_name", "model_type", "source", "status", "created_at"])
    err_console.print(f"{len(rows)} of {total}")


@app.command("show")
def show(model: str = typer.Argument(..., metavar="ID_OR_NAME"), as_json: bool = JsonOption):
    """Show a base model and its card."""
    with api() as client:
        out = find(client, model)
    print_json(out) if as_json else _show(out)


@app.command("rm")
def rm(model: str = typer.Argument(..., metavar="ID_OR_NAME")):
    """Unregister a base model; a folder registered in place stays on disk."""
    with api() as client:
        row = find(client, model)
        client.delete(f"/base-models/{row['id']}")
    if row["managed"]:
        console.print(f"Removed base model {row['technical_name']} and its imported files.")
    else:
        console.print(
            f"Removed base model {row['technical_name']}; its folder {row['path']} was left "
            "in place.",
            soft_wrap=True,
        )


@app.command("template")
def template(
    model: str = typer.Argument(..., metavar="ID_OR_NAME"),
    set_file: Path = typer.Option(
        None, "--set-file", help="Replace the deployment template with this file's text."
    ),
):
    """Print the deployment template (Ollama TEMPLATE), or replace it from a file."""
    text = None
    if set_file is not None:
        try:
            text = set_file.read_text(encoding="utf-8")
        except OSError as exc:
            fail(f"Cannot read {set_file}: {exc.strerror}.")
    with api() as client:
        row = find(client, model)
        if text is not None:
            client.patch(f"/base-models/{row['id']}", {"deployment_template": text})
    if text is not None:
        console.print(f"Updated the deployment template of {row['technical_name']}.")
        return
    current = row["deployment_template"] or ""
    sys.stdout.write(current if current.endswith("\n") else current + "\n")
