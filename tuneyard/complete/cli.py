"""`tuneyard save` and `tuneyard complete`: standalone models saved from adapters."""

from __future__ import annotations

from pathlib import Path

import typer

from tuneyard.terminal import (
    JsonOption,
    api,
    console,
    err_console,
    fail,
    follow_job,
    print_json,
    print_record,
    print_table,
)

app = typer.Typer(
    help="Complete models: adapters merged into their base, or full fine-tunes.",
    no_args_is_help=True,
)
WaitOption = typer.Option(
    False,
    "--wait/--no-wait",
    help="Follow the job with a live progress bar until it ends; Ctrl-C cancels it.",
)


def _url(model: str) -> str:
    from tuneyard.client import path_part

    return f"/complete-models/{path_part(model)}"


def save(
    customized: str = typer.Argument(..., help="The customized model: name or id."),
    dtype: str = typer.Option("bf16", "--dtype", help="bf16, fp16 or fp32; never quantized."),
    wait: bool = WaitOption,
):
    """Save a customized model as a complete model: its adapter merged into its base."""
    from tuneyard.client import path_part

    with api() as client:
        accepted = client.post(f"/customized-models/{path_part(customized)}/save", {"dtype": dtype})
        model_id, job_id = accepted["id"], accepted["job_id"]
        name = client.get(_url(model_id))["name"]
        console.print(f"Saving complete model {name} ({model_id}, job {job_id}).")
        if not wait:
            err_console.print(
                f"The server runs it; follow it with `tuneyard complete show {name}`."
            )
            return
        follow_job(client, job_id)
        path = client.get(_url(model_id))["path"]
    # Not wrapped by rich, so the path can be copied whole.
    console.print(f"Complete model {name} is ready in {path}", soft_wrap=True)


@app.command("list")
def list_(as_json: bool = JsonOption):
    """List complete models, newest first."""
    with api() as client:
        rows = client.every("/complete-models")
    if as_json:
        print_json(rows)
    else:
        print_table(rows, ["id", "name", "status", "dtype", "size_bytes", "base_model_name"])


@app.command("show")
def show(model: str, as_json: bool = JsonOption):
    """Show a complete model and its card (by name or id)."""
    with api() as client:
        out = client.get(_url(model))
    print_json(out) if as_json else print_record(out)


@app.command("rm")
def rm(model: str):
    """Delete a complete model and its folder."""
    with api() as client:
        name = client.get(_url(model))["name"]
        client.delete(_url(model))
    console.print(f"Deleted complete model {name}.")


@app.command("export")
def export(
    model: str,
    path: Path = typer.Argument(..., help="The archive to write, or a folder to write it in."),
    fmt: str = typer.Option(
        None, "--format", help="tar or tar.gz (default: from the file name, else tar)."
    ),
):
    """Download a complete model's folder as a tar (or tar.gz) archive."""
    from tuneyard.storage import atomic_file

    if fmt is None:
        fmt = "tar.gz" if path.name.endswith((".tar.gz", ".tgz")) else "tar"
    with api() as client:
        name = client.get(_url(model))["name"]
        target = path / f"{name}.{fmt}" if path.is_dir() else path
        if not target.parent.is_dir():
            fail(f"{target.parent} is not a folder; give a path in an existing folder.")
        archive = client.stream("GET", f"{_url(model)}/archive", params={"format": fmt})
        with archive as response, atomic_file(target) as handle:
            for chunk in response.iter_bytes():
                handle.write(chunk)
    console.print(f"Wrote {target} ({target.stat().st_size:,} bytes).", soft_wrap=True)


@app.command("push")
def push(
    model: str,
    repo_id: str = typer.Argument(..., help="The hub repository, owner/name."),
    public: bool = typer.Option(
        False, "--public", help="Create the repository public (by default it is private)."
    ),
    wait: bool = WaitOption,
):
    """Have the server upload a complete model to the model hub (its HF_ENDPOINT and
    HF_TOKEN); a repository it creates is private unless --public."""
    with api() as client:
        name = client.get(_url(model))["name"]
        accepted = client.post(f"{_url(model)}/push", {"repo_id": repo_id, "public": public})
        job_id = accepted["job_id"]
        console.print(f"Pushing {name} to {repo_id} (job {job_id}).")
        if wait:
            job = follow_job(client, job_id)
            console.print(job["message"])
