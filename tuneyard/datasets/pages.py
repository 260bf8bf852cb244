"""Console pages for datasets: the list with uploads, and one dataset's records and statistics."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nicegui import ui

from tuneyard.basemodels import service as base_models
from tuneyard.config import get_settings
from tuneyard.console.jobs import JobWatch, job_card
from tuneyard.console.session import SignedOut, act, call, fetch, read
from tuneyard.console.shell import console_page
from tuneyard.console.widgets import (
    PagedTable,
    cannot,
    column,
    confirm_delete,
    delete_button,
    facts,
    heading,
    link_button,
    needs,
    size_text,
    status_badge,
    when,
)
from tuneyard.datasets import service
from tuneyard.datasets.parsing import FILE_TYPES, MAPPING_EXAMPLE, accepted_formats
from tuneyard.errors import AppError

SECTION = "/datasets"
ACCEPT = ",".join(FILE_TYPES)
PREVIEW_ROWS = 10
PREVIEW_CHARS = 300
# Training's own default, so the first count answers "would my records be truncated?".
DEFAULT_MAX_SEQ_LENGTH = 1024
OVER_LIMIT_COLOR = "#c10015"
BUCKET_COLOR = "#2f5d50"
EMPTY_LIST = (
    "No datasets yet. Upload a .jsonl, .json, .csv or .parquet file below: chat messages, "
    "preference pairs, alpaca or prompt/completion records."
)


def _dataset_rows(session, principal, limit: int, offset: int):
    datasets, total = service.list_datasets(session, principal, limit, offset)
    rows = [
        {
            "id": dataset.id,
            "name": dataset.name,
            "format": f"{dataset.format or '—'} ({dataset.file_type})",
            "records": dataset.record_count if dataset.status == "ready" else "",
            "size": size_text(dataset.size_bytes),
            "status": dataset.status,
            "created": when(dataset.created_at),
        }
        for dataset in datasets
    ]
    return rows, total


def _mapping_error(text: str | None) -> str | None:
    """The service's own words for a column mapping it would refuse (inline validation)."""
    try:
        service.parse_column_mapping(text)
    except AppError as exc:
        return exc.message
    return None


def _name_error(text: str | None) -> str | None:
    name = (text or "").strip()
    if not name:
        return "Required: the name trainings will refer to"
    if len(name) > service.NAME_MAX:
        return f"At most {service.NAME_MAX} characters (got {len(name)})"
    return None


@console_page("/datasets", "Datasets", SECTION)
def datasets_page():
    heading("Datasets", "The records you train on: upload a file, then check its records.")
    datasets = PagedTable(
        [
            column("name", "Name"),
            column("format", "Format (file)"),
            column("records", "Records"),
            column("size", "Size"),
            column("status", "Status"),
            column("created", "Created"),
        ],
        _dataset_rows,
        link=lambda row: f"/datasets/{row['id']}",
        empty=EMPTY_LIST,
    )
    _upload_form(datasets.load)


