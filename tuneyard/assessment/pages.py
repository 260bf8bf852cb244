"""Console pages for assessments: the list with a new-assessment form (and its preview), and
one assessment's progress, summary (win-rate bars with their intervals, score histogram),
rows with both answers side by side, another finished run of the same dataset beside it record
by record, and downloads."""

from __future__ import annotations

from typing import Any

from fastapi.responses import RedirectResponse, Response, StreamingResponse
from nicegui import app, ui
from pydantic import ValidationError

from tuneyard import modelref
from tuneyard.assessment import compare, prompts, results, service
from tuneyard.assessment.routes import EXPORT_TYPES
from tuneyard.assessment.schemas import AssessmentCreate
from tuneyard.console.session import SignedOut, act, browser_token, call, fetch, read, run_signed_in
from tuneyard.console.shell import console_page
from tuneyard.console.widgets import (
    PagedTable,
    column,
    confirm_delete,
    error_label,
    facts,
    heading,
    needs,
    status_badge,
    when,
)
from tuneyard.datasets import service as datasets
from tuneyard.errors import AppError

COLUMNS = [
    column("name", "Name"),
    column("dataset_name", "Dataset", wide_only=True),
    column("models", "Models", wide_only="gt-sm"),
    column("status", "Status"),
    column("progress", "Progress", wide_only=True),
    column("created", "Created", wide_only="gt-sm"),
]
ROW_COLUMNS = [
    column("position", "#"),
    column("status", "Status", wide_only=True),
    column("prompt", "Prompt", wide_only="gt-sm"),
    column("A", "A"),
    column("B", "B"),
    column("verdict", "Verdict"),
]
ROW_STATUSES = {"": "All rows", "done": "Answered", "error": "A call failed", "pending": "Pending"}
WINNERS = {"": "Any verdict", "A": "A wins", "B": "B wins", "tie": "Tie", "unparsed": "Unread"}
COMPARE_COLUMNS = [
    column("record", "Record"),
    column("prompt", "Prompt", wide_only="gt-sm"),
    column("first", "This run"),
    column("second", "Other run"),
    column("first_verdict", "This verdict", wide_only=True),
    column("second_verdict", "Other verdict", wide_only=True),
    column("changed", "Changed"),
]
CHANGES = {
    "": "Every record",
    "better": "The other did better",
    "worse": "The other did worse",
    "same": "The same",
}
ACTIVE = ("queued", "running")
POLL_SECONDS = 1.0


def _list_row(session, row) -> dict[str, Any]:
    shown = service.describe(session, row)
    models = " vs ".join(c["name"] for c in row.config.get("candidates", []))
    return {
        "id": row.id,
        "name": row.name,
        "dataset_name": row.dataset_name,
        "models": models,
        "status": row.status,
        "progress": f"{shown['progress']:.0f}%",
        "created": when(row.created_at),
    }


@console_page("/assessments", "Assessment", "/assessments")
def assessments_page():
    heading(
        "Assessment",
        "Is the fine-tune better, and by how much? One or two candidate models answer a sample "
        "of a dataset; a judge model or reference metrics say how well.",
    )

    def fetch_rows(session, principal, limit, offset):
        rows, total = service.list_assessments(session, principal, limit, offset)
        return [_list_row(session, row) for row in rows], total

    table = PagedTable(
        COLUMNS,
        fetch_rows,
        link=lambda row: f"/assessments/{row['id']}",
        empty="No assessments yet. Start one below.",
    )
    table.table.props('data-testid="assessment-table"')
    _new_form()


def _choices(session, principal) -> dict[str, Any]:
    ready, _total = datasets.list_datasets(session, principal, 500, 0)
    models = modelref.list_models(session, principal, modelref.Capability.CHAT)
    return {
        "datasets": {d.id: d.name for d in ready if d.status == "ready"},
        "fields": {d.id: list(d.fields or []) for d in ready if d.status == "ready"},
        "models": {str(m.ref): f"{m.name} ({m.kind.value})" for m in models},
    }


