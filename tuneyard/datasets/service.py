"""Datasets: upload a file, parse it in a job, then read, measure or delete its records."""

from __future__ import annotations

import json
import math
from collections.abc import Generator, Iterator, Mapping
from itertools import islice
from pathlib import Path, PurePath, PureWindowsPath
from typing import Any, BinaryIO

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from tuneyard.auth.service import Principal
from tuneyard.config import get_settings
from tuneyard.datasets.parsing import CANONICAL_FIELDS, FILE_TYPES, MAPPING_EXAMPLE
from tuneyard.datasets.schemas import DatasetStats, FieldLengths, TokenBucket, TokenLengths
from tuneyard.errors import Conflict, Invalid, NotFound, TooLarge
from tuneyard.jobs import service as jobs
from tuneyard.jobs.keys import Resource, UseKey
from tuneyard.models import Dataset, Job, new_id
from tuneyard.pagination import paginate
from tuneyard.storage import (
    Layout,
    atomic_file,
    delete_on_commit,
    discard_on_rollback,
    remove_tree,
)

PARSE_JOB = "dataset.parse"
RECORDS_FILE = "records.jsonl"
NAME_MAX = 200
DESCRIPTION_MAX = 10_000
COPY_CHUNK = 1024 * 1024
TOKEN_BUCKETS = 10
TOKENIZE_BATCH = 512
TOO_LARGE = (
    "The file is larger than the limit of {limit}; split it into smaller files, or raise "
    "TUNEYARD_DATASET_MAX_FILE_BYTES."
)


def original_path(dataset: Dataset, layout: Layout | None = None) -> Path:
    return (layout or Layout()).dataset_dir(dataset.id) / f"original.{dataset.file_type}"


def records_path(dataset: Dataset, layout: Layout | None = None) -> Path:
    return (layout or Layout()).dataset_dir(dataset.id) / RECORDS_FILE


# -- upload ------------------------------------------------------------------------------


def file_type_of(filename: str) -> str:
    suffix = PurePath(filename).suffix.lower()
    if suffix not in FILE_TYPES:
        accepted = ", ".join(FILE_TYPES)
        raise Invalid(f"Cannot read '{filename}': the file type must be one of {accepted}.")
    return FILE_TYPES[suffix]


def parse_column_mapping(text: str | None) -> dict[str, str]:
    """The column mapping as sent over HTTP: a JSON object, or nothing."""
    if text is None or not text.strip():
        return {}
    try:
        mapping = json.loads(text)
    except json.JSONDecodeError:
        raise Invalid(
            "column_mapping must be a JSON object of source field -> canonical field, "
            f"e.g. {MAPPING_EXAMPLE}."
        ) from None
    return check_column_mapping(mapping)


def check_column_mapping(mapping: Any) -> dict[str, str]:
    if not isinstance(mapping, dict) or not all(
        isinstance(source, str) and source and isinstance(target, str)
        for source, target in mapping.items()
    ):
        raise Invalid(
            f"column_mapping must map field names to field names (strings), e.g. {MAPPING_EXAMPLE}."
        )
    for source, target in mapping.items():
        if target not in CANONICAL_FIELDS:
            raise Invalid(
                f"column_mapping maps '{source}' to '{target}', which no format uses; "
                f"map to one of: {', '.join(CANONICAL_FIELDS)}."
            )
    targets = list(mapping.values())
    for target in targets:
        if targets.count(target) > 1:
            sources = [source for source, to in mapping.items() if to == target]
            raise Invalid(
                f"column_mapping maps {' and '.join(repr(s) for s in sources)} to '{target}'; "
                "map one field to each name."
            )
    return dict(mapping)


def _check_name(name: str) -> str:
    name = name.strip()
    if not 1 <= len(name) <= NAME_MAX:
        raise Invalid(f"A dataset name is 1-{NAME_MAX} characters.")
    return name


def _by_name(session: Session, principal: Principal, name: str) -> Dataset | None:
    return session.scalar(
        select(Dataset).where(Dataset.project_id == principal.project_id, Dataset.name == name)
    )


def _name_taken(dataset: Dataset) -> Conflict:
    return Conflict(
        f"A dataset named '{dataset.name}' already exists ({dataset.status}); choose another "
        f"name, or delete it first with `tuneyard data rm {dataset.name}`."
    )