def _upload_form(refresh_list: Callable[[], None]) -> None:
    # The uploaded file waits in a temporary file until the user presses Create, so the
    # name, description and mapping can still be fixed without sending the file again.
    pending: dict[str, Any] = {"path": None, "filename": None}

    def discard_pending() -> None:
        if pending["path"] is not None:
            with contextlib.suppress(OSError):
                os.unlink(pending["path"])
        pending.update(path=None, filename=None)

    ui.context.client.on_delete(discard_pending)

    with ui.card().classes("w-full").props('data-testid="upload-form"'):
        ui.label("Upload a dataset").classes("text-lg font-semibold")
        ui.label(
            f"A {', '.join(FILE_TYPES)} file of records in one of these formats: "
            f"{accepted_formats()}. The format is detected from the field names."
        ).classes("text-grey-7 text-sm -mt-1")
        with ui.element("div").classes("grid grid-cols-1 md:grid-cols-2 gap-x-4 gap-y-2 w-full"):
            name = ui.input("Name", validation=_name_error).props('data-testid="dataset-name"')
            mapping = ui.input(
                "Column mapping (optional, JSON)",
                placeholder=MAPPING_EXAMPLE,
                validation=_mapping_error,
            ).props('data-testid="column-mapping"')
        description = ui.textarea("Description (optional)").props("autogrow")
        for field in (name, mapping, description):
            field.classes("w-full").props("outlined dense")
        ui.label(
            "Column mapping renames your file's fields to the ones a format uses, e.g. "
            f"{MAPPING_EXAMPLE}."
        ).classes("text-xs text-grey-7 -mt-2")

        async def received(event) -> None:
            discard_pending()
            filename = Path(event.file.name).name
            try:
                service.file_type_of(filename)
            except AppError as exc:
                ui.notify(exc.message, type="negative", multi_line=True)
                upload.reset()
                return
            handle, path = tempfile.mkstemp(prefix="tuneyard-upload-", suffix=Path(filename).suffix)
            os.close(handle)
            await event.file.save(path)
            pending.update(path=path, filename=filename)
            if not (name.value or "").strip():
                name.value = Path(filename).stem[: service.NAME_MAX]
            chosen.text = (
                f"{filename} ({size_text(os.path.getsize(path))}) is uploaded; "
                "press Create dataset to parse it."
            )
            create.enable()

        upload = (
            ui.upload(
                label="Dataset file",
                auto_upload=True,
                max_files=1,
                max_file_size=get_settings().dataset_max_file_bytes,
                on_upload=received,
                on_rejected=lambda: ui.notify(
                    f"The file is larger than {size_text(get_settings().dataset_max_file_bytes)}"
                    "; split it into smaller files.",
                    type="negative",
                ),
            )
            .props(f'accept="{ACCEPT}" flat bordered data-testid="upload"')
            .classes("w-full max-w-sm")
        )
        chosen = ui.label("Choose a file: it uploads at once, with its progress shown.").props(
            'data-testid="upload-state"'
        )
        job_area = ui.column().classes("w-full")

        async def create_dataset() -> None:
            if not (name.validate() and mapping.validate()):
                return
            if pending["path"] is None:
                ui.notify("Choose a file to upload first.", type="warning")
                return
            created = await act(
                call(
                    _create,
                    name=name.value,
                    description=description.value or "",
                    column_mapping=mapping.value,
                    path=pending["path"],
                    filename=pending["filename"],
                )
            )
            if created is None:
                return
            dataset_id, job_id = created
            refresh_list()
            discard_pending()
            upload.reset()
            create.disable()
            chosen.text = "Parsing…"
            job_area.clear()
            with job_area:
                ui.link("Open the dataset's page", f"/datasets/{dataset_id}")

                def finished(job) -> None:
                    refresh_list()
                    if job.status == "succeeded":
                        ui.navigate.to(f"/datasets/{dataset_id}")
                    else:
                        chosen.text = "Parsing did not succeed; fix the file and upload it again."

                JobWatch(job_id, finished)

        create = ui.button("Create dataset", icon="upload", on_click=create_dataset).props(
            'no-caps data-testid="create-dataset"'
        )
        create.disable()


def _create(session, principal, *, name, description, column_mapping, path, filename):
    with open(path, "rb") as content:
        dataset, job = service.create_dataset(
            session,
            principal,
            name=name,
            filename=filename,
            content=content,
            description=description,
            column_mapping=service.parse_column_mapping(column_mapping),
        )
    return dataset.id, job.id


def _dataset_view(session, principal, dataset_id: str) -> dict[str, Any]:
    dataset = service.get_dataset(session, principal, dataset_id)
    return {
        "id": dataset.id,
        "name": dataset.name,
        "description": dataset.description,
        "status": dataset.status,
        "format": dataset.format,
        "fields": list(dataset.fields or []),
        "record_count": dataset.record_count,
        "errors": list(dataset.errors or []),
        "file_type": dataset.file_type,
        "original_filename": dataset.original_filename,
        "size": size_text(dataset.size_bytes),
        "column_mapping": dict(dataset.column_mapping or {}),
        "created": when(dataset.created_at),
        "job_id": dataset.job_id,
    }


