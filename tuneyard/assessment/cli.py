"""`tuneyard assess`: run an assessment (or preview its prompts), follow it, read its summary
and rows, compare two runs record by record, export them, turn verdicts into a preference
dataset, and check a customized model's fidelity across the lifecycle."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from tuneyard.terminal import (
    JsonOption,
    api,
    console,
    err_console,
    fail,
    find_by_name,
    follow_job,
    print_json,
    print_record,
    print_table,
)

app = typer.Typer(
    help="Assess models on a dataset: candidates, an optional judge, reference metrics.",
    no_args_is_help=True,
)
WaitOption = typer.Option(
    False, "--wait", help="Follow it with a live progress bar until it ends; Ctrl-C cancels it."
)
ANSWER_CHARS = 60


def find(client, ref: str) -> dict[str, Any]:
    """An assessment by id or name."""
    return find_by_name(client, "/assessments", ref, "name")


def _url(assessment: dict[str, Any]) -> str:
    return f"/assessments/{assessment['id']}"


def _request(
    client,
    *,
    name: str | None,
    data: str | None,
    models: list[str],
    prompt: str,
    system: str | None,
    size: int | None,
    seed: int | None,
    temperature: float,
    max_tokens: int,
    judge: str | None,
    judge_kind: str | None,
    judge_prompt: str | None,
    judge_system: str | None,
    reference: str | None,
    metrics: list[str],
) -> dict[str, Any]:
    """The request body the options describe (the judge prompt defaults to the built-in one
    for its kind)."""
    if not name or not data or not models:
        fail("Give --name, --data and at least one --model (or --file with the request).")
    if len(models) > 2:
        fail("An assessment compares one or two candidates: give --model once or twice.")
    if size is None:
        size = client.get(f"/datasets/{_dataset_id(client, data)}")["record_count"]
    params = {"temperature": temperature, "max_tokens": max_tokens}
    body: dict[str, Any] = {
        "name": name,
        "dataset_id": data,
        "sample": {"size": size, "seed": seed},
        "candidates": [
            {"model": model, "system": system, "prompt": prompt, "params": params}
            for model in models
        ],
        "reference_column": reference,
    }
    if metrics:
        body["metrics"] = metrics
    if judge:
        kind = judge_kind or ("pairwise" if len(models) == 2 else "score")
        builtin = {item["kind"]: item for item in client.get("/assessments/judge-prompts")}[kind]
        body["judge"] = {
            "model": judge,
            "kind": kind,
            "prompt": judge_prompt or builtin["prompt"],
            "system": judge_system if judge_system is not None else builtin["system"],
        }
    elif judge_kind or judge_prompt or judge_system:
        fail("--judge-kind, --judge-prompt and --judge-system need --judge MODEL.")
    return body


def _dataset_id(client, ref: str) -> str:
    from tuneyard.datasets.cli import find as find_dataset

    return find_dataset(client, ref)["id"]


def _text(value: str) -> str:
    """A prompt given on the command line, or the contents of the file named by @path."""
    if value.startswith("@"):
        path = Path(value[1:])
        if not path.is_file():
            fail(f"No file {path} to read the prompt from.")
        return path.read_text(encoding="utf-8")
    return value


def _print_preview(preview: dict[str, Any]) -> None:
    for record in preview["records"]:
        console.rule(f"record {record['record_index']}")
        asked = [("candidate", prompt) for prompt in record["candidates"]]
        asked += [("judge", prompt) for prompt in record["judge"]]
        for index, (who, prompt) in enumerate(asked):
            label = f"{who} {'AB'[index]}" if who == "candidate" else who
            if prompt["system"]:
                console.print(f"[bold]{label} system:[/] ", end="")
                console.print(prompt["system"], markup=False, highlight=False)
            console.print(f"[bold]{label} prompt:[/] ", end="")
            console.print(prompt["prompt"], markup=False, highlight=False)
    err_console.print(
        f"{len(preview['records'])} of the sample's {preview['sample_size']} records shown."
    )


def _print_summary(assessment: dict[str, Any]) -> None:
    summary = assessment.get("summary") or {}
    for line in summary.get("lines", []):
        console.print(line, markup=False, highlight=False)


@app.command("run")
def run(
    name: str = typer.Option(None, "--name", help="Unique in the project."),
    data: str = typer.Option(None, "--data", help="Dataset: name or id."),
    model: list[str] = typer.Option(
        [], "--model", help="A candidate: kind:id or a name; once or twice."
    ),
    prompt: str = typer.Option(
        "{{prompt}}", "--prompt", help="The user message, with {{column}} placeholders (@file)."
    ),
    system: str = typer.Option(None, "--system", help="The candidates' system prompt (@file)."),
    size: int = typer.Option(None, "--size", min=1, help="Records to assess (default: all)."),
    seed: int = typer.Option(None, "--seed", min=0, help="Draw them at random with this seed."),
    temperature: float = typer.Option(0.0, "--temperature", min=0, max=2),
    max_tokens: int = typer.Option(256, "--max-tokens", min=1),
    judge: str = typer.Option(None, "--judge", help="A judge model: kind:id or a name."),
    judge_kind: str = typer.Option(
        None, "--judge-kind", help="score or pairwise (default: pairwise for two candidates)."
    ),
    judge_prompt: str = typer.Option(
        None, "--judge-prompt", help="Default: the built-in prompt of its kind (@file)."
    ),
    judge_system: str = typer.Option(None, "--judge-system", help="(@file)"),
    reference: str = typer.Option(None, "--reference", help="The column of reference answers."),
    metric: list[str] = typer.Option(
        [], "--metric", help="A reference metric (repeat); default: the default ones."
    ),
    file: Path = typer.Option(
        None, "--file", exists=True, dir_okay=False, help="The whole request as a JSON file."
    ),
    preview: bool = typer.Option(
        False, "--preview", help="Print the prompts of up to 5 records; run nothing."
    ),
    wait: bool = WaitOption,
):
    """Start an assessment (or --preview its prompts); the server's worker runs it."""
    with api() as client:
        if file is not None:
            try:
                body = json.loads(file.read_text(encoding="utf-8"))
            except ValueError as exc:
                fail(f"{file} is not JSON: {exc}")
        else:
            body = _request(
                client,
                name=name,
                data=data,
                models=model,
                prompt=_text(prompt),
                system=_text(system) if system else None,
                size=size,
                seed=seed,
                temperature=temperature,
                max_tokens=max_tokens,
                judge=judge,
                judge_kind=judge_kind,
                judge_prompt=_text(judge_prompt) if judge_prompt else None,
                judge_system=_text(judge_system) if judge_system else None,
                reference=reference,
                metrics=metric,
            )
        if preview:
            _print_preview(client.post("/assessments/preview", body))
            return
        accepted = client.post("/assessments", body)
        console.print(f"Assessment {accepted['id']} queued (job {accepted['job_id']}).")
        if not wait:
            err_console.print(
                f"The server runs it; follow it with `tuneyard assess show {accepted['id']}`."
            )
            return
        follow_job(client, accepted["job_id"])
        _print_summary(client.get(f"/assessments/{accepted['id']}"))