def _new_form() -> None:
    choices = read(_choices)
    missing = []
    if not choices["datasets"]:
        missing.append(("a dataset", "/datasets"))
    if not choices["models"]:
        missing.append(("a model", "/base-models"))
    needs("An assessment", missing)
    if missing:
        return
    first_dataset = next(iter(choices["datasets"]))
    with ui.card().classes("w-full").props('flat bordered data-testid="assessment-form"'):
        ui.label("New assessment").classes("text-lg font-semibold")
        with ui.element("div").classes("grid grid-cols-1 md:grid-cols-2 gap-3 w-full"):
            name = ui.input("Name").props('data-testid="assessment-name"')
            dataset = ui.select(choices["datasets"], label="Dataset", value=first_dataset).props(
                'data-testid="assessment-dataset"'
            )
            size = ui.number("Records", value=20, min=1, precision=0).props(
                'data-testid="assessment-size"'
            )
            seed = ui.number("Seed (empty: the first records)", min=0, precision=0).props(
                'data-testid="assessment-seed"'
            )
            model_a = ui.select(choices["models"], label="Candidate A", with_input=True).props(
                'data-testid="assessment-model-a"'
            )
            model_b = ui.select(
                {"": "None", **choices["models"]}, label="Candidate B (optional)", value=""
            ).props('data-testid="assessment-model-b"')
        system = ui.textarea("Candidates' system prompt (optional)").classes("w-full")
        prompt = ui.textarea("Candidates' prompt", value="{{prompt}}").classes("w-full")
        prompt.props('data-testid="assessment-prompt"')
        columns_hint = ui.label("").classes("text-sm text-grey-8")
        with ui.element("div").classes("grid grid-cols-1 md:grid-cols-3 gap-3 w-full"):
            judge = ui.select(
                {"": "No judge", **choices["models"]}, label="Judge (optional)", value=""
            ).props('data-testid="assessment-judge"')
            kind = ui.select(
                {"score": "Score 1-10 against the reference", "pairwise": "Pick the better"},
                label="Judge's job",
                value="pairwise",
            ).props('data-testid="assessment-judge-kind"')
            reference = ui.select({"": "None"}, label="Reference column", value="").props(
                'data-testid="assessment-reference"'
            )
        judge_system = ui.textarea(
            "Judge's system prompt", value=prompts.BUILTIN_JUDGE_PROMPTS["pairwise"]["system"]
        ).classes("w-full")
        judge_prompt = ui.textarea(
            "Judge's prompt", value=prompts.BUILTIN_JUDGE_PROMPTS["pairwise"]["prompt"]
        ).classes("w-full")
        judge_prompt.props('data-testid="assessment-judge-prompt" autogrow')
        ui.label(
            "A judge prompt shows {{ResponseA}} (and {{ResponseB}} for pairwise), and may use "
            "{{ref_answer}}, {{Question}} and the columns."
        ).classes("text-sm text-grey-8")
        problem = error_label("assessment-error")
        preview_box = ui.column().classes("w-full gap-2")

        def follow_dataset() -> None:
            fields = choices["fields"].get(dataset.value, [])
            columns_hint.text = "Columns: " + ", ".join(f"{{{{{f}}}}}" for f in fields)
            reference.options = {"": "None", **{f: f for f in fields}}
            reference.value = next(
                (f for f in ("completion", "answer", "output", "chosen") if f in fields), ""
            )
            reference.update()

        def follow_kind() -> None:
            builtin = prompts.BUILTIN_JUDGE_PROMPTS[kind.value]
            judge_system.value = builtin["system"]
            judge_prompt.value = builtin["prompt"]

        dataset.on_value_change(follow_dataset)
        kind.on_value_change(follow_kind)
        follow_dataset()

        def request() -> AssessmentCreate | None:
            body: dict[str, Any] = {
                "name": (name.value or "").strip() or "preview",
                "dataset_id": dataset.value,
                "sample": {
                    "size": int(size.value or 0),
                    "seed": int(seed.value) if seed.value is not None else None,
                },
                "candidates": [
                    {"model": model, "system": system.value or None, "prompt": prompt.value}
                    for model in (model_a.value, model_b.value)
                    if model
                ],
                "reference_column": reference.value or None,
            }
            if judge.value:
                body["judge"] = {
                    "model": judge.value,
                    "kind": kind.value,
                    "system": judge_system.value or None,
                    "prompt": judge_prompt.value,
                }
            try:
                return AssessmentCreate(**body)
            except ValidationError as exc:
                problem.text = "; ".join(
                    f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
                )
                return None

        async def show_preview() -> None:
            problem.text = ""
            checked = request()
            if checked is None:
                return
            shown = await act(call(service.preview, checked), error_label=problem)
            preview_box.clear()
            if shown is None:
                return
            with preview_box:
                ui.label(
                    f"The first {len(shown['records'])} of {shown['sample_size']} records, as "
                    "each model will get them:"
                ).classes("font-medium")
                for record in shown["records"]:
                    with (
                        ui.expansion(f"Record {record['record_index']}", value=True)
                        .classes("w-full")
                        .props('dense data-testid="preview-record"'),
                    ):
                        asked = [
                            (f"Candidate {'AB'[i]}", p) for i, p in enumerate(record["candidates"])
                        ]
                        asked += [("Judge", p) for p in record["judge"]]
                        for who, item in asked:
                            ui.label(who).classes("text-xs uppercase text-grey-7")
                            if item["system"]:
                                ui.label(f"system: {item['system']}").classes(
                                    "whitespace-pre-wrap wrap-anywhere text-grey-8"
                                )
                            ui.label(item["prompt"]).classes("whitespace-pre-wrap wrap-anywhere")

        async def run() -> None:
            problem.text = ""
            if not (name.value or "").strip():
                problem.text = "Name the assessment."
                return
            checked = request()
            if checked is None:
                return
            created = await act(
                lambda session, principal: (
                    service.create_assessment(session, principal, checked).id
                ),
                error_label=problem,
            )
            if created is not None:
                ui.navigate.to(f"/assessments/{created}")

        with ui.row().classes("gap-2"):
            ui.button("Preview", icon="visibility", on_click=show_preview).props(
                'outline no-caps data-testid="assessment-preview"'
            )
            ui.button("Run", icon="play_arrow", on_click=run).props(
                'no-caps data-testid="assessment-run"'
            )