@console_page("/datasets/{dataset_id}", "Dataset", SECTION)
def dataset_page(dataset_id: str):
    dataset = read(call(_dataset_view, dataset_id))
    heading(dataset["name"], dataset["description"])
    with ui.row().classes("items-center gap-2"):
        status_badge(dataset["status"])
        if dataset["status"] == "ready":
            ui.label(f"{dataset['record_count']:,} {dataset['format']} records").classes(
                "text-grey-8"
            )
    if dataset["status"] == "parsing" and dataset["job_id"]:
        job_card("Parsing the file", dataset["job_id"])
    if dataset["status"] == "failed":
        with ui.card().classes("w-full bg-red-1").props('flat bordered data-testid="parse-errors"'):
            ui.label("The file could not be parsed:").classes("font-medium")
            for error in dataset["errors"] or ["no reason recorded"]:
                ui.label(error).classes("text-negative whitespace-pre-wrap break-words")
            with ui.row().classes("gap-1"):
                ui.label("Fix the file and upload it again under the same name on")
                ui.link("Datasets", "/datasets")
    _actions(dataset)
    with ui.card().classes("w-full"):
        facts(
            [
                ("File", f"{dataset['original_filename']} ({dataset['size']})"),
                ("Format", dataset["format"] or "detected once parsed"),
                ("Fields", ", ".join(dataset["fields"])),
                (
                    "Column mapping",
                    ", ".join(f"{k} → {v}" for k, v in dataset["column_mapping"].items()),
                ),
                ("Created", dataset["created"]),
            ]
        )
    if dataset["status"] == "ready":
        _preview(dataset)
        _statistics(dataset)


def _actions(dataset: dict[str, Any]) -> None:
    with ui.row().classes("items-center gap-2 flex-wrap"):
        if dataset["status"] == "ready":
            link_button(
                "Train on this dataset", f"/trainings/new?dataset_id={dataset['id']}", "school"
            )
        delete_button(lambda: _confirm_delete(dataset))
    if dataset["status"] == "parsing":
        cannot("Training needs the dataset parsed: wait for the parse job above.")
    elif dataset["status"] != "ready":
        cannot("Training needs a parsed dataset; this one failed to parse (see above).")


def _confirm_delete(dataset: dict[str, Any]) -> None:
    confirm_delete(
        f"Delete dataset {dataset['name']}?",
        "Its uploaded file and parsed records are deleted. Trainings that used it keep their "
        "records, parameters and results.",
        call(service.delete_dataset, dataset["id"]),
        done=f"Deleted dataset {dataset['name']}",
        then=lambda: ui.navigate.to("/datasets"),
    )


def _cell(value: Any) -> str:
    """A record's value as short text: chat messages as 'role: content' lines."""
    if isinstance(value, list) and all(isinstance(item, dict) for item in value):
        text = "\n".join(f"{m.get('role', '?')}: {m.get('content') or ''}" for m in value)
    elif isinstance(value, str):
        text = value
    elif value is None:
        text = ""
    else:
        text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= PREVIEW_CHARS else text[:PREVIEW_CHARS] + "…"


def _preview(dataset: dict[str, Any]) -> None:
    fields = dataset["fields"]

    def page_of_records(session, principal, limit: int, offset: int):
        records, total = service.preview(session, principal, dataset["id"], limit, offset)
        rows = [
            {"#": offset + number + 1, **{field: _cell(record.get(field)) for field in fields}}
            for number, record in enumerate(records)
        ]
        return rows, total

    # Keep the line breaks between chat messages visible inside the wrapped cells.
    ui.add_css(".record-preview td { white-space: pre-wrap; vertical-align: top; }")
    with ui.card().classes("w-full"):
        ui.label("Records").classes("text-lg font-semibold")
        paged = PagedTable(
            [column("#", "#", style="width: 3rem")] + [column(field, field) for field in fields],
            page_of_records,
            rows_per_page=PREVIEW_ROWS,
            empty="The dataset has no records.",
            row_key="#",
            status_column=None,  # a record's own "status" field is plain text
        )
        paged.table.classes("record-preview").props('data-testid="preview"')


def _ready_base_models(session, principal) -> dict[str, str]:
    models, _total = base_models.list_base_models(session, principal, 500, 0)
    return {
        model.id: f"{model.model_name} ({model.technical_name})"
        for model in models
        if model.status == "ready"
    }


