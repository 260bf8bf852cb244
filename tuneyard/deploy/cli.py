"""`tuneyard env`, `tuneyard deploy` and `tuneyard live`: serving tools and live models."""

from __future__ import annotations

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

env_app = typer.Typer(
    help="Deployment environments: Ollama, llama.cpp or OpenAI-compatible servers.",
    no_args_is_help=True,
)
live_app = typer.Typer(help="Live models: models deployed on a serving tool.", no_args_is_help=True)


@env_app.command("add")
def env_add(
    name: str,
    kind: str = typer.Option(..., "--kind", help="ollama, llama.cpp or openai."),
    url: str = typer.Option(
        None,
        "--url",
        help="The tool's address. Leave it out for llama.cpp: Tuneyard then starts and "
        "supervises a server on this machine.",
    ),
    port: int = typer.Option(None, "--port", help="Port of the llama.cpp server Tuneyard starts."),
    api_key: str = typer.Option(
        None, "--api-key", envvar="TUNEYARD_ENV_API_KEY", help="Bearer key (stored encrypted)."
    ),
    description: str = typer.Option("", "--description"),
    project: str = ProjectOption,
):
    """Add a deployment environment."""
    from tuneyard.deploy import service

    with cli_session(project) as (session, principal):
        row = service.create_environment(
            session, principal, name, kind, url, port, api_key, description
        )
        where = row.url or "a llama.cpp server Tuneyard runs on 127.0.0.1"
        env_id = row.id
    console.print(f"Added environment {name} ({kind}, {where}), id {env_id}.", soft_wrap=True)


@env_app.command("list")
def env_list(project: str = ProjectOption, as_json: bool = JsonOption):
    """List deployment environments."""
    from tuneyard.deploy import service
    from tuneyard.deploy.schemas import EnvironmentOut

    with cli_session(project) as (session, principal):
        rows, _ = service.list_environments(session, principal, limit=500)
        out = [EnvironmentOut.model_validate(service.environment_out(r)) for r in rows]
    if as_json:
        print_json(out)
    else:
        print_table(out, ["id", "name", "kind", "url", "managed", "port", "last_check_error"])


@env_app.command("test")
def env_test(environment: str, project: str = ProjectOption, as_json: bool = JsonOption):
    """Ask the environment's serving tool whether it answers."""
    from tuneyard.deploy import service
    from tuneyard.deploy.schemas import EnvironmentTest

    with cli_session(project) as (session, principal):
        result = EnvironmentTest.model_validate(
            service.test_environment(session, principal, environment)
        )
    if as_json:
        print_json(result)
        return
    if not result.ok:
        fail(result.detail)
    console.print(result.detail, soft_wrap=True)
    if result.models:
        console.print("Serving: " + ", ".join(result.models), soft_wrap=True)


@env_app.command("rm")
def env_rm(environment: str, project: str = ProjectOption):
    """Delete an environment (refused while live models are deployed to it)."""
    from tuneyard.deploy import service

    with cli_session(project) as (session, principal):
        service.delete_environment(session, principal, environment)
    console.print(f"Deleted environment {environment}.")


def _find_source(session, principal, model: str, kind: str | None) -> tuple[str, str]:
    """Which model a name means: a complete, customized or base model, in that order."""
    from tuneyard.deploy.service import SOURCE_KINDS, resolve_source
    from tuneyard.errors import Invalid, NotFound

    kinds = [kind] if kind else ["complete", "customized", "base"]
    if kind and kind not in SOURCE_KINDS:
        raise Invalid(f"Unknown kind '{kind}'; use one of: {', '.join(SOURCE_KINDS)}.")
    for candidate in kinds:
        try:
            return candidate, resolve_source(session, principal, candidate, model).id
        except NotFound:
            continue
    raise NotFound(
        f"No complete, customized or base model '{model}'. List them with "
        "`tuneyard complete list`, `tuneyard customized list` or `tuneyard base list`."
    )