@app.command("list")
def list_(as_json: bool = JsonOption):
    """List assessments, newest first."""
    with api() as client:
        rows = client.every("/assessments")
    if as_json:
        print_json(rows)
    else:
        print_table(rows, ["id", "name", "dataset_name", "status", "progress", "row_count"])


@app.command("show")
def show(assessment: str, as_json: bool = JsonOption):
    """Show an assessment: its status and its summary."""
    with api() as client:
        found = find(client, assessment)
    if as_json:
        print_json(found)
        return
    print_record(found, skip=("config", "summary"))
    _print_summary(found)


def _short(text: str | None) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= ANSWER_CHARS else text[: ANSWER_CHARS - 1] + "…"


def _row_line(row: dict[str, Any]) -> dict[str, Any]:
    line: dict[str, Any] = {"position": row["position"], "status": row["status"]}
    for index, answer in enumerate(row["answers"]):
        label = chr(ord("A") + index)
        line[label] = _short(answer.get("error") and f"error: {answer['error']}" or answer["text"])
    verdict = row.get("verdict") or {}
    if "winner" in verdict:
        line["winner"] = verdict["winner"] if verdict["winner"] is not None else "unparsed"
    if "scores" in verdict:
        line["scores"] = ", ".join("-" if s is None else f"{s:g}" for s in verdict["scores"])
    return line