def _statistics(dataset: dict[str, Any]) -> None:
    models = read(_ready_base_models)
    with ui.card().classes("w-full").props('data-testid="stats"'):
        ui.label("Statistics").classes("text-lg font-semibold")
        fields_area = ui.column().classes("w-full")
        ui.label("Tokens per record").classes("font-medium mt-2")
        if not models:
            needs("Counting tokens", [("a base model", "/base-models")])
        with ui.row().classes("items-end gap-3 w-full"):
            model = (
                ui.select(models, label="Base model's tokenizer", value=next(iter(models), None))
                .props('outlined dense data-testid="token-model"')
                .classes("w-full sm:w-72")
            )
            max_length = (
                ui.number("Max sequence length", value=DEFAULT_MAX_SEQ_LENGTH, min=1, precision=0)
                .props("outlined dense")
                .classes("w-full sm:w-48")
            )
            count = ui.button("Count tokens", icon="calculate").props("no-caps")
        tokens_area = ui.column().classes("w-full")

    async def load() -> None:
        base_model_id = model.value
        limit = int(max_length.value) if base_model_id and max_length.value else None
        count.props("loading")
        tokens_area.clear()
        error = None
        try:
            try:
                stats = await fetch(
                    call(service.dataset_stats, dataset["id"], base_model_id, limit)
                )
            except AppError as exc:
                if base_model_id is None:
                    raise
                # The characters per field are still worth showing when tokens fail.
                error = exc.message
                stats = await fetch(call(service.dataset_stats, dataset["id"]))
        except SignedOut:
            ui.navigate.to("/login")
            return
        except AppError as exc:
            with fields_area:
                cannot(exc.message)
            return
        finally:
            count.props(remove="loading")
        _field_lengths(fields_area, stats)
        with tokens_area:
            if error:
                cannot(error)
            elif stats.tokens is not None:
                _token_lengths(stats.tokens)
            elif models:
                ui.label("Choose a base model to count tokens with its tokenizer.").classes(
                    "text-grey-7"
                )

    count.on_click(load)
    # Off the page build: counting tokens reads every record.
    ui.timer(0.1, load, once=True)


def _field_lengths(area: ui.column, stats) -> None:
    area.clear()
    with area:
        ui.label(f"{stats.record_count:,} records; characters per field:").classes("text-grey-8")
        ui.table(
            columns=[
                column("field", "Field", align="left"),
                column("min", "Min"),
                column("mean", "Mean"),
                column("max", "Max"),
            ],
            rows=[
                {"field": name, "min": item.min, "mean": f"{item.mean:.1f}", "max": item.max}
                for name, item in stats.fields.items()
            ],
            row_key="field",
        ).props('flat bordered dense wrap-cells hide-bottom data-testid="field-lengths"').classes(
            "w-full"
        )


def _bucket_label(start: int, end: int) -> str:
    # A bucket holds start <= tokens < end.
    return str(start) if end - start == 1 else f"{start}-{end - 1}"


def _token_lengths(tokens) -> None:
    counted_by = (
        "rendered with the model's chat template"
        if tokens.method == "chat_template"
        else "texts joined by newlines"
    )
    ui.label(
        f"{tokens.count:,} records ({counted_by}): min {tokens.min}, mean {tokens.mean:.1f}, "
        f"median {tokens.p50}, 95th percentile {tokens.p95}, max {tokens.max} tokens."
    ).classes("text-grey-8")
    if tokens.over_max_seq_length is not None:
        over = tokens.over_max_seq_length
        text = (
            f"{over:,} of {tokens.count:,} records exceed {tokens.max_seq_length} tokens and "
            "would be truncated in training."
            if over
            else f"No record exceeds {tokens.max_seq_length} tokens."
        )
        ui.label(text).classes("text-negative" if over else "text-positive").props(
            'data-testid="over-max"'
        )
    limit = tokens.max_seq_length
    ui.echart(
        {
            "tooltip": {"trigger": "axis"},
            "grid": {"left": 10, "right": 10, "top": 30, "bottom": 30, "containLabel": True},
            "xAxis": {
                "type": "category",
                "name": "tokens",
                "nameLocation": "middle",
                "nameGap": 28,
                "data": [_bucket_label(b.start, b.end) for b in tokens.buckets],
            },
            "yAxis": {"type": "value", "name": "records", "minInterval": 1},
            "series": [
                {
                    "name": "records",
                    "type": "bar",
                    "data": [
                        {
                            "value": b.count,
                            # Buckets holding records longer than the limit stand out.
                            "itemStyle": {
                                "color": OVER_LIMIT_COLOR
                                if limit is not None and b.end - 1 > limit
                                else BUCKET_COLOR
                            },
                        }
                        for b in tokens.buckets
                    ],
                }
            ],
        }
    ).classes("w-full h-64").props('data-testid="token-histogram"')
