"""`tuneyard train`: start, follow, cancel and resume trainings; custom training methods."""

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
    follow_job,
    print_json,
    print_record,
    print_table,
)

app = typer.Typer(help="Fine-tune a base model on a dataset.", no_args_is_help=True)
WaitOption = typer.Option(
    False, "--wait", help="Follow it with a live progress bar until it ends; Ctrl-C cancels it."
)


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


def _training_url(training_id: str) -> str:
    from tuneyard.client import path_part

    return f"/trainings/{path_part(training_id)}"


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
    wait: bool = WaitOption,
):
    """Start a training; the server's worker runs it."""
    from tuneyard.basemodels.cli import find as find_base
    from tuneyard.datasets.cli import find as find_dataset

    params = parse_params(param)
    with api() as client:
        profile_id = None
        if profile:
            profiles = client.every("/profiles")
            match = [p for p in profiles if profile in (p["id"], p["name"])]
            if not match:
                fail(f"No profile '{profile}'.")
            profile_id = match[0]["id"]
        body = {
            "name": name,
            "method": method,
            "base_model_id": find_base(client, base)["id"],
            "dataset_id": find_dataset(client, data)["id"],
            "params": params,
            "profile_id": profile_id,
        }
        accepted = client.post("/trainings", body)
        training_id, job_id = accepted["id"], accepted["job_id"]
        console.print(f"Training {training_id} queued (job {job_id}).")
        if not wait:
            err_console.print(
                f"The server runs it; follow it with `tuneyard train show {training_id}`."
            )
            return
        follow_job(client, job_id)
        _print_outcome(client.get(_training_url(training_id)))


def _print_outcome(training: dict) -> None:
    summary, model_id = training["summary"], training["customized_model_id"]
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
    as_json: bool = JsonOption,
):
    """List trainings, newest first."""
    with api() as client:
        rows = client.every("/trainings", status=status)
    if as_json:
        print_json(rows)
    else:
        print_table(rows, ["id", "name", "method", "base_model_name", "status", "progress"])


@app.command("show")
def show(training_id: str, as_json: bool = JsonOption):
    """Show a training: status, progress, parameters and results."""
    with api() as client:
        out = client.get(_training_url(training_id))
    print_json(out) if as_json else print_record(out)


@app.command("metrics")
def metrics_(
    training_id: str,
    metric: str = typer.Option("loss", help="Which train metric to print."),
    as_json: bool = JsonOption,
):
    """Print a training's metric series by step."""
    with api() as client:
        data = client.get(f"{_training_url(training_id)}/metrics")
    if as_json:
        print_json(data)
        return
    series = data["series"]["train"].get(metric, [])
    rows = [{"step": step, metric: f"{value:.6g}"} for step, value in series]
    print_table(rows, ["step", metric])


@app.command("logs")
def logs(
    training_id: str,
    tail: int = typer.Option(None, min=1, help="Only the last N bytes."),
):
    """Print the log of a training's latest run."""
    with api() as client:
        job_id = client.get(_training_url(training_id))["job_id"]
        params = {"tail": tail} if tail is not None else {}
        text = client.request("GET", f"/jobs/{job_id}/logs", params=params).text
    print(text, end="")


@app.command("cancel")
def cancel(training_id: str):
    """Stop a training at the next step; its last checkpoint is kept for resume."""
    with api() as client:
        state = client.post(f"{_training_url(training_id)}/cancel")["status"]
    console.print(f"Training {training_id}: {'cancelled' if state == 'cancelled' else 'stopping'}.")


@app.command("resume")
def resume(training_id: str, wait: bool = WaitOption):
    """Continue a cancelled or failed training from its last checkpoint."""
    with api() as client:
        job_id = client.post(f"{_training_url(training_id)}/resume")["job_id"]
        console.print(f"Training {training_id} resumes (job {job_id}).")
        if wait:
            follow_job(client, job_id)
            _print_outcome(client.get(_training_url(training_id)))


@app.command("methods")
def methods(as_json: bool = JsonOption):
    """List training methods: the built-ins and the project's uploaded ones."""
    with api() as client:
        rows = client.get("/training-methods")
    if as_json:
        print_json(rows)
    else:
        print_table(rows, ["name", "custom", "dataset_formats", "description"])


@app.command("add-method")
def add_method(
    file: Path = typer.Argument(..., exists=True, dir_okay=False, help="The Python script."),
    name: str = typer.Option(..., "--name", help="The method's name, used with --method."),
):
    """Upload a custom training method: a script defining train(config, output_dir, report)."""
    with api() as client, file.open("rb") as content:
        added = client.post(
            "/training-methods", data={"name": name}, files={"file": (file.name, content)}
        )
    print_record(added, skip=("params_schema",))


@app.command("rm-method")
def rm_method(name: str):
    """Delete an uploaded training method (trainings made with it stay)."""
    from tuneyard.client import path_part

    with api() as client:
        client.delete(f"/training-methods/{path_part(name)}")
    console.print(f"Removed training method {name}.")
