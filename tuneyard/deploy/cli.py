"""`tuneyard env`, `tuneyard deploy` and `tuneyard live`: serving tools and live models."""

from __future__ import annotations

import typer

from tuneyard.deploy.quantization import NO_QUANTIZATION, names_text
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

env_app = typer.Typer(
    help="Deployment environments: Ollama, llama.cpp or OpenAI-compatible servers.",
    no_args_is_help=True,
)
live_app = typer.Typer(help="Live models: models deployed on a serving tool.", no_args_is_help=True)


def _env_url(environment: str) -> str:
    from tuneyard.client import path_part

    return f"/deploy-environments/{path_part(environment)}"


def _live_url(model: str) -> str:
    from tuneyard.client import path_part

    return f"/live-models/{path_part(model)}"


@env_app.command("add")
def env_add(
    name: str,
    kind: str = typer.Option(..., "--kind", help="ollama, llama.cpp or openai."),
    url: str = typer.Option(
        None,
        "--url",
        help="The tool's address. Leave it out for llama.cpp: Tuneyard then starts and "
        "supervises a server on the server's machine.",
    ),
    port: int = typer.Option(None, "--port", help="Port of the llama.cpp server Tuneyard starts."),
    api_key: str = typer.Option(
        None, "--api-key", envvar="TUNEYARD_ENV_API_KEY", help="Bearer key (stored encrypted)."
    ),
    description: str = typer.Option("", "--description"),
):
    """Add a deployment environment."""
    body = {
        "name": name,
        "kind": kind,
        "url": url,
        "port": port,
        "api_key": api_key,
        "description": description,
    }
    with api() as client:
        row = client.post("/deploy-environments", body)
    where = row["url"] or "a llama.cpp server Tuneyard runs on 127.0.0.1"
    console.print(f"Added environment {name} ({kind}, {where}), id {row['id']}.", soft_wrap=True)


@env_app.command("list")
def env_list(as_json: bool = JsonOption):
    """List deployment environments."""
    with api() as client:
        rows = client.every("/deploy-environments")
    if as_json:
        print_json(rows)
    else:
        print_table(rows, ["id", "name", "kind", "url", "managed", "port", "last_check_error"])


@env_app.command("test")
def env_test(environment: str, as_json: bool = JsonOption):
    """Ask the environment's serving tool whether it answers."""
    with api() as client:
        result = client.post(f"{_env_url(environment)}/test")
    if as_json:
        print_json(result)
        return
    if not result["ok"]:
        fail(result["detail"])
    console.print(result["detail"], soft_wrap=True)
    if result["models"]:
        console.print("Serving: " + ", ".join(result["models"]), soft_wrap=True)


@env_app.command("rm")
def env_rm(environment: str):
    """Delete an environment (refused while live models are deployed to it)."""
    with api() as client:
        client.delete(_env_url(environment))
    console.print(f"Deleted environment {environment}.")


def _find_source(client, model: str, kind: str | None) -> tuple[str, str]:
    """Which model a name means, by the server's one rule for names (tuneyard.modelref)."""
    from tuneyard.client import path_part

    found = client.get(f"/models/{path_part(model)}", kind=kind, can="deploy")
    return found["kind"], found["id"]


def deploy(
    model: str = typer.Argument(
        ..., help="A complete, customized or base model: kind:id, or a name or id."
    ),
    env: str = typer.Option(..., "--env", help="The deployment environment: name or id."),
    quant: str = typer.Option(NO_QUANTIZATION, "--quant", help=f"{names_text()}."),
    kind: str = typer.Option(
        None, "--kind", help="complete, customized or base, when a name is ambiguous."
    ),
    system: str = typer.Option(None, "--system", help="A default system prompt."),
    allow_template_mismatch: bool = typer.Option(
        False, "--allow-template-mismatch", help="Deploy even if template parity fails."
    ),
    fidelity_check: bool = typer.Option(
        True,
        "--fidelity-check/--no-fidelity-check",
        help="Once live, check that it answers as the model it was deployed from.",
    ),
    wait: bool = typer.Option(
        False,
        "--wait/--no-wait",
        help="Follow the job with a live progress bar until it ends; Ctrl-C cancels it.",
    ),
):
    """Deploy a model to a serving tool, where it becomes a live model."""
    from tuneyard.client import path_part

    body = {
        "environment_id": env,
        "quantization": quant,
        "system": system,
        "allow_template_mismatch": allow_template_mismatch,
        "fidelity_check": fidelity_check,
    }
    with api() as client:
        source_kind, source_id = _find_source(client, model, kind)
        accepted = client.post(f"/{source_kind}-models/{path_part(source_id)}/deploy", body)
        live_id, job_id = accepted["id"], accepted["job_id"]
        row = client.get(_live_url(live_id))
        name, parity = row["name"], row["model_card"]["template_parity"]
        console.print(f"Deploying {name} ({live_id}, job {job_id}).", soft_wrap=True)
        if parity.get("status") == "mismatch":
            err_console.print(f"Warning: {parity['detail']}")
        if not wait:
            err_console.print(f"The server runs it; follow it with `tuneyard live show {name}`.")
            return
        follow_job(client, job_id)
        row = client.get(_live_url(live_id))
    console.print(f"{name} is live: {row['endpoint_url']} model {row['model_id']}", soft_wrap=True)


@live_app.command("list")
def live_list(
    env: str = typer.Option(None, "--env", help="Only this environment."),
    as_json: bool = JsonOption,
):
    """List live models, newest first."""
    with api() as client:
        rows = client.every("/live-models", environment_id=env)
    if as_json:
        print_json(rows)
    else:
        columns = ["id", "name", "status", "environment_name", "quantization", "endpoint_url"]
        print_table(rows, [*columns, "model_id"])


@live_app.command("show")
def live_show(
    model: str,
    check: bool = typer.Option(False, "--check", help="Ask the serving tool first."),
    as_json: bool = JsonOption,
):
    """Show a live model and its card."""
    with api() as client:
        if check:
            err_console.print(client.post(f"{_live_url(model)}/check")["detail"])
        out = client.get(_live_url(model))
    print_json(out) if as_json else print_record(out)


@live_app.command("rm")
def live_rm(model: str):
    """Remove a live model from its serving tool."""
    with api() as client:
        name = client.get(_live_url(model))["name"]
        client.delete(_live_url(model))
    console.print(f"Removed live model {name} from its serving tool.")


@live_app.command("register")
def live_register(
    model: str,
    name: str = typer.Option(None, "--name", help="The third-party model's name."),
    private: bool = typer.Option(False, "--private", help="Visible to you only."),
):
    """Register a live model as a third-party model (its OpenAI-compatible endpoint)."""
    with api() as client:
        entry = client.post(f"{_live_url(model)}/register", {"name": name, "private": private})
    console.print(
        f"Registered third-party model {entry['name']} ({entry['id']}) at {entry['base_url']}.",
        soft_wrap=True,
    )