def _size_text(size: int) -> str:
    return f"{size / 1024**2:.1f} MiB" if size >= 1024**2 else f"{size:,} bytes"


def _save_upload(content: BinaryIO, target: Path, limit: int) -> int:
    """Stream `content` to `target` a chunk at a time; refuse it once it passes `limit`."""
    size = 0
    with atomic_file(target) as out:
        while chunk := content.read(COPY_CHUNK):
            size += len(chunk)
            if size > limit:
                raise TooLarge(TOO_LARGE.format(limit=_size_text(limit)))
            out.write(chunk)
    return size


def create_dataset(
    session: Session,
    principal: Principal,
    *,
    name: str,
    filename: str,
    content: BinaryIO,
    description: str = "",
    column_mapping: Mapping[str, str] | None = None,
) -> tuple[Dataset, Job]:
    """Store an uploaded file and queue the job that parses it.

    A failed dataset of the same name is replaced; any other one is a conflict.
    """
    principal.require("member")
    name = _check_name(name)
    # Browsers on Windows may send the full path of the file.
    filename = PureWindowsPath(filename or "").name
    if not filename:
        raise Invalid("The upload has no file name; its extension tells the file type.")
    file_type = file_type_of(filename)
    if len(description) > DESCRIPTION_MAX:
        raise Invalid(f"A description is at most {DESCRIPTION_MAX:,} characters.")
    mapping = check_column_mapping(dict(column_mapping or {}))
    previous = _by_name(session, principal, name)
    if previous is not None and previous.status != "failed":
        raise _name_taken(previous)

    settings = get_settings()
    layout = Layout(settings)
    dataset = Dataset(
        id=new_id(),
        project_id=principal.project_id,
        name=name,
        description=description,
        status="parsing",
        file_type=file_type,
        original_filename=filename[-500:],
        column_mapping=mapping,
    )
    folder = layout.dataset_dir(dataset.id)
    try:
        dataset.size_bytes = _save_upload(
            content, original_path(dataset, layout), settings.dataset_max_file_bytes
        )
        if previous is not None:
            session.delete(previous)
            session.flush()  # the old row must go before the new one takes its name
            delete_on_commit(session, previous, layout.dataset_dir(previous.id))
        session.add(dataset)
        try:
            session.flush()
        except IntegrityError:
            raise Conflict(
                f"A dataset named '{name}' was created at the same time; choose another name."
            ) from None
        job = jobs.enqueue(
            session,
            principal,
            PARSE_JOB,
            {"dataset_id": dataset.id},
            uses=[UseKey(Resource.DATASET, dataset.id)],
            message=f"Waiting for a worker to parse {filename}",
        )
    except BaseException:
        remove_tree(folder)
        raise
    dataset.job_id = job.id
    session.flush()
    discard_on_rollback(session, folder)
    return dataset, job


# -- reading -----------------------------------------------------------------------------


def get_dataset(session: Session, principal: Principal, dataset_id: str) -> Dataset:
    dataset = session.get(Dataset, dataset_id)
    if dataset is None or dataset.project_id != principal.project_id:
        raise NotFound(f"No dataset '{dataset_id}'. List them with `tuneyard data list`.")
    return dataset


def find_dataset(session: Session, principal: Principal, id_or_name: str) -> Dataset:
    """A dataset by id or, failing that, by name."""
    dataset = session.get(Dataset, id_or_name)
    if dataset is not None and dataset.project_id == principal.project_id:
        return dataset
    dataset = _by_name(session, principal, id_or_name)
    if dataset is None:
        raise NotFound(f"No dataset '{id_or_name}'. List them with `tuneyard data list`.")
    return dataset


def list_datasets(session: Session, principal: Principal, limit: int = 50, offset: int = 0):
    stmt = (
        select(Dataset)
        .where(Dataset.project_id == principal.project_id)
        .order_by(Dataset.created_at.desc(), Dataset.id)
    )
    return paginate(session, stmt, limit, offset)