def deploy(
    model: str = typer.Argument(..., help="A complete, customized or base model: name or id."),
    env: str = typer.Option(..., "--env", help="The deployment environment: name or id."),
    quant: str = typer.Option(
        "no_quantization", "--quant", help="no_quantization, q8_0, q4_K_M or q4_K_S."
    ),
    kind: str = typer.Option(
        None, "--kind", help="complete, customized or base, when a name is ambiguous."
    ),
    system: str = typer.Option(None, "--system", help="A default system prompt."),
    allow_template_mismatch: bool = typer.Option(
        False, "--allow-template-mismatch", help="Deploy even if template parity fails."
    ),
    wait: bool = typer.Option(False, "--wait/--no-wait", help="Run here with a progress bar."),
    project: str = ProjectOption,
):
    """Deploy a model to a serving tool, where it becomes a live model."""
    from tuneyard.deploy import service

    with cli_session(project) as (session, principal):
        source_kind, source_id = _find_source(session, principal, model, kind)
        row = service.start_deploy(
            session,
            principal,
            source_kind,
            source_id,
            env,
            quant,
            system,
            None,
            allow_template_mismatch,
        )
        live_id, name, job_id = row.id, row.name, row.job_id
        parity = row.model_card["template_parity"]
    console.print(f"Deploying {name} ({live_id}, job {job_id}).", soft_wrap=True)
    if parity.get("status") == "mismatch":
        err_console.print(f"Warning: {parity['detail']}")
    if not wait:
        err_console.print(
            "A running `tuneyard serve` or `tuneyard worker` runs it; follow it with "
            f"`tuneyard live show {name}`."
        )
        return
    run_job_with_progress(job_id)
    with cli_session(project) as (session, principal):
        row = service.get_live(session, principal, live_id)
        endpoint, model_id = row.endpoint_url, row.model_id
    console.print(f"{name} is live: {endpoint} model {model_id}", soft_wrap=True)


@live_app.command("list")
def live_list(
    env: str = typer.Option(None, "--env", help="Only this environment."),
    project: str = ProjectOption,
    as_json: bool = JsonOption,
):
    """List live models, newest first."""
    from tuneyard.deploy import service
    from tuneyard.deploy.schemas import LiveModelSummary

    with cli_session(project) as (session, principal):
        rows, _ = service.list_live(session, principal, env, limit=500)
        out = [LiveModelSummary.model_validate(service.live_summary(session, r)) for r in rows]
    if as_json:
        print_json(out)
    else:
        print_table(
            out,
            [
                "id",
                "name",
                "status",
                "environment_name",
                "quantization",
                "endpoint_url",
                "model_id",
            ],
        )


@live_app.command("show")
def live_show(
    model: str,
    check: bool = typer.Option(False, "--check", help="Ask the serving tool first."),
    project: str = ProjectOption,
    as_json: bool = JsonOption,
):
    """Show a live model and its card."""
    from tuneyard.deploy import service
    from tuneyard.deploy.schemas import LiveModelOut

    with cli_session(project) as (session, principal):
        if check:
            result = service.check_live(session, principal, model)
            err_console.print(result["detail"])
        out = LiveModelOut.model_validate(service.get_live(session, principal, model))
    print_json(out) if as_json else print_record(out)


@live_app.command("rm")
def live_rm(model: str, project: str = ProjectOption):
    """Remove a live model from its serving tool."""
    from tuneyard.deploy import service

    with cli_session(project) as (session, principal):
        name = service.delete_live(session, principal, model)
    console.print(f"Removed live model {name} from its serving tool.")


@live_app.command("register")
def live_register(
    model: str,
    name: str = typer.Option(None, "--name", help="The third-party model's name."),
    private: bool = typer.Option(False, "--private", help="Visible to you only."),
    project: str = ProjectOption,
):
    """Register a live model as a third-party model (its OpenAI-compatible endpoint)."""
    from tuneyard.deploy import service

    with cli_session(project) as (session, principal):
        entry = service.register_live(session, principal, model, name, None, private)
        entry_name, entry_id, url = entry.name, entry.id, entry.base_url
    console.print(
        f"Registered third-party model {entry_name} ({entry_id}) at {url}.", soft_wrap=True
    )
