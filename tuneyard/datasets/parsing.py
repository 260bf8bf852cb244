"""Reading an uploaded dataset file: validation with located errors, and format detection.

One module for the four file types on purpose: their readers share the record limit, the line
limit and the one list of located problems, and each reader is a few dozen lines.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import hashlib
import io
import json
import re
from collections.abc import Callable, Generator, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from tuneyard.storage import atomic_file

FILE_TYPES = {".jsonl": "jsonl", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
# Files are read this much at a time; a JSON array item is read whole, up to the record limit.
READ_CHUNK = 1 << 20
PARQUET_BATCH_ROWS = 256
CHAT_ROLES = ("system", "user", "assistant")
MAPPING_EXAMPLE = '{"question": "prompt", "answer": "completion"}'


@dataclass(frozen=True)
class RecordFormat:
    name: str
    required: tuple[str, ...]
    optional: tuple[str, ...] = ()

    def matches(self, fields: list[str]) -> bool:
        return set(self.required) <= set(fields)

    def describe(self) -> str:
        names = ", ".join(self.required)
        if self.optional:
            names += ", optional " + ", ".join(self.optional)
        return f"{self.name} ({names})"


# Detection takes the first format whose required fields are all present, so the order
# matters: a record with prompt, chosen and rejected is a preference pair, not a bare prompt.
FORMATS = (
    RecordFormat("chat", ("messages",)),
    RecordFormat("preference", ("prompt", "chosen", "rejected")),
    RecordFormat("alpaca", ("instruction", "output"), ("input",)),
    RecordFormat("prompt_completion", ("prompt", "completion")),
    RecordFormat("prompt_only", ("prompt",), ("answer",)),
)
CANONICAL_FIELDS = tuple(
    dict.fromkeys(name for fmt in FORMATS for name in (*fmt.required, *fmt.optional))
)

ProgressCallback = Callable[[float, int], None]


def detect_format(fields: list[str]) -> RecordFormat | None:
    return next((fmt for fmt in FORMATS if fmt.matches(fields)), None)


def accepted_formats() -> str:
    return "; ".join(fmt.describe() for fmt in FORMATS)


class Problems:
    """Every problem found is counted; the first `limit` are kept to show the user."""

    def __init__(self, limit: int):
        self.limit = limit
        self.messages: list[str] = []
        self.total = 0

    def add(self, message: str) -> None:
        self.total += 1
        if len(self.messages) < self.limit:
            self.messages.append(message)

    def __bool__(self) -> bool:
        return self.total > 0


class ParseFailed(Exception):
    """The file has problems; `errors` holds the first of them, `total` counts them all."""

    def __init__(self, problems: Problems):
        self.errors = list(problems.messages)
        self.total = problems.total
        super().__init__(self.summary)

    @property
    def summary(self) -> str:
        if self.total == 1:
            return f"1 problem in the file: {self.errors[0]}"
        return f"{self.total} problems in the file; the first: {self.errors[0]}"


@dataclass(frozen=True)
class Parsed:
    format: str
    fields: list[str]
    record_count: int
    digest: str


def parse_file(
    source: Path,
    file_type: str,
    target: Path,
    *,
    column_mapping: Mapping[str, str],
    max_errors: int,
    max_line_chars: int,
    max_records: int,
    on_progress: ProgressCallback | None = None,
) -> Parsed:
    """Validate `source` and write its normalised records, one JSON object a line, to `target`.

    Memory stays bounded whatever the file: it is read a record (or a Parquet batch) at a
    time, a record is at most `max_line_chars` long (JSONL and JSON), and a file of more than
    `max_records` records is refused. Raises ParseFailed, leaving `target` untouched, when
    the file has any problem.
    """
    problems = Problems(max_errors)
    items = _read_items(source, file_type, problems, column_mapping, max_line_chars, max_records)
    digest = hashlib.sha256()
    count = 0
    reference: tuple[str, list[str]] | None = None
    fmt: RecordFormat | None = None
    fields: list[str] = []
    with atomic_file(target) as out, contextlib.closing(items):
        for where, value, fraction in items:
            if not isinstance(value, dict):
                problems.add(f"{where}: not a JSON object (got {json_type(value)})")
                continue
            if reference is None:
                reference = (where, list(value))
                mapping_problems = _mapping_problems(where, list(value), column_mapping)
                for problem in mapping_problems:
                    problems.add(problem)
                if mapping_problems:
                    # Every record would fail the same way; reading on only repeats it.
                    break
                fields = [column_mapping.get(name, name) for name in value]
                fmt = detect_format(fields)
                if fmt is None:
                    problems.add(_no_format_message(where, fields))
            else:
                difference = _field_difference(reference[1], list(value))
                if difference:
                    problems.add(
                        f"{where}: fields differ from {reference[0].lower()}: {difference}"
                    )
                    continue
            record = {column_mapping.get(name, name): item for name, item in value.items()}
            if fmt is not None:
                for problem in _value_problems(fmt, record):
                    problems.add(f"{where}: {problem}")
            count += 1
            if count > max_records:
                problems.add(_too_many(max_records))
                break
            if on_progress is not None:
                on_progress(fraction, count)
            if problems:
                continue  # keep reading to report more problems, but write nothing
            line = (json.dumps(record, ensure_ascii=False, default=str) + "\n").encode()
            out.write(line)
            digest.update(line)
        if not problems and count == 0:
            problems.add("The file has no records; add at least one.")
        if problems:
            raise ParseFailed(problems)
    assert fmt is not None
    return Parsed(fmt.name, fields, count, digest.hexdigest())


def json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _quoted(names: list[str]) -> str:
    return ", ".join(f"'{name}'" for name in names)


def _field_difference(expected: list[str], actual: list[str]) -> str:
    missing = [name for name in expected if name not in actual]
    unexpected = [name for name in actual if name not in expected]
    parts = []
    if missing:
        parts.append(f"missing {_quoted(missing)}")
    if unexpected:
        parts.append(f"unexpected {_quoted(unexpected)}")
    return "; ".join(parts)


def _mapping_problems(where: str, fields: list[str], mapping: Mapping[str, str]) -> list[str]:
    problems = []
    for source, target in mapping.items():
        if source not in fields:
            problems.append(
                f"{where}: column_mapping maps '{source}', but the record has no such field "
                f"(its fields: {_quoted(fields)})"
            )
        elif target in fields and target not in mapping:
            problems.append(
                f"{where}: column_mapping maps '{source}' to '{target}', but the record already "
                f"has a '{target}' field; map that one to another name too"
            )
    return problems


def _no_format_message(where: str, fields: list[str]) -> str:
    return (
        f"{where}: no known format matches the fields {_quoted(fields)}. Accepted formats: "
        f"{accepted_formats()}. Rename the fields in the file, or map them with "
        f"column_mapping, e.g. {MAPPING_EXAMPLE}"
    )


def _value_problems(fmt: RecordFormat, record: dict[str, Any]) -> Iterator[str]:
    for name in fmt.required:
        if name == "messages":
            yield from _message_problems(record[name])
        elif not isinstance(record[name], str):
            yield f"'{name}' must be text (a string), got {json_type(record[name])}"
    for name in fmt.optional:
        value = record.get(name)
        if value is not None and not isinstance(value, str):
            yield f"'{name}' must be text (a string) or null, got {json_type(value)}"


def _message_problems(messages: Any) -> Iterator[str]:
    if not isinstance(messages, list):
        yield f"'messages' must be a list of {{role, content}} objects, got {json_type(messages)}"
        return
    if not messages:
        yield "'messages' is empty; a conversation needs at least one message"
        return
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            yield f"{where} must be an object with 'role' and 'content', got {json_type(message)}"
            continue
        role = message.get("role")
        if "role" not in message:
            yield f"{where} has no 'role'; use one of: {', '.join(CHAT_ROLES)}"
        elif role not in CHAT_ROLES:
            shown = f"'{role}'" if isinstance(role, str) else json_type(role)
            yield f"{where}.role is {shown}; use one of: {', '.join(CHAT_ROLES)}"
        if "content" not in message:
            yield f"{where} has no 'content'"
        elif not isinstance(message["content"], str):
            yield f"{where}.content must be text (a string), got {json_type(message['content'])}"


# -- readers: each yields (where, value, fraction of the file read) ---------------------------

Item = tuple[str, Any, float]
# A generator, not a plain iterator: whoever stops reading early closes it (and its file).
Items = Generator[Item, None, None]


def _read_items(
    source: Path,
    file_type: str,
    problems: Problems,
    column_mapping: Mapping[str, str],
    max_line_chars: int,
    max_records: int,
) -> Items:
    size = max(source.stat().st_size, 1)
    if file_type == "jsonl":
        return _jsonl_items(source, size, problems, max_line_chars)
    if file_type == "json":
        return _json_items(source, size, problems, max_line_chars)
    if file_type == "csv":
        return _csv_items(source, size, problems, set(CANONICAL_FIELDS) | set(column_mapping))
    if file_type == "parquet":
        return _parquet_items(source, problems, max_records)
    raise ValueError(f"unknown file type {file_type!r}")


def _too_many(max_records: int) -> str:
    return (
        f"The file has more than {max_records:,} records; split it into smaller files, or "
        "raise the limit with TUNEYARD_DATASET_MAX_RECORDS"
    )


def _lines(
    handle: BinaryIO, problems: Problems, max_chars: int | None = None
) -> Iterator[tuple[int, str, int]]:
    """Yield (line number, text, bytes read so far) for each line that is valid UTF-8.

    A line over `max_chars` is reported and skipped without holding all of it in memory.
    """
    # UTF-8 needs at most 4 bytes a character; +2 leaves room for the line ending.
    byte_limit = -1 if max_chars is None else max_chars * 4 + 2
    offset = 0
    number = 0
    while raw := handle.readline(byte_limit):
        number += 1
        start = offset
        offset += len(raw)
        if byte_limit > 0 and len(raw) == byte_limit and not raw.endswith(b"\n"):
            while more := handle.readline(1 << 20):
                offset += len(more)
                if more.endswith(b"\n"):
                    break
            problems.add(_too_long(number, max_chars))
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            problems.add(
                f"Line {number}: not valid UTF-8 (byte 0x{raw[exc.start]:02x} at byte offset "
                f"{start + exc.start}); save the file as UTF-8"
            )
            continue
        if number == 1:
            text = text.removeprefix("\ufeff")
        text = text.rstrip("\r\n")
        if max_chars is not None and len(text) > max_chars:
            problems.add(_too_long(number, max_chars, len(text)))
            continue
        yield number, text, offset


def _too_long(number: int, max_chars: int | None, length: int | None = None) -> str:
    actual = f" ({length})" if length is not None else ""
    return (
        f"Line {number}: longer than {max_chars} characters{actual}; shorten the record, or "
        "raise the limit with TUNEYARD_DATASET_MAX_LINE_CHARS"
    )


def _check_utf8(source: Path, problems: Problems) -> None:
    """Report each line that is not valid UTF-8, reading a chunk at a time."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        with source.open("rb") as handle:
            while chunk := handle.read(READ_CHUNK):
                decoder.decode(chunk)
            decoder.decode(b"", final=True)
        return
    except UnicodeDecodeError:
        _report_bad_utf8_lines(source, problems)


