"""Datasets over the API: upload, format detection, preview, delete, isolation, cleanup."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import time

import pytest

from tests.helpers import (
    CHAT_RECORD,
    PAIR_RECORD,
    QA,
    add_and_parse,
    jsonl,
    parquet,
    post_dataset,
    stored_files,
    user_in,
    wait_for_job,
)
from tuneyard.config import reset_settings
from tuneyard.datasets import service
from tuneyard.db import session_scope
from tuneyard.jobs import service as jobs
from tuneyard.jobs.executor import Executor, describe_exit
from tuneyard.models import Dataset, Job
from tuneyard.storage import Layout

API = "/api/v1/datasets"


def dataset_rows() -> list[Dataset]:
    with session_scope() as session:
        return list(session.query(Dataset))


class TestUpload:
    def test_parses_in_a_job_and_keeps_original_and_records(self, client, auth, worker):
        response = post_dataset(client, auth, "qa", "qa.jsonl", jsonl(*QA), description="Quiz")
        assert response.status_code == 202
        accepted = response.json()
        assert set(accepted) == {"id", "job_id"}
        job = wait_for_job(accepted["job_id"])
        assert job.status == "succeeded", job.error
        assert job.kind == "dataset.parse"
        assert job.uses == [f"dataset:{accepted['id']}"]
        assert job.message == "Dataset 'qa' is ready: 3 records, prompt_completion"
        dataset = client.get(f"{API}/{accepted['id']}", headers=auth).json()
        records_file = Layout().dataset_dir(accepted["id"]) / "records.jsonl"
        assert dataset == {
            "id": accepted["id"],
            "name": "qa",
            "description": "Quiz",
            "status": "ready",
            "format": "prompt_completion",
            "fields": ["prompt", "completion"],
            "record_count": 3,
            "errors": [],
            "digest": hashlib.sha256(records_file.read_bytes()).hexdigest(),
            "file_type": "jsonl",
            "original_filename": "qa.jsonl",
            "size_bytes": len(jsonl(*QA)),
            "column_mapping": {},
            "created_at": dataset["created_at"],
            "job_id": accepted["job_id"],
        }
        assert stored_files(accepted["id"]) == ["original.jsonl", "records.jsonl"]
        assert [json.loads(line) for line in records_file.read_text().splitlines()] == QA

    def test_progress_events_end_at_100(self, client, auth, worker):
        _, job = add_and_parse(client, auth, "qa", "qa.jsonl", jsonl(*QA))
        assert job.progress == 100

    def test_unknown_extension_is_422_and_keeps_nothing(self, client, auth):
        response = post_dataset(client, auth, "qa", "qa.txt", jsonl(*QA))
        assert response.status_code == 422
        assert response.json()["detail"] == (
            "Cannot read 'qa.txt': the file type must be one of .jsonl, .json, .csv, .parquet."
        )
        assert dataset_rows() == []
        assert not (Layout().root / "datasets").exists() or not any(
            (Layout().root / "datasets").iterdir()
        )

    def test_file_over_the_limit_is_413_and_keeps_nothing(self, client, auth, monkeypatch):
        monkeypatch.setenv("TUNEYARD_DATASET_MAX_FILE_BYTES", "100")
        reset_settings()
        response = post_dataset(client, auth, "big", "big.jsonl", jsonl(*QA * 5))
        assert response.status_code == 413
        assert response.json() == {
            "error": "TooLarge",
            "detail": "The file is larger than the limit of 100 bytes; split it into smaller "
            "files, or raise TUNEYARD_DATASET_MAX_FILE_BYTES.",
        }
        assert dataset_rows() == []
        assert list((Layout().root / "datasets").iterdir()) == []
        with session_scope() as session:
            assert session.query(Job).count() == 0

    def test_same_name_as_a_ready_dataset_is_409(self, client, auth, worker):
        add_and_parse(client, auth, "qa", "qa.jsonl", jsonl(*QA))
        response = post_dataset(client, auth, "qa", "other.jsonl", jsonl(*QA))
        assert response.status_code == 409
        assert response.json()["detail"] == (
            "A dataset named 'qa' already exists (ready); choose another name, or delete it "
            "first with `tuneyard data rm qa`."
        )
        assert len(dataset_rows()) == 1

    def test_same_name_as_a_parsing_dataset_is_409(self, client, auth):
        assert post_dataset(client, auth, "qa", "qa.jsonl", jsonl(*QA)).status_code == 202
        response = post_dataset(client, auth, "qa", "qa.jsonl", jsonl(*QA))
        assert response.status_code == 409
        assert "already exists (parsing)" in response.json()["detail"]

    def test_upload_replaces_a_failed_dataset_of_the_same_name(self, client, auth, worker):
        failed, job = add_and_parse(client, auth, "qa", "qa.jsonl", b"[1]\n")
        assert job.status == "failed" and failed["status"] == "failed"
        dataset, job = add_and_parse(client, auth, "qa", "qa.jsonl", jsonl(*QA))
        assert job.status == "succeeded", job.error
        assert dataset["status"] == "ready" and dataset["id"] != failed["id"]
        assert [row.id for row in dataset_rows()] == [dataset["id"]]
        assert client.get(f"{API}/{failed['id']}", headers=auth).status_code == 404

    @pytest.mark.parametrize(
        ("name", "message"),
        [
            ("", "name: Field required"),
            ("   ", "A dataset name is 1-200 characters."),
            ("x" * 201, "A dataset name is 1-200 characters."),
        ],
    )
    def test_name_must_be_1_to_200_characters(self, client, auth, name, message):
        response = post_dataset(client, auth, name, "qa.jsonl", jsonl(*QA))
        assert response.status_code == 422
        assert message in response.json()["detail"]
        assert dataset_rows() == []

    @pytest.mark.parametrize(
        ("mapping", "message"),
        [
            ("{not json", "column_mapping must be a JSON object of source field -> canonical"),
            ('["q"]', "column_mapping must map field names to field names (strings)"),
            ({"q": "question"}, "column_mapping maps 'q' to 'question', which no format uses"),
            ({"q": "prompt", "p": "prompt"}, "column_mapping maps 'q' and 'p' to 'prompt'"),
        ],
    )
    def test_bad_column_mapping_is_422(self, client, auth, mapping, message):
        response = post_dataset(client, auth, "qa", "qa.jsonl", jsonl(*QA), mapping=mapping)
        assert response.status_code == 422
        assert message in response.json()["detail"]
        assert dataset_rows() == []

    def test_viewer_cannot_upload(self, client):
        viewer = user_in(client, "1001", "vera", "viewer")
        response = post_dataset(client, viewer, "qa", "qa.jsonl", jsonl(*QA))
        assert response.status_code == 403
        assert dataset_rows() == []


ALPACA = {"instruction": "Add", "input": "2 and 2", "output": "4"}


class TestFormats:
    @pytest.mark.parametrize(
        ("filename", "content", "fmt", "fields"),
        [
            ("chat.jsonl", jsonl(CHAT_RECORD, CHAT_RECORD), "chat", ["messages"]),
            ("pairs.jsonl", jsonl(PAIR_RECORD), "preference", ["prompt", "chosen", "rejected"]),
            ("alpaca.jsonl", jsonl(ALPACA), "alpaca", ["instruction", "input", "output"]),
            (
                "alpaca-no-input.jsonl",
                jsonl({"instruction": "Say hi", "output": "Hi"}),
                "alpaca",
                ["instruction", "output"],
            ),
            ("qa.jsonl", jsonl(*QA), "prompt_completion", ["prompt", "completion"]),
            ("prompts.jsonl", jsonl({"prompt": "Why?"}), "prompt_only", ["prompt"]),
            (
                "math.jsonl",
                jsonl({"prompt": "2+2?", "answer": "4"}),
                "prompt_only",
                ["prompt", "answer"],
            ),
            ("chat.json", json.dumps([CHAT_RECORD, CHAT_RECORD]).encode(), "chat", ["messages"]),
            (
                "qa.csv",
                b"prompt,completion\nWhat?,4\n",
                "prompt_completion",
                ["prompt", "completion"],
            ),
            (
                "pairs.parquet",
                parquet([PAIR_RECORD]),
                "preference",
                ["prompt", "chosen", "rejected"],
            ),
            ("chat.parquet", parquet([CHAT_RECORD]), "chat", ["messages"]),
        ],
    )
    def test_detects_the_format(self, client, auth, worker, filename, content, fmt, fields):
        dataset, job = add_and_parse(client, auth, filename, filename, content)
        assert job.status == "succeeded", job.error
        assert (dataset["format"], dataset["fields"]) == (fmt, fields)

    def test_csv_records_keep_their_text(self, client, auth, worker):
        content = b'prompt,completion\r\nWhat is 2+2?,4\r\n"Say ""hi"",\nplease",hi\r\n'
        dataset, _ = add_and_parse(client, auth, "qa", "qa.csv", content)
        records = client.get(f"{API}/{dataset['id']}/preview", headers=auth).json()["items"]
        assert records == [
            {"prompt": "What is 2+2?", "completion": "4"},
            {"prompt": 'Say "hi",\nplease', "completion": "hi"},
        ]

    def test_chat_wins_over_other_formats_and_extra_fields_are_kept(self, client, auth, worker):
        record = {**CHAT_RECORD, "prompt": "ignored by detection", "source": "web", "score": 3}
        dataset, _ = add_and_parse(client, auth, "mixed", "mixed.jsonl", jsonl(record))
        assert dataset["format"] == "chat"
        assert dataset["fields"] == ["messages", "prompt", "source", "score"]
        items = client.get(f"{API}/{dataset['id']}/preview", headers=auth).json()["items"]
        assert items == [record]

    def test_blank_lines_and_a_byte_order_mark_are_skipped(self, client, auth, worker):
        content = b"\xef\xbb\xbf" + jsonl(QA[0]) + b"\n   \n" + jsonl(QA[1]) + b"\n"
        dataset, job = add_and_parse(client, auth, "qa", "qa.jsonl", content)
        assert job.status == "succeeded", job.error
        assert dataset["record_count"] == 2

    def test_column_mapping_renames_fields(self, client, auth, worker):
        content = jsonl({"question": "2+2?", "answer": "4", "id": 1})
        mapping = {"question": "prompt", "answer": "completion"}
        dataset, job = add_and_parse(client, auth, "qa", "qa.jsonl", content, mapping=mapping)
        assert job.status == "succeeded", job.error
        assert dataset["format"] == "prompt_completion"
        assert dataset["fields"] == ["prompt", "completion", "id"]
        assert dataset["column_mapping"] == mapping
        items = client.get(f"{API}/{dataset['id']}/preview", headers=auth).json()["items"]
        assert items == [{"prompt": "2+2?", "completion": "4", "id": 1}]

    def test_column_mapping_overrides_detection(self, client, auth, worker):
        # Detected alone this is prompt_completion; mapped, the completion is a reference
        # answer and the records are prompts.
        mapping = {"completion": "answer"}
        dataset, _ = add_and_parse(client, auth, "qa", "qa.jsonl", jsonl(*QA), mapping=mapping)
        assert dataset["format"] == "prompt_only"
        assert dataset["fields"] == ["prompt", "answer"]

    def test_column_mapping_of_a_csv_header(self, client, auth, worker):
        content = b"question,response\nWhat is 2+2?,4\n"
        mapping = {"question": "prompt", "response": "completion"}
        dataset, job = add_and_parse(client, auth, "qa", "qa.csv", content, mapping=mapping)
        assert job.status == "succeeded", job.error
        assert dataset["format"] == "prompt_completion"


class TestListAndShow:
    def test_list_is_paginated_newest_first(self, client, auth):
        for name in ("a", "b", "c"):
            assert post_dataset(client, auth, name, "qa.jsonl", jsonl(*QA)).status_code == 202
        page = client.get(f"{API}?limit=2", headers=auth).json()
        assert page["total"] == 3
        assert [item["name"] for item in page["items"]] == ["c", "b"]
        rest = client.get(f"{API}?limit=2&offset=2", headers=auth).json()
        assert [item["name"] for item in rest["items"]] == ["a"]

    def test_unknown_dataset_is_404(self, client, auth):
        response = client.get(f"{API}/nope", headers=auth)
        assert response.status_code == 404
        assert (
            response.json()["detail"] == "No dataset 'nope'. List them with `tuneyard data list`."
        )


class TestPreview:
    def test_pages_through_records(self, client, auth, worker):
        records = [{"prompt": f"p{i}", "completion": f"c{i}"} for i in range(7)]
        dataset, _ = add_and_parse(client, auth, "qa", "qa.jsonl", jsonl(*records))
        url = f"{API}/{dataset['id']}/preview"
        assert client.get(f"{url}?limit=3", headers=auth).json() == {
            "items": records[:3],
            "total": 7,
        }
        assert client.get(f"{url}?limit=3&offset=6", headers=auth).json()["items"] == records[6:]
        assert client.get(f"{url}?offset=10", headers=auth).json() == {"items": [], "total": 7}
        assert client.get(f"{url}?limit=0", headers=auth).status_code == 422

    def test_a_dataset_still_parsing_is_409(self, client, auth):
        accepted = post_dataset(client, auth, "qa", "qa.jsonl", jsonl(*QA)).json()
        response = client.get(f"{API}/{accepted['id']}/preview", headers=auth)
        assert response.status_code == 409
        assert response.json()["detail"] == (
            f"Dataset 'qa' is still being parsed; wait for job {accepted['job_id']} "
            f"(`tuneyard jobs show {accepted['job_id']}`)."
        )

    def test_a_failed_dataset_is_409_with_its_first_error(self, client, auth, worker):
        dataset, _ = add_and_parse(client, auth, "qa", "qa.jsonl", b"[1]\n")
        response = client.get(f"{API}/{dataset['id']}/preview", headers=auth)
        assert response.status_code == 409
        assert response.json()["detail"] == (
            "Dataset 'qa' failed to parse (Line 1: not a JSON object (got a list)); fix the "
            "file and upload it again under the same name."
        )


class TestIterRecords:
    def test_yields_the_normalised_records(self, client, auth, worker):
        content = jsonl({"question": "2+2?", "answer": "4"})
        mapping = {"question": "prompt", "answer": "completion"}
        dataset, _ = add_and_parse(client, auth, "qa", "qa.jsonl", content, mapping=mapping)
        with session_scope() as session:
            row = session.get(Dataset, dataset["id"])
        assert list(service.iter_records(row)) == [{"prompt": "2+2?", "completion": "4"}]


class TestDelete:
    def test_removes_the_row_and_the_files(self, client, auth, worker):
        dataset, _ = add_and_parse(client, auth, "qa", "qa.jsonl", jsonl(*QA))
        assert stored_files(dataset["id"])
        response = client.delete(f"{API}/{dataset['id']}", headers=auth)
        assert response.status_code == 204
        assert client.get(f"{API}/{dataset['id']}", headers=auth).status_code == 404
        assert not Layout().dataset_dir(dataset["id"]).exists()
        assert dataset_rows() == []

    def test_refused_while_a_job_uses_it(self, client, auth):
        accepted = post_dataset(client, auth, "qa", "qa.jsonl", jsonl(*QA)).json()
        response = client.delete(f"{API}/{accepted['id']}", headers=auth)
        assert response.status_code == 409
        job_id = accepted["job_id"]
        assert response.json()["detail"] == (
            f"Dataset 'qa' is in use by dataset.parse job {job_id} (queued); wait for it or "
            f"cancel it with `tuneyard jobs cancel {job_id}`."
        )
        assert stored_files(accepted["id"]) == ["original.jsonl"]
        assert len(dataset_rows()) == 1

    def test_viewer_cannot_delete(self, client, auth, worker):
        dataset, _ = add_and_parse(client, auth, "qa", "qa.jsonl", jsonl(*QA))
        viewer = user_in(client, "1001", "vera", "viewer")
        assert client.delete(f"{API}/{dataset['id']}", headers=viewer).status_code == 403
        assert stored_files(dataset["id"]) == ["original.jsonl", "records.jsonl"]


class TestIsolation:
    def test_another_projects_dataset_is_404(self, client, auth, worker):
        dataset, _ = add_and_parse(client, auth, "qa", "qa.jsonl", jsonl(*QA))
        other = user_in(client, "2002", "bob")
        for url in ("", "/preview", "/stats"):
            response = client.get(f"{API}/{dataset['id']}{url}", headers=other)
            assert response.status_code == 404, url
            assert response.json()["detail"] == (
                f"No dataset '{dataset['id']}'. List them with `tuneyard data list`."
            )
        assert client.delete(f"{API}/{dataset['id']}", headers=other).status_code == 404
        assert client.get(API, headers=other).json() == {"items": [], "total": 0}
        assert stored_files(dataset["id"]) == ["original.jsonl", "records.jsonl"]

    def test_names_are_unique_per_project_only(self, client, auth, worker):
        add_and_parse(client, auth, "qa", "qa.jsonl", jsonl(*QA))
        other = user_in(client, "2002", "bob")
        dataset, job = add_and_parse(client, other, "qa", "qa.jsonl", jsonl(*QA))
        assert job.status == "succeeded", job.error
        assert client.get(API, headers=other).json()["total"] == 1


class TestInterruptedParse:
    """on_failure runs wherever a parse ends without success; here as the worker calls it."""

    def start(self, client, auth) -> tuple[str, str]:
        accepted = post_dataset(client, auth, "qa", "qa.jsonl", jsonl(*QA)).json()
        assert Executor().claim(accepted["job_id"])
        # What a parse killed mid-write leaves: a temp file beside the records file.
        folder = Layout().dataset_dir(accepted["id"])
        (folder / ".records.jsonl.abc123.tmp").write_text('{"prompt": "half')
        return accepted["id"], accepted["job_id"]

    def test_a_killed_parse_marks_the_dataset_failed_and_removes_its_files(self, client, auth):
        dataset_id, job_id = self.start(client, auth)
        with session_scope() as session:
            jobs.finish(session, session.get(Job, job_id), "failed", error=describe_exit(-9))
        dataset = client.get(f"{API}/{dataset_id}", headers=auth).json()
        assert dataset["status"] == "failed"
        assert dataset["errors"] == [
            "The job's process was killed by SIGKILL (out of memory, or killed by hand) "
            "before it finished."
        ]
        assert not Layout().dataset_dir(dataset_id).exists()

    def test_a_cancelled_parse_marks_the_dataset_failed(self, client, auth):
        dataset_id, job_id = self.start(client, auth)
        with session_scope() as session:
            jobs.finish(session, session.get(Job, job_id), "cancelled", message="Cancelled")
        dataset = client.get(f"{API}/{dataset_id}", headers=auth).json()
        assert dataset["status"] == "failed"
        assert dataset["errors"] == ["The parse was cancelled before it finished."]
        assert not Layout().dataset_dir(dataset_id).exists()
        assert post_dataset(client, auth, "qa", "qa.jsonl", jsonl(*QA)).status_code == 202

    def test_cancelling_a_queued_parse_marks_the_dataset_failed(self, client, auth):
        accepted = post_dataset(client, auth, "qa", "qa.jsonl", jsonl(*QA)).json()
        response = client.post(f"/api/v1/jobs/{accepted['job_id']}/cancel", headers=auth)
        assert response.json()["status"] == "cancelled"
        dataset = client.get(f"{API}/{accepted['id']}", headers=auth).json()
        assert dataset["status"] == "failed"
        assert not Layout().dataset_dir(accepted["id"]).exists()

    def test_a_parse_killed_while_reading(self, client, auth, worker):
        line = jsonl({"prompt": "What is the capital of France?", "completion": "Paris."})
        accepted = post_dataset(client, auth, "big", "big.jsonl", line * 300_000).json()
        running = wait_for_job(accepted["job_id"], statuses=("running",))
        deadline = time.monotonic() + 30
        while running.progress == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
            running = wait_for_job(accepted["job_id"], statuses=("running",))
        assert running.message.startswith("Read ") and running.message.endswith(
            " records of big.jsonl"
        )
        [partial, original] = stored_files(accepted["id"])
        assert partial.startswith(".records.jsonl.") and original == "original.jsonl"
        os.kill(running.pid, signal.SIGKILL)
        job = wait_for_job(accepted["job_id"])
        assert job.status == "failed" and "killed by SIGKILL" in job.error
        dataset = client.get(f"{API}/{accepted['id']}", headers=auth).json()
        assert (dataset["status"], dataset["errors"]) == ("failed", [job.error])
        assert not Layout().dataset_dir(accepted["id"]).exists()