@app.command("results")
def results(
    assessment: str,
    status: str = typer.Option(None, "--status", help="pending, done or error."),
    as_json: bool = JsonOption,
):
    """The rows: each candidate's answer and the verdict (whole rows with --json)."""
    with api() as client:
        url = f"{_url(find(client, assessment))}/results"
        rows = client.every(url, status=status)
    if as_json:
        print_json(rows)
        return
    lines = [_row_line(row) for row in rows]
    columns = list(dict.fromkeys(key for line in lines for key in line)) or ["position"]
    print_table(lines, columns)


def _side_text(side: dict[str, Any] | None, candidate: int) -> tuple[str, str]:
    """(the followed candidate's answer, its figure) of one run's row, for the table."""
    if side is None:
        return "(not in its sample)", ""
    answers = side["answers"]
    answer = answers[candidate] if candidate < len(answers) else {}
    text = _short(answer.get("error") and f"error: {answer['error']}" or answer.get("text"))
    verdict = side.get("verdict") or {}
    value = side.get("value")
    if "winner" in verdict:
        figure = {None: "unread", 1.0: "win", 0.5: "tie", 0.0: "loss"}[value]
    elif "scores" in verdict:
        figure = "unread" if value is None else f"{value:g}"
    else:
        figure = ""
    return text, figure


def _compare_line(row: dict[str, Any], summary: dict[str, Any]) -> dict[str, Any]:
    first, first_figure = _side_text(row["first"], summary["first"]["candidate"])
    second, second_figure = _side_text(row["second"], summary["second"]["candidate"])
    prompt = next(
        (side["answers"][0]["prompt"] for side in (row["first"], row["second"]) if side),
        "",
    )
    return {
        "record": row["record_index"],
        "prompt": _short(prompt),
        "first": first,
        "second": second,
        "first_verdict": first_figure,
        "second_verdict": second_figure,
        "changed": row["changed"] or "",
    }


@app.command("compare")
def compare(
    first: str = typer.Argument(..., help="The first run (e.g. before): name or id."),
    second: str = typer.Argument(..., help="The other one, of the same dataset (e.g. after)."),
    candidate: int = typer.Option(
        0, "--candidate", min=0, help="The first's candidate followed (0 is A)."
    ),
    other_candidate: int = typer.Option(
        0, "--other-candidate", min=0, help="The second's candidate followed."
    ),
    changed: str = typer.Option(
        None, "--changed", help="Only records where the second did better, worse or the same."
    ),
    as_json: bool = JsonOption,
):
    """Two finished assessments of the same dataset side by side, record by record: each
    record marked better, worse or the same, and the difference with its 95% interval."""
    from tuneyard.client import PAGE

    with api() as client:
        url = f"{_url(find(client, first))}/compare/{find(client, second)['id']}"
        params = {"candidate": candidate, "other_candidate": other_candidate, "changed": changed}
        found = client.get(url, limit=PAGE, offset=0, **params)
        rows = found["items"]
        while len(rows) < found["total"]:
            more = client.get(url, limit=PAGE, offset=len(rows), **params)["items"]
            if not more:
                break
            rows += more
    summary = found["summary"]
    if as_json:
        print_json({"summary": summary, "items": rows, "total": found["total"]})
        return
    print_table(
        [_compare_line(row, summary) for row in rows],
        ["record", "prompt", "first", "second", "first_verdict", "second_verdict", "changed"],
    )
    for which in ("first", "second"):
        side = summary[which]
        err_console.print(f"{which}: {side['name']} (candidate {side['label']}, {side['model']})")
    for line in summary["lines"]:
        console.print(line, markup=False, highlight=False, soft_wrap=True)


@app.command("export")
def export(
    assessment: str,
    format: str = typer.Option("csv", "--format", help="csv or jsonl."),
    output: Path = typer.Option(
        None, "--output", "-o", dir_okay=False, help="Write here (default: standard output)."
    ),
):
    """Every row as CSV or JSONL."""
    import sys

    if format not in ("csv", "jsonl"):
        fail("--format is csv or jsonl.")
    with api() as client:
        url = f"{_url(find(client, assessment))}/export"
        with client.stream("GET", url, params={"format": format}) as response:
            if output is None:
                for chunk in response.iter_text():
                    sys.stdout.write(chunk)
                return
            with output.open("w", encoding="utf-8", newline="") as handle:
                for chunk in response.iter_text():
                    handle.write(chunk)
    err_console.print(f"Wrote {output}.")


