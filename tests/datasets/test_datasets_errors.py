"""A file with problems: the parse fails with located errors and keeps nothing on disk."""

from __future__ import annotations

import json

import pytest

from tests.helpers import CHAT_RECORD, QA, add_and_parse, jsonl, parquet, stored_files
from tuneyard.config import reset_settings
from tuneyard.datasets.parsing import accepted_formats


def failed_parse(client, auth, filename: str, content: bytes, **kwargs) -> tuple[list[str], str]:
    """Upload a bad file; check the parse failed and left no files; return (errors, summary)."""
    dataset, job = add_and_parse(client, auth, "bad", filename, content, **kwargs)
    assert job.status == "failed", job.result
    assert dataset["status"] == "failed"
    assert dataset["record_count"] == 0 and dataset["format"] is None
    assert dataset["digest"] is None
    assert stored_files(dataset["id"]) == []
    errors = dataset["errors"]
    first = errors[0]
    if len(errors) == 1:
        assert job.error == f"1 problem in the file: {first}"
    else:
        assert job.error.endswith(f" problems in the file; the first: {first}")
    return errors, job.error


class TestEncoding:
    def test_jsonl_not_utf8_names_the_line_and_byte_offset(self, client, auth, worker):
        content = jsonl(QA[0]) + b'{"prompt": "caf\xe9", "completion": "x"}\n'
        errors, summary = failed_parse(client, auth, "qa.jsonl", content)
        offset = len(jsonl(QA[0])) + len(b'{"prompt": "caf')
        assert errors == [
            f"Line 2: not valid UTF-8 (byte 0xe9 at byte offset {offset}); save the file as UTF-8"
        ]
        assert summary == f"1 problem in the file: {errors[0]}"

    def test_csv_not_utf8_reports_every_bad_line(self, client, auth, worker):
        content = b"prompt,completion\nna\xefve,x\nok,fine\n\xff,y\n"
        errors, summary = failed_parse(client, auth, "qa.csv", content)
        assert errors == [
            "Line 2: not valid UTF-8 (byte 0xef at byte offset 20); save the file as UTF-8",
            "Line 4: not valid UTF-8 (byte 0xff at byte offset 34); save the file as UTF-8",
        ]
        assert summary.startswith("2 problems in the file; the first: Line 2: not valid UTF-8")

    def test_json_not_utf8(self, client, auth, worker):
        content = b'[\n  {"prompt": "\xc3"}\n]'
        errors, _ = failed_parse(client, auth, "qa.json", content)
        assert errors == [
            "Line 2: not valid UTF-8 (byte 0xc3 at byte offset 16); save the file as UTF-8"
        ]