def _report_bad_utf8_lines(source: Path, problems: Problems) -> None:
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0  # bytes read before this piece
    number = 1
    reported = False  # this line's first bad byte is reported; the rest of it is skipped
    with source.open("rb") as handle:
        while piece := handle.readline(READ_CHUNK):
            ends_line = piece.endswith(b"\n")
            if not reported:
                pending = len(decoder.getstate()[0])
                try:
                    decoder.decode(piece, final=ends_line)
                except UnicodeDecodeError as exc:
                    problems.add(
                        f"Line {number}: not valid UTF-8 (byte 0x{exc.object[exc.start]:02x} at "
                        f"byte offset {offset - pending + exc.start}); save the file as UTF-8"
                    )
                    reported = True
            offset += len(piece)
            if ends_line:
                number += 1
                reported = False
                decoder.reset()
        if not reported:
            unfinished = decoder.getstate()[0]
            if unfinished:  # the file ends inside a character
                problems.add(
                    f"Line {number}: not valid UTF-8 (byte 0x{unfinished[0]:02x} at byte offset "
                    f"{offset - len(unfinished)}); save the file as UTF-8"
                )


def _jsonl_items(source: Path, size: int, problems: Problems, max_chars: int) -> Items:
    with source.open("rb") as handle:
        for number, text, offset in _lines(handle, problems, max_chars):
            if not text.strip():
                continue
            try:
                value = json.loads(text)
            except json.JSONDecodeError as exc:
                problems.add(f"Line {number}: not valid JSON ({exc.msg} at column {exc.colno})")
                continue
            yield f"Line {number}", value, offset / size