# -- one assessment ---------------------------------------------------------------------------


@console_page("/assessments/{assessment_id}", "Assessment", "/assessments")
async def assessment_page(assessment_id: str):
    shown = await fetch(
        lambda session, principal: service.describe(
            session, service.get_assessment(session, principal, assessment_id)
        )
    )
    config = shown["config"]
    heading(shown["name"], f"On {shown['row_count']} records of dataset {shown['dataset_name']}.")
    with ui.row().classes("items-center gap-3 w-full"):
        badge = status_badge(shown["status"])
        bar = ui.linear_progress(value=shown["progress"] / 100, show_value=False).classes(
            "max-w-md"
        )
        message = (
            ui.label(shown["message"])
            .classes("text-grey-8")
            .props('data-testid="assessment-message"')
        )
    candidates = config["candidates"]
    judge = config.get("judge")
    facts(
        [
            *[(f"Candidate {chr(65 + i)}", c["name"]) for i, c in enumerate(candidates)],
            ("Judge", f"{judge['name']} ({judge['kind']})" if judge else "none"),
            ("Reference column", config.get("reference_column") or "none"),
            ("Metrics", ", ".join(config.get("metrics") or []) or "none"),
        ]
    )
    if shown["error"]:
        ui.label(shown["error"]).classes("text-negative whitespace-pre-wrap")
    _actions(shown)
    if shown["summary"]:
        _summary(shown["summary"], judge)
    _rows(assessment_id, len(candidates), judge)
    if shown["status"] == "succeeded":
        _compare(shown)

    if shown["status"] in ACTIVE:

        async def poll() -> None:
            try:
                now = await fetch(
                    lambda session, principal: service.describe(
                        session, service.get_assessment(session, principal, assessment_id)
                    )
                )
            except (AppError, SignedOut):
                timer.deactivate()
                return
            bar.value = now["progress"] / 100
            message.text = now["message"]
            if now["status"] not in ACTIVE:
                timer.deactivate()
                ui.navigate.reload()
            badge.text = now["status"]

        timer = ui.timer(POLL_SECONDS, poll)


