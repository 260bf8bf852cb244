"""`tuneyard train`: start, follow, cancel and resume trainings; custom training methods."""

from __future__ import annotations

import json
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

app = typer.Typer(help="Fine-tune a base model on a dataset.", no_args_is_help=True)


def parse_params(pairs: list[str]) -> dict:
    """`k=v` pairs; values are read as JSON where they parse (numbers, true, lists)."""
    params = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            fail(f"--param takes key=value, got '{pair}'.")
        try:
            params[key] = json.loads(raw)
        except json.JSONDecodeError:
            params[key] = raw
    return params


@app.command("start")
def start(
    base: str = typer.Option(..., "--base", help="Base model: technical name or id."),
    data: str = typer.Option(..., "--data", help="Dataset: name or id."),
    name: str = typer.Option(..., "--name", help="The train name."),
    method: str = typer.Option(
        "sft", "--method", help="sft, dpo, orpo, kto, grpo or an uploaded method."
    ),
    param: list[str] = typer.Option([], "--param", help="A parameter, key=value; repeatable."),
    profile: str = typer.Option(None, "--profile", help="A parameter profile: name or id."),
    wait: bool = typer.Option(False, "--wait", help="Run here with a live progress bar."),
    project: str = ProjectOption,
):
    """Start a training. Without --wait, a running `tuneyard serve` or worker runs it."""
    from tuneyard.basemodels.service import find_base_model
    from tuneyard.datasets.service import find_dataset
    from tuneyard.training import service

    params = parse_params(param)
    with cli_session(project) as (session, principal):
        profile_id = None
        if profile:
            profiles, _ = service.list_profiles(session, principal, limit=500)
            match = [p for p in profiles if profile in (p.id, p.name)]
            if not match:
                fail(f"No profile '{profile}'.")
            profile_id = match[0].id
        training = service.start_training(
            session,
            principal,
            name=name,
            method=method,
            base_model_id=find_base_model(session, principal, base).id,
            dataset_id=find_dataset(session, principal, data).id,
            params=params,
            profile_id=profile_id,
        )
        training_id, job_id = training.id, training.job_id
    console.print(f"Training {training_id} queued (job {job_id}).")
    if not wait:
        err_console.print(
            "A running `tuneyard serve` or `tuneyard worker` runs it; follow it with "
            f"`tuneyard train show {training_id}`."
        )
        return
    run_job_with_progress(job_id)
    _print_outcome(training_id, project)


def _print_outcome(training_id: str, project: str | None) -> None:
    from tuneyard.training import service

    with cli_session(project) as (session, principal):
        training = service.get_training(session, principal, training_id)
        summary, model_id = dict(training.summary), training.customized_model_id
    if "final_loss" in summary:
        console.print(
            f"Loss {summary['first_loss']:.4f} -> {summary['final_loss']:.4f} "
            f"over {summary['steps']} steps."
        )
    if model_id:
        console.print(f"Customized model: {model_id}")
    if "complete_model_id" in summary:
        console.print(f"Complete model: {summary['complete_model_id']}")


@app.command("list")
def list_(
    status: str = typer.Option(None, help="queued, running, succeeded, failed, cancelled."),
    project: str = ProjectOption,
    as_json: bool = JsonOption,
):
    """List trainings, newest first."""
    from tuneyard.training import service
    from tuneyard.training.schemas import TrainingOut

    with cli_session(project) as (session, principal):
        rows, _ = service.list_trainings(session, principal, status, limit=500)
        out = [TrainingOut.model_validate(r) for r in rows]
    if as_json:
        print_json(out)
    else:
        print_table(out, ["id", "name", "method", "base_model_name", "status", "progress"])


@app.command("show")
def show(training_id: str, project: str = ProjectOption, as_json: bool = JsonOption):
    """Show a training: status, progress, parameters and results."""
    from tuneyard.training import service
    from tuneyard.training.schemas import TrainingOut

    with cli_session(project) as (session, principal):
        out = TrainingOut.model_validate(service.get_training(session, principal, training_id))
    print_json(out) if as_json else print_record(out)


@app.command("metrics")
def metrics_(
    training_id: str,
    metric: str = typer.Option("loss", help="Which train metric to print."),
    project: str = ProjectOption,
    as_json: bool = JsonOption,
):
    """Print a training's metric series by step."""
    from rich.table import Table

    from tuneyard.training import service

    with cli_session(project) as (session, principal):
        data = service.metrics(session, principal, training_id)
    if as_json:
        print_json(data)
        return
    table = Table("step", metric)
    for step, value in data["series"]["train"].get(metric, []):
        table.add_row(str(step), f"{value:.6g}")
    console.print(table)


@app.command("logs")
def logs(
    training_id: str,
    tail: int = typer.Option(None, min=1, help="Only the last N bytes."),
    project: str = ProjectOption,
):
    """Print the log of a training's latest run."""
    from tuneyard.jobs import service as jobs
    from tuneyard.training import service

    with cli_session(project) as (session, principal):
        training = service.get_training(session, principal, training_id)
        text = jobs.read_log(jobs.get_job(session, principal, training.job_id), tail)
    print(text, end="")


@app.command("cancel")
def cancel(training_id: str, project: str = ProjectOption):
    """Stop a training at the next step; its last checkpoint is kept for resume."""
    from tuneyard.training import service

    with cli_session(project) as (session, principal):
        training = service.cancel_training(session, principal, training_id)
        state = training.status
    console.print(f"Training {training_id}: {'cancelled' if state == 'cancelled' else 'stopping'}.")


@app.command("resume")
def resume(
    training_id: str,
    wait: bool = typer.Option(False, "--wait", help="Run here with a live progress bar."),
    project: str = ProjectOption,
):
    """Continue a cancelled or failed training from its last checkpoint."""
    from tuneyard.training import service

    with cli_session(project) as (session, principal):
        job_id = service.resume_training(session, principal, training_id).job_id
    console.print(f"Training {training_id} resumes (job {job_id}).")
    if wait:
        run_job_with_progress(job_id)
        _print_outcome(training_id, project)


@app.command("methods")
def methods(project: str = ProjectOption, as_json: bool = JsonOption):
    """List training methods: the built-ins and the project's uploaded ones."""
    from tuneyard.training import custom
    from tuneyard.training.schemas import MethodOut

    with cli_session(project) as (session, principal):
        rows = [MethodOut.of(m) for m in custom.list_methods(session, principal)]
    if as_json:
        print_json(rows)
    else:
        print_table(rows, ["name", "custom", "dataset_formats", "description"])


@app.command("add-method")
def add_method(
    file: Path = typer.Argument(..., exists=True, dir_okay=False, help="The Python script."),
    name: str = typer.Option(..., "--name", help="The method's name, used with --method."),
    project: str = ProjectOption,
):
    """Upload a custom training method: a script defining train(config, output_dir, report)."""
    from tuneyard.training import custom
    from tuneyard.training.schemas import MethodOut

    with cli_session(project) as (session, principal):
        added = MethodOut.of(custom.add_method(session, principal, name, file.read_bytes()))
    print_record(added, skip=("params_schema",))


@app.command("rm-method")
def rm_method(name: str, project: str = ProjectOption):
    """Delete an uploaded training method (trainings made with it stay)."""
    from tuneyard.training import custom

    with cli_session(project) as (session, principal):
        custom.delete_method(session, principal, name)
    console.print(f"Removed training method {name}.")