_NOT_SPACE = re.compile(r"[^ \t\r\n]")
_JSON_STARTS = {"{": "an object", '"': "a string", "t": "a boolean", "f": "a boolean"}
_JSON_STARTS |= {"n": "null", "-": "a number"} | dict.fromkeys("0123456789", "a number")


class _JsonText:
    """A JSON file's text, read a chunk at a time and forgotten once consumed; positions in
    it become the line and column a person finds them at."""

    def __init__(self, handle: BinaryIO, size: int):
        self.handle = handle
        self.size = size
        self.decoder = codecs.getincrementaldecoder("utf-8-sig")()
        self.text = ""
        self.pos = 0
        self.bytes_read = 0
        self.eof = False
        self.lines_before = 0  # line breaks in the text already dropped
        self.column_before = 0  # characters after the last of them

    def more(self) -> bool:
        """Read another chunk, forgetting what was consumed; False (nothing changed) at the
        end of the file."""
        chunk = b"" if self.eof else self.handle.read(READ_CHUNK)
        if not chunk:
            self.eof = True
            return False
        self.bytes_read += len(chunk)
        self._drop_consumed()
        self.text += self.decoder.decode(chunk)
        return True

    def _drop_consumed(self) -> None:
        consumed = self.text[: self.pos]
        breaks = consumed.count("\n")
        self.lines_before += breaks
        if breaks:
            self.column_before = len(consumed) - consumed.rfind("\n") - 1
        else:
            self.column_before += len(consumed)
        self.text = self.text[self.pos :]
        self.pos = 0

    def next_char(self) -> str:
        """The next character that is not white space ("" at the end), left unconsumed."""
        while True:
            found = _NOT_SPACE.search(self.text, self.pos)
            self.pos = found.start() if found else len(self.text)
            if found or not self.more():
                return self.text[self.pos : self.pos + 1]

    def where(self, index: int) -> str:
        before = self.text[:index]
        breaks = before.count("\n")
        line = self.lines_before + breaks + 1
        column = index - before.rfind("\n") if breaks else self.column_before + index + 1
        return f"Line {line}, column {column}"

    def error(self, index: int, message: str) -> str:
        return f"{self.where(index)}: not valid JSON ({message})"

    @property
    def fraction(self) -> float:
        return min(1.0, self.bytes_read / self.size)


