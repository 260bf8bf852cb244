"""`tuneyard thirdparty`: external chat and embedding endpoints."""

from __future__ import annotations

import typer

from tuneyard.terminal import (
    JsonOption,
    ProjectOption,
    cli_session,
    console,
    fail,
    print_json,
    print_table,
)

app = typer.Typer(
    help="Third-party models: OpenAI-compatible endpoints and known providers.",
    no_args_is_help=True,
)


@app.command("add")
def add(
    name: str,
    provider: str = typer.Option(
        ...,
        "--provider",
        help="openai, deepseek, dashscope, siliconflow, ollama or openai-compatible.",
    ),
    model: str = typer.Option(..., "--model", help="The model id the endpoint expects."),
    url: str = typer.Option(
        None, "--url", help="Base URL, e.g. https://api.deepseek.com/v1 (known providers: default)."
    ),
    api_key: str = typer.Option(
        None,
        "--api-key",
        envvar="TUNEYARD_THIRDPARTY_API_KEY",
        help="Bearer key (stored encrypted).",
    ),
    model_type: str = typer.Option("chat", "--type", help="chat or embedding."),
    private: bool = typer.Option(False, "--private", help="Only you see and use it."),
    description: str = typer.Option("", "--description"),
    project: str = ProjectOption,
):
    """Add a third-party model."""
    from tuneyard.thirdparty import service

    with cli_session(project) as (session, principal):
        row = service.create_third_party(
            session,
            principal,
            name=name,
            provider=provider,
            model_name=model,
            model_type=model_type,
            base_url=url,
            api_key=api_key,
            description=description,
            private=private,
        )
        summary = f"{row.model_type} model {row.model_name} at {row.base_url}, id {row.id}"
    console.print(f"Added third-party model {name} ({summary}).", soft_wrap=True)


@app.command("list")
def list_(
    model_type: str = typer.Option(None, "--type", help="Only chat or only embedding models."),
    project: str = ProjectOption,
    as_json: bool = JsonOption,
):
    """List third-party models (the project's and your private ones)."""
    from tuneyard.thirdparty import service
    from tuneyard.thirdparty.schemas import ThirdPartyOut

    with cli_session(project) as (session, principal):
        rows, _ = service.list_third_party(session, principal, model_type, limit=500)
        out = [ThirdPartyOut.model_validate(service.third_party_out(row)) for row in rows]
    if as_json:
        print_json(out)
    else:
        print_table(
            out,
            ["id", "name", "provider", "model_type", "model_name", "base_url", "has_api_key"],
        )


@app.command("test")
def test(name: str, project: str = ProjectOption, as_json: bool = JsonOption):
    """Make a real request to the model; exits 1 with the reason when it fails."""
    from tuneyard.thirdparty import service
    from tuneyard.thirdparty.schemas import ThirdPartyTest

    with cli_session(project) as (session, principal):
        result = ThirdPartyTest.model_validate(service.test_third_party(session, principal, name))
    if as_json:
        print_json(result)
        raise typer.Exit(0 if result.ok else 1)
    if not result.ok:
        fail(result.detail)
    console.print(result.detail, soft_wrap=True)


@app.command("rm")
def rm(name: str, project: str = ProjectOption):
    """Delete a third-party model."""
    from tuneyard.thirdparty import service

    with cli_session(project) as (session, principal):
        removed = service.delete_third_party(session, principal, name)
    console.print(f"Deleted third-party model {removed}.")
