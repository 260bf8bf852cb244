"""`tuneyard chat MODEL`: an interactive, streaming conversation with any model (or one shot)."""

from __future__ import annotations

import sys

import typer

from tuneyard.terminal import ProjectOption, cli_session, console, err_console, fail


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
    project: str = ProjectOption,
):
    """Chat with a model; answers stream as they are generated. Ctrl-D or /exit ends it."""
    from tuneyard.chat import service
    from tuneyard.chat.schemas import ChatParams, ChatRequest
    from tuneyard.errors import Invalid
    from tuneyard.inference.process import running_inference, stop_inference

    try:
        params = ChatParams(
            system=system,
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
            max_tokens=max_tokens,
            seed=seed,
        )
    except ValueError as exc:
        fail(str(exc))
    started_inference = running_inference() is None
    session_id = None
    interactive = prompt is None
    if interactive:
        err_console.print(f"Chatting with {model}. Ctrl-D or /exit ends the conversation.")
    try:
        while True:
            text = prompt if not interactive else _read_line()
            if text is None or text.strip() in ("/exit", "/quit"):
                break
            if not text.strip():
                continue
            request = ChatRequest(
                model=model,
                messages=[{"role": "user", "content": text}],
                params=params,
                session_id=session_id,
            )
            with cli_session(project) as (session, principal):
                turn = service.prepare_turn(session, principal, request)
            session_id = turn.session_id
            failed = _print_answer(service.run_turn(turn))
            if not interactive:
                if failed:
                    raise typer.Exit(1)
                break
    except Invalid as exc:
        fail(exc.message)
    finally:
        if started_inference and running_inference() is not None:
            stop_inference()


def _read_line() -> str | None:
    try:
        return console.input("[bold]you>[/] ")
    except EOFError:
        return None


def _print_answer(events) -> bool:
    """Stream the answer to stdout; True when it failed."""
    for event in events:
        if "delta" in event:
            sys.stdout.write(event["delta"])
            sys.stdout.flush()
        elif "error" in event:
            sys.stdout.write("\n")
            err_console.print(f"[bold red]Error:[/] {event['detail']}", highlight=False)
            return True
        elif event.get("done"):
            sys.stdout.write("\n")
            seconds = event["first_token_seconds"]
            tokens = event["usage"].get("completion_tokens")
            # Some servers (llama.cpp) send no token counts when streaming.
            counted = f"{tokens} tokens, first" if tokens is not None else "first token"
            err_console.print(f"[dim]{counted} after {seconds:.2f} s[/]")
    return False