_TOO_LONG = object()
_NUMBER_CHARS = frozenset("0123456789.eE+-")


def _next_value(decoder: json.JSONDecoder, text: _JsonText, max_chars: int):
    """(the value, its end) at the text's position, reading on while it may go on past what
    was read; (the JSONDecodeError, -1) for a syntax error; (_TOO_LONG, -1) when it is longer
    than `max_chars`."""
    while True:
        try:
            value, end = decoder.raw_decode(text.text, text.pos)
            # Whole once something follows that cannot carry a number on.
            if end < len(text.text) and text.text[end] not in _NUMBER_CHARS:
                return value, end
        except json.JSONDecodeError as exc:
            # The text read so far may end inside the value: such an error sits at its end, or
            # is a string still open. Any other is the file's own.
            cut = exc.pos >= len(text.text) - 8 or exc.msg.startswith("Unterminated")
            if not cut:
                return exc, -1
            value, end = exc, -1
        if len(text.text) - text.pos > max_chars:
            return _TOO_LONG, -1
        if not text.more():
            return value, end


def _json_items(source: Path, size: int, problems: Problems, max_chars: int) -> Items:
    """The items of a JSON array, one at a time: the file is never held whole."""
    _check_utf8(source, problems)
    if problems:
        return
    decoder = json.JSONDecoder()
    with source.open("rb") as handle:
        text = _JsonText(handle, size)
        first = text.next_char()
        if not first:
            return
        if first != "[":
            if first in _JSON_STARTS:
                problems.add(
                    f"The file is not a JSON array (got {_JSON_STARTS[first]}); a .json file "
                    "holds an array of records, [{...}, {...}]; for one record a line, name "
                    "the file .jsonl"
                )
            else:
                problems.add(text.error(text.pos, "Expecting value"))
            return
        text.pos += 1
        index = 0
        while text.next_char() != "]" or index > 0:
            value, end = _next_value(decoder, text, max_chars)
            if value is _TOO_LONG or end - text.pos > max_chars:
                problems.add(
                    f"Item {index + 1} (index {index}): longer than {max_chars} characters; "
                    "shorten the record, or raise the limit with TUNEYARD_DATASET_MAX_LINE_CHARS"
                )
                return
            if isinstance(value, json.JSONDecodeError):
                problems.add(text.error(value.pos, value.msg))
                return
            text.pos = end
            yield f"Item {index + 1} (index {index})", value, text.fraction
            index += 1
            after = text.next_char()
            if after == "]":
                break
            if after != ",":
                problems.add(text.error(text.pos, "Expecting ',' delimiter"))
                return
            text.pos += 1
        text.pos += 1  # the closing bracket
        if text.next_char():
            problems.add(text.error(text.pos, "Extra data"))