def _actions(shown: dict[str, Any]) -> None:
    assessment_id = shown["id"]
    with ui.row().classes("gap-2"):
        if shown["status"] in ACTIVE:

            async def cancel() -> None:
                done = await act(call(service.cancel_assessment, assessment_id), "Cancelling")
                if done is not None:
                    ui.navigate.reload()

            ui.button("Cancel", icon="stop", on_click=cancel).props(
                'outline no-caps data-testid="assessment-cancel"'
            )
        else:

            async def resume() -> None:
                done = await act(call(service.resume_assessment, assessment_id), "Resumed")
                if done is not None:
                    ui.navigate.reload()

            if shown["status"] != "succeeded" or (shown["summary"] or {}).get("rows", {}).get(
                "error"
            ):
                ui.button("Resume", icon="play_arrow", on_click=resume).props(
                    'outline no-caps data-testid="assessment-resume"'
                )
            for fmt in ("csv", "jsonl"):
                with ui.link(target=f"/download/assessments/{assessment_id}?format={fmt}").classes(
                    "no-underline"
                ):
                    ui.button(f"Download {fmt.upper()}", icon="download").props(
                        f'outline no-caps data-testid="download-{fmt}"'
                    )
            ui.button(
                "Delete",
                icon="delete",
                color="negative",
                on_click=lambda: confirm_delete(
                    f"Delete assessment {shown['name']}?",
                    "Its rows and summary are deleted; the models and the dataset stay.",
                    call(service.delete_assessment, assessment_id),
                    done=f"Deleted {shown['name']}",
                    then=lambda: ui.navigate.to("/assessments"),
                ),
            ).props('outline no-caps data-testid="assessment-delete"')


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.0f}%"


def _summary(summary: dict[str, Any], judge: dict[str, Any] | None) -> None:
    with ui.card().classes("w-full").props('flat bordered data-testid="assessment-summary"'):
        ui.label("Summary").classes("text-lg font-semibold")
        for line in summary.get("lines", []):
            ui.label(line).classes("wrap-anywhere")
        verdicts = summary.get("judge") or {}
        if verdicts.get("kind") == "pairwise":
            _win_rates(verdicts)
        elif verdicts.get("kind") == "score":
            _histogram(verdicts)


def _win_rates(verdicts: dict[str, Any]) -> None:
    """A bar per candidate: its win rate, the 95% interval as a lighter band, 50% marked."""
    ui.label("Win rate (ties count half), 95% interval").classes("font-medium mt-2")
    for label, rate in verdicts["win_rate"].items():
        mean, interval = rate.get("mean"), rate.get("ci")
        with ui.row().classes("items-center gap-3 w-full flex-nowrap"):
            ui.label(label).classes("w-6 font-semibold")
            with (
                ui.element("div")
                .classes("relative h-5 bg-grey-3 rounded grow")
                .props(f'data-testid="win-rate-{label}"')
            ):
                if interval is not None:
                    low, high = interval
                    ui.element("div").classes("absolute h-5 bg-teal-2 rounded").style(
                        f"left: {100 * low:.1f}%; width: {100 * (high - low):.1f}%"
                    )
                if mean is not None:
                    ui.element("div").classes("absolute h-5 w-1 bg-primary").style(
                        f"left: calc({100 * mean:.1f}% - 2px)"
                    )
                ui.element("div").classes("absolute h-5 w-px bg-grey-8").style("left: 50%")
            text = _percent(mean)
            if interval is not None:
                text += f" ({_percent(interval[0])} to {_percent(interval[1])})"
            ui.label(text).classes("w-40 text-right")
    noise = verdicts.get("within_noise")
    if noise is not None:
        ui.label(
            "The difference is within noise." if noise else "The difference is beyond noise."
        ).classes("text-grey-8")