class TestJsonl:
    def test_lines_that_are_not_json_or_not_objects_are_all_reported(self, client, auth, worker):
        content = b"\n".join(
            [
                json.dumps(QA[0]).encode(),
                b"[1, 2]",
                b'{"prompt": "a", "completion": ',
                b'"just text"',
                b"",
                json.dumps(QA[1]).encode(),
                b"42",
            ]
        )
        errors, summary = failed_parse(client, auth, "qa.jsonl", content)
        assert errors == [
            "Line 2: not a JSON object (got a list)",
            "Line 3: not valid JSON (Expecting value at column 31)",
            "Line 4: not a JSON object (got a string)",
            "Line 7: not a JSON object (got a number)",
        ]
        assert (
            summary == "4 problems in the file; the first: Line 2: not a JSON object (got a list)"
        )

    def test_fields_that_differ_from_the_first_record(self, client, auth, worker):
        content = jsonl(
            {"instruction": "a", "output": "b"},
            {"instruction": "a", "output": "b"},
            {"instruction": "a", "extra": "c"},
            {"instruction": "a", "output": "b", "input": "d"},
        )
        errors, _ = failed_parse(client, auth, "alpaca.jsonl", content)
        assert errors == [
            "Line 3: fields differ from line 1: missing 'output'; unexpected 'extra'",
            "Line 4: fields differ from line 1: unexpected 'input'",
        ]

    def test_line_longer_than_the_limit(self, client, auth, worker):
        long_line = json.dumps({"prompt": "x" * 4000, "completion": "y"}).encode()
        content = jsonl(QA[0]) + long_line + b"\n" + jsonl(QA[1]) + long_line
        errors, _ = failed_parse(client, auth, "qa.jsonl", content)
        message = (
            "longer than 4000 characters ({}); shorten the record, or raise the limit with "
            "TUNEYARD_DATASET_MAX_LINE_CHARS"
        )
        assert errors == [
            f"Line 2: {message.format(len(long_line))}",
            f"Line 4: {message.format(len(long_line))}",
        ]

    def test_a_huge_line_is_reported_without_reading_it_whole(self, client, auth, worker):
        content = jsonl(QA[0]) + b'{"prompt": "' + b"x" * 100_000 + b'"}\n' + jsonl(QA[1])
        errors, _ = failed_parse(client, auth, "qa.jsonl", content)
        assert errors == [
            "Line 2: longer than 4000 characters; shorten the record, or raise the limit with "
            "TUNEYARD_DATASET_MAX_LINE_CHARS"
        ]

    def test_only_the_first_errors_are_kept_and_all_are_counted(self, client, auth, worker):
        content = jsonl(QA[0]) + b"[]\n" * 25
        errors, summary = failed_parse(client, auth, "qa.jsonl", content)
        assert len(errors) == 20
        assert errors[0] == "Line 2: not a JSON object (got a list)"
        assert errors[-1] == "Line 21: not a JSON object (got a list)"
        assert summary.startswith("25 problems in the file; the first: Line 2:")


class TestEmpty:
    @pytest.mark.parametrize(
        ("filename", "content"),
        [
            ("empty.jsonl", b""),
            ("blank.jsonl", b"\n  \n\n"),
            ("empty.json", b"[]"),
            ("blank.json", b"  \n"),
            ("header-only.csv", b"prompt,completion\n"),
            ("empty.csv", b""),
            ("empty.parquet", parquet([])),
        ],
    )
    def test_a_file_without_records(self, client, auth, worker, filename, content):
        errors, summary = failed_parse(client, auth, filename, content)
        assert errors == ["The file has no records; add at least one."]
        assert summary == "1 problem in the file: The file has no records; add at least one."


class TestJson:
    def test_not_an_array(self, client, auth, worker):
        errors, _ = failed_parse(client, auth, "qa.json", json.dumps(QA[0]).encode())
        assert errors == [
            "The file is not a JSON array (got an object); a .json file holds an array of "
            "records, [{...}, {...}]; for one record a line, name the file .jsonl"
        ]

    def test_invalid_json_names_line_and_column(self, client, auth, worker):
        errors, _ = failed_parse(client, auth, "qa.json", b'[\n  {"prompt": "a",}\n]')
        assert errors == [
            "Line 2, column 18: not valid JSON (Expecting property name enclosed in double quotes)"
        ]

    def test_items_that_are_not_objects_name_their_index(self, client, auth, worker):
        content = json.dumps([QA[0], "text", QA[1], None]).encode()
        errors, _ = failed_parse(client, auth, "qa.json", content)
        assert errors == [
            "Item 2 (index 1): not a JSON object (got a string)",
            "Item 4 (index 3): not a JSON object (got null)",
        ]

    def test_an_item_longer_than_the_record_limit(self, client, auth, worker):
        long_item = {"prompt": "x" * 4000, "completion": "y"}
        content = json.dumps([QA[0], long_item, QA[1]], indent=2).encode()
        errors, _ = failed_parse(client, auth, "qa.json", content)
        assert errors == [
            "Item 2 (index 1): longer than 4000 characters; shorten the record, or raise the "
            "limit with TUNEYARD_DATASET_MAX_LINE_CHARS"
        ]


@pytest.fixture
def two_records_at_most(monkeypatch):
    """TUNEYARD_DATASET_MAX_RECORDS=2, set before the worker starts (its jobs get its settings)."""
    monkeypatch.setenv("TUNEYARD_DATASET_MAX_RECORDS", "2")
    reset_settings()


class TestRecordLimit:
    @pytest.mark.parametrize(
        "filename,content",
        [
            ("qa.jsonl", jsonl(*QA)),
            ("qa.json", json.dumps(QA).encode()),
            ("qa.csv", b"prompt,completion\na,b\nc,d\ne,f\n"),
            ("qa.parquet", parquet(QA)),
        ],
    )
    def test_more_records_than_the_limit(
        self, two_records_at_most, client, auth, worker, filename, content
    ):
        errors, _ = failed_parse(client, auth, filename, content)
        assert errors == [
            "The file has more than 2 records; split it into smaller files, or raise the "
            "limit with TUNEYARD_DATASET_MAX_RECORDS"
        ]


@pytest.mark.nodb
@pytest.mark.parametrize("chunk", [1, 7, 64])
def test_a_json_array_read_in_pieces_reads_as_a_whole(tmp_path, monkeypatch, chunk):
    """However the reads cut the file (inside a string, a character, a number), the records
    are those of json.loads (and as many as the limit are fine)."""
    from tuneyard.datasets import parsing

    records = [
        {"prompt": f'Question {i} \u00e9\u20ac\U0001f600 \\ "quoted"', "completion": "42"}
        for i in range(12)
    ]
    records[3]["completion"] = "a, b ] } [ {"
    text = "\ufeff" + json.dumps(records, indent=2, ensure_ascii=False)
    source = tmp_path / "qa.json"
    source.write_bytes(text.encode())
    monkeypatch.setattr(parsing, "READ_CHUNK", chunk)
    parsed = parsing.parse_file(
        source,
        "json",
        tmp_path / "records.jsonl",
        column_mapping={},
        max_errors=20,
        max_line_chars=4000,
        max_records=12,
    )
    assert parsed.record_count == 12
    lines = (tmp_path / "records.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == records


class TestCsv:
    def test_no_header_row_shows_the_first_row(self, client, auth, worker):
        content = b"What is 2+2?,4\nCapital of France?,Paris\n"
        errors, _ = failed_parse(client, auth, "qa.csv", content)
        assert errors == [
            "Line 1: the file seems to have no header row; its first row is: 'What is 2+2?', "
            "'4'. Add a first row that names the columns (e.g. prompt,completion), or map your "
            "column names with column_mapping"
        ]

    def test_header_cells_must_be_named_and_unique(self, client, auth, worker):
        content = b"prompt,,completion,prompt\na,b,c,d\n"
        errors, _ = failed_parse(client, auth, "qa.csv", content)
        assert errors == [
            "Line 1: the header has an empty column name (column 2); name every column",
            "Line 1: the header names 'prompt' twice (columns 1 and 4); column names must be "
            "unique",
        ]

    def test_rows_with_the_wrong_number_of_values(self, client, auth, worker):
        content = b'prompt,completion\na,b\n"multi\nline",b,c\nd\n'
        errors, _ = failed_parse(client, auth, "qa.csv", content)
        assert errors == [
            "Line 3: 3 values, but the header (line 1) has 2 columns",
            "Line 5: 1 value, but the header (line 1) has 2 columns",
        ]


class TestParquet:
    def test_not_a_parquet_file(self, client, auth, worker):
        errors, _ = failed_parse(client, auth, "qa.parquet", jsonl(*QA))
        assert len(errors) == 1
        assert errors[0].startswith("The file is not a readable Parquet file (")

    def test_values_of_the_wrong_type_name_the_row(self, client, auth, worker):
        content = parquet([{"prompt": "a", "completion": "b"}, {"prompt": None, "completion": "c"}])
        errors, _ = failed_parse(client, auth, "qa.parquet", content)
        assert errors == ["Row 2: 'prompt' must be text (a string), got null"]


class TestFormats:
    def test_no_known_format_lists_the_formats_and_suggests_a_mapping(self, client, auth, worker):
        content = jsonl({"question": "2+2?", "response": "4"})
        errors, _ = failed_parse(client, auth, "qa.jsonl", content)
        assert errors == [
            "Line 1: no known format matches the fields 'question', 'response'. Accepted "
            f"formats: {accepted_formats()}. Rename the fields in the file, or map them with "
            'column_mapping, e.g. {"question": "prompt", "answer": "completion"}'
        ]
        assert accepted_formats() == (
            "chat (messages); preference (prompt, chosen, rejected); alpaca (instruction, "
            "output, optional input); prompt_completion (prompt, completion); prompt_only "
            "(prompt, optional answer)"
        )

    def test_values_must_be_text(self, client, auth, worker):
        content = jsonl(
            {"prompt": "a", "chosen": "b", "rejected": "c"},
            {"prompt": 3, "chosen": ["b"], "rejected": "c"},
            {"prompt": "a", "chosen": "b", "rejected": {"text": "c"}},
        )
        errors, summary = failed_parse(client, auth, "pairs.jsonl", content)
        assert errors == [
            "Line 2: 'prompt' must be text (a string), got a number",
            "Line 2: 'chosen' must be text (a string), got a list",
            "Line 3: 'rejected' must be text (a string), got an object",
        ]
        assert summary.startswith("3 problems in the file; the first: Line 2: 'prompt'")

    def test_optional_fields_are_text_or_null(self, client, auth, worker):
        content = jsonl(
            {"instruction": "a", "input": None, "output": "b"},
            {"instruction": "a", "input": 5, "output": "b"},
        )
        errors, _ = failed_parse(client, auth, "alpaca.jsonl", content)
        assert errors == ["Line 2: 'input' must be text (a string) or null, got a number"]

    def test_chat_messages_are_validated(self, client, auth, worker):
        content = jsonl(
            CHAT_RECORD,
            {"messages": "hello"},
            {"messages": []},
            {
                "messages": [
                    {"role": "bot", "content": "Hi"},
                    "Hi",
                    {"content": "Hi"},
                    {"role": "user", "content": None},
                    {"role": "assistant"},
                ]
            },
        )
        errors, _ = failed_parse(client, auth, "chat.jsonl", content)
        assert errors == [
            "Line 2: 'messages' must be a list of {role, content} objects, got a string",
            "Line 3: 'messages' is empty; a conversation needs at least one message",
            "Line 4: messages[0].role is 'bot'; use one of: system, user, assistant",
            "Line 4: messages[1] must be an object with 'role' and 'content', got a string",
            "Line 4: messages[2] has no 'role'; use one of: system, user, assistant",
            "Line 4: messages[3].content must be text (a string), got null",
            "Line 4: messages[4] has no 'content'",
        ]

    def test_mapping_a_field_the_file_lacks(self, client, auth, worker):
        mapping = {"question": "prompt", "answer": "completion"}
        errors, _ = failed_parse(client, auth, "qa.jsonl", jsonl(*QA), mapping=mapping)
        assert errors == [
            "Line 1: column_mapping maps 'question', but the record has no such field (its "
            "fields: 'prompt', 'completion')",
            "Line 1: column_mapping maps 'answer', but the record has no such field (its "
            "fields: 'prompt', 'completion')",
        ]

    def test_mapping_onto_a_field_the_file_already_has(self, client, auth, worker):
        content = jsonl({"prompt": "a", "question": "b", "completion": "c"})
        errors, _ = failed_parse(client, auth, "qa.jsonl", content, mapping={"question": "prompt"})
        assert errors == [
            "Line 1: column_mapping maps 'question' to 'prompt', but the record already has a "
            "'prompt' field; map that one to another name too"
        ]