def _csv_items(source: Path, size: int, problems: Problems, known: set[str]) -> Items:
    _check_utf8(source, problems)
    if problems:
        return
    with source.open("rb") as raw, io.TextIOWrapper(raw, encoding="utf-8-sig", newline="") as text:
        reader = csv.reader(text)
        header: list[str] | None = None
        header_line = 0
        try:
            while True:
                start = reader.line_num + 1
                row = next(reader, None)
                if row is None:
                    return
                if not row:
                    continue
                if header is None:
                    header, header_line = [cell.strip() for cell in row], start
                    if not _header_ok(header, row, start, problems, known):
                        return
                elif len(row) != len(header):
                    problems.add(
                        f"Line {start}: {len(row)} value{'' if len(row) == 1 else 's'}, but the "
                        f"header (line {header_line}) "
                        f"has {len(header)} columns"
                    )
                else:
                    yield f"Line {start}", dict(zip(header, row, strict=True)), raw.tell() / size
        except csv.Error as exc:
            problems.add(f"Line {reader.line_num}: not valid CSV ({exc})")


def _header_ok(
    header: list[str], row: list[str], line: int, problems: Problems, known: set[str]
) -> bool:
    if not any(name in known for name in header):
        shown = ", ".join(repr(cell if len(cell) <= 40 else cell[:39] + "…") for cell in row[:8])
        problems.add(
            f"Line {line}: the file seems to have no header row; its first row is: {shown}. "
            "Add a first row that names the columns (e.g. prompt,completion), or map your "
            "column names with column_mapping"
        )
        return False
    ok = True
    for index, name in enumerate(header):
        if not name:
            ok = False
            problems.add(
                f"Line {line}: the header has an empty column name (column {index + 1}); "
                "name every column"
            )
        elif name in header[:index]:
            ok = False
            problems.add(
                f"Line {line}: the header names '{name}' twice (columns "
                f"{header.index(name) + 1} and {index + 1}); column names must be unique"
            )
    return ok


def _parquet_items(source: Path, problems: Problems, max_records: int) -> Items:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        # Read through a small buffer, not a whole row group at once: memory then stays near
        # one batch, however the file was written.
        parquet = pq.ParquetFile(source, buffer_size=READ_CHUNK, pre_buffer=False)
    except (pa.ArrowException, OSError) as exc:
        problems.add(f"The file is not a readable Parquet file ({exc})")
        return
    if parquet.metadata.num_rows > max_records:
        problems.add(_too_many(max_records))
        return
    total = max(parquet.metadata.num_rows, 1)
    row = 0
    try:
        for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS):
            for value in batch.to_pylist():
                row += 1
                yield f"Row {row}", value, row / total
    except (pa.ArrowException, OSError) as exc:
        problems.add(f"Row {row + 1}: could not be read ({exc})")