def _histogram(verdicts: dict[str, Any]) -> None:
    ui.label("Scores").classes("font-medium mt-2")
    series = [
        {"name": score["label"], "type": "bar", "data": score.get("histogram", [0] * 10)}
        for score in verdicts["scores"]
    ]
    ui.echart(
        {
            "animation": False,
            "tooltip": {"trigger": "axis"},
            "legend": {"top": 0},
            "grid": {"left": 8, "right": 16, "top": 36, "bottom": 24, "containLabel": True},
            "xAxis": {"type": "category", "data": [str(n) for n in range(1, 11)], "name": "score"},
            "yAxis": {"type": "value", "minInterval": 1, "name": "answers"},
            "series": series,
        }
    ).classes("w-full h-56").props('data-testid="score-histogram"')


def _short(text: str | None, limit: int = 400) -> str:
    text = text or ""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _row_cells(row, count: int) -> dict[str, Any]:
    cells: dict[str, Any] = {
        "position": row.position + 1,
        "status": row.status,
        "prompt": _short(row.answers[0]["prompt"] if row.answers else "", 200),
    }
    for index in range(2):
        answer = row.answers[index] if index < len(row.answers) and index < count else None
        if answer is None:
            cells["AB"[index]] = ""
        elif answer.get("error"):
            cells["AB"[index]] = f"error: {answer['error']}"
        else:
            cells["AB"[index]] = _short(answer.get("text"))
    verdict = row.verdict or {}
    if "winner" in verdict:
        cells["verdict"] = verdict["winner"] or "unread"
    elif "scores" in verdict:
        cells["verdict"] = " / ".join("–" if s is None else f"{s:g}" for s in verdict["scores"])
    else:
        cells["verdict"] = ""
    return cells


def _rows(assessment_id: str, count: int, judge: dict[str, Any] | None) -> None:
    ui.label("Rows").classes("text-lg font-semibold")
    state = {"status": "", "winner": ""}
    with ui.row().classes("gap-3"):
        status = ui.select(ROW_STATUSES, label="Rows", value="").classes("w-48")
        status.props('dense outlined data-testid="rows-status-filter"')
        winner = None
        if judge is not None and judge["kind"] == "pairwise":
            winner = ui.select(WINNERS, label="Verdict", value="").classes("w-48")
            winner.props('dense outlined data-testid="rows-winner-filter"')

    def fetch_rows(session, principal, limit, offset):
        rows, total = results.results(
            session,
            principal,
            assessment_id,
            state["status"] or None,
            limit,
            offset,
            state["winner"] or None,
        )
        return [_row_cells(row, count) for row in rows], total

    columns = [c for c in ROW_COLUMNS if c["name"] != "B" or count == 2]
    table = PagedTable(
        columns,
        fetch_rows,
        row_key="position",
        empty="No rows yet: the sample is drawn when the run starts.",
    )
    table.table.props('data-testid="rows-table"')
    table.table.classes("[&_td]:align-top [&_td]:whitespace-pre-wrap")

    def on_filter() -> None:
        state["status"] = status.value or ""
        state["winner"] = (winner.value or "") if winner is not None else ""
        table.load(1)

    status.on_value_change(on_filter)
    if winner is not None:
        winner.on_value_change(on_filter)