@app.command("cancel")
def cancel(assessment: str):
    """Stop a run; the rows it finished are kept, and resume runs the rest."""
    with api() as client:
        state = client.post(f"{_url(find(client, assessment))}/cancel")["status"]
    console.print(
        f"Assessment {assessment}: {'cancelled' if state == 'cancelled' else 'stopping'}."
    )


@app.command("resume")
def resume(assessment: str, wait: bool = WaitOption):
    """Run the rows not yet answered (and those where a call failed)."""
    with api() as client:
        found = find(client, assessment)
        job_id = client.post(f"{_url(found)}/resume")["job_id"]
        console.print(f"Assessment {found['name']} resumes (job {job_id}).")
        if wait:
            follow_job(client, job_id)
            _print_summary(client.get(_url(found)))


@app.command("rm")
def remove(assessment: str):
    """Delete an assessment and its rows."""
    with api() as client:
        found = find(client, assessment)
        client.delete(_url(found))
    console.print(f"Deleted assessment {found['name']}.")


@app.command("prefs")
def preference_dataset(
    assessment: str,
    name: str = typer.Option(..., "--name", help="The new dataset's name."),
    candidate: int = typer.Option(
        0, "--candidate", min=0, max=1, help="Scored runs: whose low scores (0 is A)."
    ),
    max_score: float = typer.Option(
        5, "--max-score", min=1, max=10, help="Scored runs: rows scored this or lower."
    ),
    wait: bool = typer.Option(True, "--wait/--no-wait", help="Wait for the dataset's parse."),
):
    """A preference dataset (prompt, chosen, rejected) from a judged run: the winner chosen
    (pairwise), or the reference chosen over low-scored answers (scored)."""
    body = {"name": name, "candidate": candidate, "max_score": max_score}
    with api() as client:
        dataset = client.post(f"{_url(find(client, assessment))}/preference-dataset", body)
        console.print(f"Dataset {dataset['name']} ({dataset['id']}) is being parsed.")
        if dataset["left_out"]:
            err_console.print(
                f"{dataset['left_out']} of {dataset['pairs'] + dataset['left_out']} pairs were "
                "left out: longer than a dataset line may be (TUNEYARD_DATASET_MAX_LINE_CHARS)."
            )
        if wait:
            follow_job(client, dataset["job_id"])
            shown = client.get(f"/datasets/{dataset['id']}")
            console.print(f"Dataset {shown['name']}: {shown['record_count']} preference pairs.")


@app.command("fidelity")
def fidelity(
    customized: str = typer.Argument(..., help="A customized model: name or id."),
    data: str = typer.Option(None, "--data", help="Default: the dataset it was trained on."),
    size: int = typer.Option(50, "--size", min=1, help="Records (fewer if it has fewer)."),
    max_tokens: int = typer.Option(128, "--max-tokens", min=1),
    wait: bool = WaitOption,
):
    """Check that a customized model's complete and live models answer as it does."""
    from tuneyard.client import path_part

    body = {"dataset_id": data, "size": size, "max_tokens": max_tokens}
    with api() as client:
        accepted = client.post(f"/customized-models/{path_part(customized)}/fidelity", body)
        console.print(f"Fidelity check {accepted['id']} queued (job {accepted['job_id']}).")
        if wait:
            follow_job(client, accepted["job_id"])
            _print_summary(client.get(f"/assessments/{accepted['id']}"))


@app.command("judge-prompts")
def judge_prompts(as_json: bool = JsonOption):
    """The built-in judge prompts to start from."""
    with api() as client:
        prompts = client.get("/assessments/judge-prompts")
    if as_json:
        print_json(prompts)
        return
    for item in prompts:
        console.rule(item["kind"])
        console.print(item["description"], markup=False, highlight=False)
        console.print(item["prompt"], markup=False, highlight=False)