def ensure_ready(dataset: Dataset) -> None:
    if dataset.status == "parsing":
        raise Conflict(
            f"Dataset '{dataset.name}' is still being parsed; wait for job {dataset.job_id} "
            f"(`tuneyard jobs show {dataset.job_id}`)."
        )
    if dataset.status != "ready":
        first = dataset.errors[0] if dataset.errors else "no reason recorded"
        raise Conflict(
            f"Dataset '{dataset.name}' failed to parse ({first}); fix the file and upload it "
            "again under the same name."
        )


def iter_records(dataset: Dataset) -> Generator[dict[str, Any], None, None]:
    """The normalised records of a ready dataset, one dict each, in file order."""
    ensure_ready(dataset)
    with records_path(dataset).open(encoding="utf-8") as handle:
        for line in handle:
            yield json.loads(line)


def preview(
    session: Session, principal: Principal, dataset_id: str, limit: int = 20, offset: int = 0
) -> tuple[list[dict[str, Any]], int]:
    dataset = get_dataset(session, principal, dataset_id)
    ensure_ready(dataset)
    if offset >= dataset.record_count:  # nothing to read, however far past the end
        return [], dataset.record_count
    records = iter_records(dataset)
    try:
        items = list(islice(records, offset, offset + limit))
    finally:
        records.close()
    return items, dataset.record_count


# -- deleting ----------------------------------------------------------------------------


def delete_dataset(session: Session, principal: Principal, dataset_id: str) -> None:
    principal.require("member")
    dataset = get_dataset(session, principal, dataset_id)
    jobs.ensure_not_in_use(
        session, UseKey(Resource.DATASET, dataset.id), f"Dataset '{dataset.name}'"
    )
    session.delete(dataset)
    session.flush()
    delete_on_commit(session, dataset, Layout().dataset_dir(dataset.id))


# -- statistics --------------------------------------------------------------------------


def dataset_stats(
    session: Session,
    principal: Principal,
    dataset_id: str,
    base_model_id: str | None = None,
    max_seq_length: int | None = None,
) -> DatasetStats:
    """Characters per field and, given a base model, tokens per record with its tokenizer."""
    dataset = get_dataset(session, principal, dataset_id)
    ensure_ready(dataset)
    if max_seq_length is not None and base_model_id is None:
        raise Invalid(
            "max_seq_length is counted in tokens, so it needs base_model_id: the base model "
            "whose tokenizer counts them."
        )
    if max_seq_length is not None and max_seq_length < 1:
        raise Invalid("max_seq_length is at least 1.")
    counter = None
    if base_model_id is not None:
        counter = TokenCounter.for_base_model(session, principal, base_model_id)
    lengths: dict[str, list[int]] = {}
    token_counts: list[int] = []
    batch: list[dict[str, Any]] = []
    for record in iter_records(dataset):
        for field_name, chars in _field_chars(record):
            lengths.setdefault(field_name, []).append(chars)
        if counter is not None:
            batch.append(record)
            if len(batch) == TOKENIZE_BATCH:
                token_counts += counter.count(batch, dataset.format, len(token_counts))
                batch = []
    if counter is not None and batch:
        token_counts += counter.count(batch, dataset.format, len(token_counts))
    return DatasetStats(
        record_count=dataset.record_count,
        fields={
            name: FieldLengths(min=min(values), mean=sum(values) / len(values), max=max(values))
            for name, values in lengths.items()
        },
        tokens=(
            _token_lengths(
                base_model_id, counter.method(dataset.format), token_counts, max_seq_length
            )
            if counter is not None and base_model_id is not None
            else None
        ),
    )


def _field_chars(record: dict[str, Any]) -> Iterator[tuple[str, int]]:
    for name, value in record.items():
        if isinstance(value, str):
            yield name, len(value)
        elif name == "messages" and isinstance(value, list):
            yield name, sum(len(m.get("content") or "") for m in value if isinstance(m, dict))


def _token_lengths(
    base_model_id: str, method: str, counts: list[int], max_seq_length: int | None
) -> TokenLengths:
    ordered = sorted(counts)

    def percentile(share: float) -> int:
        # Nearest rank: the smallest count that `share` of the records do not exceed.
        return ordered[max(0, math.ceil(share * len(ordered)) - 1)]

    low, high = ordered[0], ordered[-1]
    width = max(1, math.ceil((high - low + 1) / TOKEN_BUCKETS))
    buckets = [
        TokenBucket(start=low + i * width, end=low + (i + 1) * width, count=0)
        for i in range(math.ceil((high - low + 1) / width))
    ]
    for count in counts:
        buckets[(count - low) // width].count += 1
    return TokenLengths(
        base_model_id=base_model_id,
        method=method,
        count=len(counts),
        min=low,
        mean=sum(counts) / len(counts),
        p50=percentile(0.5),
        p95=percentile(0.95),
        max=high,
        buckets=buckets,
        max_seq_length=max_seq_length,
        over_max_seq_length=(
            sum(1 for count in counts if count > max_seq_length)
            if max_seq_length is not None
            else None
        ),
    )


class TokenCounter:
    """Counts a record's tokens as a base model would see them in training."""

    def __init__(self, folder: Path, model_name: str):
        from tokenizers import Tokenizer

        tokenizer_file = folder / "tokenizer.json"
        if not tokenizer_file.is_file():
            raise Invalid(
                f"Base model '{model_name}' has no tokenizer.json in {folder}; token counts "
                "need the model's fast tokenizer file."
            )
        self.model_name = model_name
        self.tokenizer = Tokenizer.from_file(str(tokenizer_file))
        config_file = folder / "tokenizer_config.json"
        config = json.loads(config_file.read_text()) if config_file.is_file() else {}
        self.special_tokens = {
            name: _token_text(config.get(name))
            for name in ("bos_token", "eos_token", "unk_token", "pad_token")
        }
        self.template = _chat_template(folder, config, model_name)

    @classmethod
    def for_base_model(
        cls, session: Session, principal: Principal, base_model_id: str
    ) -> TokenCounter:
        from tuneyard.basemodels.service import get_base_model

        model = get_base_model(session, principal, base_model_id)
        if model.status != "ready" or not model.path:
            raise Conflict(
                f"Base model '{model.technical_name}' is not ready ({model.status}); "
                "count tokens once it is."
            )
        return cls(Path(model.path), model.technical_name)

    def method(self, fmt: str | None) -> str:
        return "chat_template" if fmt == "chat" and self.template is not None else "joined_text"

    def count(self, records: list[dict[str, Any]], fmt: str | None, first: int) -> list[int]:
        """Tokens of each record: the longest of its sequences (preference has two)."""
        templated = self.method(fmt) == "chat_template"
        sequences = [self._sequences(record, fmt, first + i) for i, record in enumerate(records)]
        flat = [text for texts in sequences for text in texts]
        encodings = iter(self.tokenizer.encode_batch(flat, add_special_tokens=not templated))
        return [max(len(next(encodings).ids) for _ in texts) for texts in sequences]

    def _sequences(self, record: dict[str, Any], fmt: str | None, index: int) -> list[str]:
        if fmt == "chat":
            if self.template is None:
                return ["\n".join(m["content"] for m in record["messages"])]
            return [self._render(record["messages"], index)]
        if fmt == "preference":
            return [f"{record['prompt']}\n{record[side]}" for side in ("chosen", "rejected")]
        parts: tuple[Any, ...]
        if fmt == "alpaca":
            parts = (record["instruction"], record.get("input"), record["output"])
        elif fmt == "prompt_completion":
            parts = (record["prompt"], record["completion"])
        else:
            parts = (record["prompt"],)
        return ["\n".join(part for part in parts if part)]

    def _render(self, messages: list[dict[str, Any]], index: int) -> str:
        from jinja2 import TemplateError

        try:
            return self.template.render(
                messages=messages, add_generation_prompt=False, **self.special_tokens
            )
        except TemplateError as exc:
            raise Invalid(
                f"The chat template of base model '{self.model_name}' fails on record "
                f"{index + 1}: {exc}"
            ) from None


def _token_text(value: Any) -> str | None:
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


def _chat_template(folder: Path, config: dict[str, Any], model_name: str):
    """The model's chat template, compiled in a sandbox (it comes from a model folder)."""
    from tuneyard.basemodels.template import compile_chat_template

    template_file = folder / "chat_template.jinja"
    source = template_file.read_text() if template_file.is_file() else config.get("chat_template")
    if isinstance(source, list):
        # Several named templates: the one named "default" is the chat template.
        named = {item.get("name"): item.get("template") for item in source}
        source = named.get("default")
    if not source:
        return None
    return compile_chat_template(source, f"base model '{model_name}'")