def _compare(shown: dict[str, Any]) -> None:
    """Another finished assessment of the same dataset beside this one, record by record."""
    others = read(
        lambda session, principal: {
            other.id: f"{other.name} ({when(other.finished_at)})"
            for other in compare.comparable(session, principal, shown["id"])
        }
    )
    with ui.card().classes("w-full").props('flat bordered data-testid="compare-card"'):
        ui.label("Compare with another run").classes("text-lg font-semibold")
        if not others:
            ui.label(
                f"No other finished assessment of dataset {shown['dataset_name']} yet; run one "
                "(after a training, say) to see the two side by side, record by record."
            ).classes("text-grey-8")
            return
        ui.label(
            "Another finished assessment of the same dataset, matched by record: where the "
            "other run's first candidate did better, worse or the same as this run's."
        ).classes("text-grey-8")
        other = ui.select(others, label="Other assessment", with_input=True).classes("w-full")
        other.props('data-testid="compare-other"')
        problem = error_label("compare-error")
        shown_box = ui.column().classes("w-full gap-2")

        async def show() -> None:
            shown_box.clear()
            problem.text = ""
            if not other.value:
                return
            other_id = other.value
            summary = await act(
                lambda session, principal: compare.compare(
                    session, principal, shown["id"], other_id, limit=1
                )["summary"],
                error_label=problem,
            )
            if summary is None:
                return
            with shown_box:
                _side_by_side(shown["id"], other_id, summary)

        other.on_value_change(show)


def _compare_cell(side: dict[str, Any] | None, candidate: int) -> tuple[str, str]:
    if side is None:
        return "(not in its sample)", ""
    answers = side["answers"]
    answer = answers[candidate] if candidate < len(answers) else {}
    text = f"error: {answer['error']}" if answer.get("error") else _short(answer.get("text"))
    verdict, value = side["verdict"] or {}, side["value"]
    if "winner" in verdict:
        return text, {None: "unread", 1.0: "win", 0.5: "tie", 0.0: "loss"}[value]
    if "scores" in verdict:
        return text, "unread" if value is None else f"{value:g}"
    return text, ""


def _side_by_side(first_id: str, second_id: str, summary: dict[str, Any]) -> None:
    with ui.column().classes("w-full gap-1").props('data-testid="compare-summary"'):
        for line in summary["lines"]:
            ui.label(line).classes("wrap-anywhere")
    state = {"changed": ""}
    changed = ui.select(CHANGES, label="Records", value="").classes("w-56")
    changed.props('dense outlined data-testid="compare-changed-filter"')
    first_candidate = summary["first"]["candidate"]
    second_candidate = summary["second"]["candidate"]

    def fetch_rows(session, principal, limit, offset):
        found = compare.compare(
            session,
            principal,
            first_id,
            second_id,
            changed=state["changed"] or None,
            limit=limit,
            offset=offset,
        )
        rows = []
        for item in found["items"]:
            first, first_verdict = _compare_cell(item["first"], first_candidate)
            second, second_verdict = _compare_cell(item["second"], second_candidate)
            sides = [side for side in (item["first"], item["second"]) if side]
            rows.append(
                {
                    "record": item["record_index"],
                    "prompt": _short(sides[0]["answers"][0].get("prompt"), 200),
                    "first": first,
                    "second": second,
                    "first_verdict": first_verdict,
                    "second_verdict": second_verdict,
                    "changed": item["changed"] or "",
                }
            )
        return rows, found["total"]

    table = PagedTable(
        COMPARE_COLUMNS, fetch_rows, row_key="record", empty="No records here.", status_column=None
    )
    table.table.props('data-testid="compare-table"')
    table.table.classes("[&_td]:align-top [&_td]:whitespace-pre-wrap")

    def on_filter() -> None:
        state["changed"] = changed.value or ""
        table.load(1)

    changed.on_value_change(on_filter)


@app.get("/download/assessments/{assessment_id}", include_in_schema=False)
async def assessment_download(assessment_id: str, format: str = "csv") -> Response:
    """The rows as CSV or JSONL, signed in by the console's session."""
    try:
        filename, chunks = run_signed_in(
            lambda session, principal: results.export(session, principal, assessment_id, format),
            browser_token(),
        )
    except SignedOut:
        from tuneyard.console.app import MOUNT_PATH

        return RedirectResponse(f"{MOUNT_PATH}/login")
    except AppError as exc:
        return Response(exc.message, status_code=exc.status, media_type="text/plain")
    return StreamingResponse(
        chunks,
        media_type=EXPORT_TYPES[format],
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )
