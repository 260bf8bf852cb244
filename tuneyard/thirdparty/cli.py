"""`tuneyard thirdparty`: external chat and embedding endpoints."""

from __future__ import annotations

import typer

from tuneyard.terminal import JsonOption, api, console, fail, print_json, print_table

app = typer.Typer(
    help="Third-party models: OpenAI-compatible endpoints and known providers.",
    no_args_is_help=True,
)


def _url(name: str) -> str:
    from tuneyard.client import path_part

    return f"/third-party-models/{path_part(name)}"


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
):
    """Add a third-party model."""
    body = {
        "name": name,
        "provider": provider,
        "model_name": model,
        "model_type": model_type,
        "base_url": url,
        "api_key": api_key,
        "description": description,
        "private": private,
    }
    with api() as client:
        row = client.post("/third-party-models", body)
    summary = f"{row['model_type']} model {row['model_name']} at {row['base_url']}, id {row['id']}"
    console.print(f"Added third-party model {name} ({summary}).", soft_wrap=True)


@app.command("list")
def list_(
    model_type: str = typer.Option(None, "--type", help="Only chat or only embedding models."),
    as_json: bool = JsonOption,
):
    """List third-party models (the project's and your private ones)."""
    with api() as client:
        rows = client.every("/third-party-models", type=model_type)
    if as_json:
        print_json(rows)
    else:
        print_table(
            rows,
            ["id", "name", "provider", "model_type", "model_name", "base_url", "has_api_key"],
        )


@app.command("test")
def test(name: str, as_json: bool = JsonOption):
    """Make a real request to the model; exits 1 with the reason when it fails."""
    with api() as client:
        result = client.post(f"{_url(name)}/test")
    if as_json:
        print_json(result)
        raise typer.Exit(0 if result["ok"] else 1)
    if not result["ok"]:
        fail(result["detail"])
    console.print(result["detail"], soft_wrap=True)


@app.command("rm")
def rm(name: str):
    """Delete a third-party model."""
    with api() as client:
        removed = client.get(_url(name))["name"]
        client.delete(_url(name))
    console.print(f"Deleted third-party model {removed}.")
