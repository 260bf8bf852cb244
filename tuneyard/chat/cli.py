"""`tuneyard chat MODEL`: an interactive, streaming conversation with any model (or one shot),
over the server's chat API."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import typer

from tuneyard.terminal import api, console, err_console

# A first answer may wait for the server to load the model (a minute or more on a CPU).
ANSWER_TIMEOUT = httpx.Timeout(600.0, connect=10.0)


def chat(
    model: str = typer.Argument(
        ...,
        help="base:<id>, customized:<id>, complete:<id>, live:<id>, third-party:<id>, or a name.",
    ),
    prompt: str = typer.Option(None, "--prompt", help="Ask once, print the answer, and exit."),
    system: str = typer.Option(None, "--system", help="System prompt."),
    temperature: float = typer.Option(0.7, "--temperature", min=0, max=2),
    top_p: float = typer.Option(1.0, "--top-p", min=0, max=1),
    top_k: int = typer.Option(None, "--top-k", min=1),
    max_tokens: int = typer.Option(256, "--max-tokens", min=1),
    seed: int = typer.Option(None, "--seed"),
):
    """Chat with a model; answers stream as they are generated. Ctrl-D or /exit ends it."""
    params = {
        "system": system,
        "temperature": temperature,
        "top_p": top_p,
        "top_k": top_k,
        "max_tokens": max_tokens,
        "seed": seed,
    }
    session_id = None
    interactive = prompt is None
    with api() as client:
        if interactive:
            err_console.print(f"Chatting with {model}. Ctrl-D or /exit ends the conversation.")
        while True:
            text = prompt if not interactive else _read_line()
            if text is None or text.strip() in ("/exit", "/quit"):
                break
            if not text.strip():
                continue
            request = {
                "model": model,
                "messages": [{"role": "user", "content": text}],
                "params": params,
                "session_id": session_id,
                "stream": True,
            }
            answer = client.stream("POST", "/chat", json=request, timeout=ANSWER_TIMEOUT)
            with answer as response:
                done = _print_answer(_events(response.iter_lines()))
            if done is None and not interactive:
                raise typer.Exit(1)
            if done is not None:
                session_id = done["session_id"]
            if not interactive:
                break


def _read_line() -> str | None:
    try:
        return console.input("[bold]you>[/] ")
    except EOFError:
        return None


def _events(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    """The events of a server-sent event stream, up to its `[DONE]`."""
    for line in lines:
        if not line.startswith("data:"):
            continue
        data = line.removeprefix("data:").strip()
        if data == "[DONE]":
            return
        yield json.loads(data)


def _print_answer(events: Iterator[dict[str, Any]]) -> dict[str, Any] | None:
    """Stream the answer to stdout; its last event, or None when it failed."""
    for event in events:
        if "delta" in event:
            sys.stdout.write(event["delta"])
            sys.stdout.flush()
        elif "error" in event:
            sys.stdout.write("\n")
            err_console.print(f"[bold red]Error:[/] {event['detail']}", highlight=False)
            return None
        elif event.get("done"):
            sys.stdout.write("\n")
            seconds = event["first_token_seconds"]
            tokens = event["usage"].get("completion_tokens")
            # Some servers (llama.cpp) send no token counts when streaming.
            counted = f"{tokens} tokens, first" if tokens is not None else "first token"
            err_console.print(f"[dim]{counted} after {seconds:.2f} s[/]")
            return event
    return None
