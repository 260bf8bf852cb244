"""`tuneyard save` and `tuneyard complete`: standalone models saved from adapters."""

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

app = typer.Typer(
    help="Complete models: adapters merged into their base, or full fine-tunes.",
    no_args_is_help=True,
)
WaitOption = typer.Option(False, "--wait/--no-wait", help="Run here with a live progress bar.")


def save(
    customized: str = typer.Argument(..., help="The customized model: name or id."),
    dtype: str = typer.Option("bf16", "--dtype", help="bf16, fp16 or fp32; never quantized."),
    wait: bool = WaitOption,
    project: str = ProjectOption,
):
    """Save a customized model as a complete model: its adapter merged into its base."""
    from tuneyard.complete import service

    with cli_session(project) as (session, principal):
        row = service.start_save(session, principal, customized, dtype)
        model_id, name, job_id = row.id, row.name, row.job_id
    console.print(f"Saving complete model {name} ({model_id}, job {job_id}).")
    if not wait:
        err_console.print(
            "A running `tuneyard serve` or `tuneyard worker` runs it; follow it with "
            f"`tuneyard complete show {name}`."
        )
        return
    run_job_with_progress(job_id)
    with cli_session(project) as (session, principal):
        path = service.get_complete(session, principal, model_id).path
    # Not wrapped by rich, so the path can be copied whole.
    console.print(f"Complete model {name} is ready in {path}", soft_wrap=True)


@app.command("list")
def list_(project: str = ProjectOption, as_json: bool = JsonOption):
    """List complete models, newest first."""
    from tuneyard.complete import service
    from tuneyard.complete.schemas import CompleteModelSummary

    with cli_session(project) as (session, principal):
        rows, _ = service.list_complete(session, principal, limit=500)
        out = [CompleteModelSummary.model_validate(service.summary(r)) for r in rows]
    if as_json:
        print_json(out)
    else:
        print_table(out, ["id", "name", "status", "dtype", "size_bytes", "base_model_name"])


@app.command("show")
def show(model: str, project: str = ProjectOption, as_json: bool = JsonOption):
    """Show a complete model and its card (by name or id)."""
    from tuneyard.complete import service
    from tuneyard.complete.schemas import CompleteModelOut

    with cli_session(project) as (session, principal):
        out = CompleteModelOut.model_validate(service.get_complete(session, principal, model))
    print_json(out) if as_json else print_record(out)


@app.command("rm")
def rm(model: str, project: str = ProjectOption):
    """Delete a complete model and its folder."""
    from tuneyard.complete import service

    with cli_session(project) as (session, principal):
        name = service.delete_complete(session, principal, model)
    console.print(f"Deleted complete model {name}.")


@app.command("export")
def export(
    model: str,
    path: Path = typer.Argument(..., help="The archive to write, or a folder to write it in."),
    fmt: str = typer.Option(
        None, "--format", help="tar or tar.gz (default: from the file name, else tar)."
    ),
    project: str = ProjectOption,
):
    """Write a complete model's folder as a tar (or tar.gz) archive."""
    from tuneyard.complete import service
    from tuneyard.complete.archive import tar_stream
    from tuneyard.storage import atomic_file

    if fmt is None:
        fmt = "tar.gz" if path.name.endswith((".tar.gz", ".tgz")) else "tar"
    with cli_session(project) as (session, principal):
        service.check_archive_format(fmt)
        folder, name = service.complete_archive(session, principal, model)
    target = path / f"{name}.{fmt}" if path.is_dir() else path
    if not target.parent.is_dir():
        fail(f"{target.parent} is not a folder; give a path in an existing folder.")
    with atomic_file(target) as handle:
        for chunk in tar_stream(folder, name, fmt):
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
    project: str = ProjectOption,
):
    """Upload a complete model to the model hub (HF_ENDPOINT, token from HF_TOKEN); a
    repository it creates is private unless --public."""
    from tuneyard.complete import service

    with cli_session(project) as (session, principal):
        row, job = service.start_push(session, principal, model, repo_id, public)
        name, job_id = row.name, job.id
    console.print(f"Pushing {name} to {repo_id} (job {job_id}).")
    if wait:
        job = run_job_with_progress(job_id)
        console.print(job.message)
