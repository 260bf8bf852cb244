"""The request model: who asks is settled before a body is read, bodies stop at their limit
while streaming, the gateway has the chat API's caps, and no request holds the database's
write lock across slow work."""

from __future__ import annotations

import http.client
import json
import select
import socket
import threading
from collections.abc import Iterator

import anyio
import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse

from tests.http_double import BackgroundServer
from tuneyard.config import reset_settings
from tuneyard.db import session_scope
from tuneyard.models import Dataset, Job
from tuneyard.storage import Layout

MiB = 1024 * 1024
BOUNDARY = "tuneyard-test-boundary"


class CountingApp:
    """The app, counting the body bytes it takes from the server."""

    def __init__(self, app):
        self.app = app
        self.received = 0

    async def __call__(self, scope, receive, send):
        async def counted():
            message = await receive()
            self.received += len(message.get("body", b""))
            return message

        await self.app(scope, counted, send)


@pytest.fixture
def served(app):
    counting = CountingApp(app)
    server = BackgroundServer(counting, "Tuneyard API")
    server.start()
    yield counting, server.port
    server.stop()


def send_until_answered(port: int, head: bytes, body: Iterator[bytes]):
    """Send `head`, then `body` until the server answers (or it ends); the answer and how many
    body bytes went out before it."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(head)
    sock.setblocking(False)
    sent = 0
    try:
        for chunk in body:
            view = memoryview(chunk)
            while view:
                readable, writable, _ = select.select([sock], [sock], [], 30)
                if readable:
                    raise StopIteration
                if writable:
                    count = sock.send(view)
                    view, sent = view[count:], sent + count
    except (StopIteration, BrokenPipeError, ConnectionResetError):
        pass
    sock.setblocking(True)
    sock.settimeout(30)
    response = http.client.HTTPResponse(sock)
    response.begin()
    answer = (response.status, dict(response.getheaders()), json.loads(response.read()))
    sock.close()
    return answer, sent


def form_start(filename: str) -> bytes:
    return (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="name"\r\n\r\nbig\r\n'
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()


RECORD = json.dumps({"prompt": "p" * 100, "completion": "c" * 100}).encode() + b"\n"
RECORDS = RECORD * (64 * 1024 // len(RECORD))


def upload_head(length: int | None, token: str | None = None) -> bytes:
    lines = [
        "POST /api/v1/datasets HTTP/1.1",
        "Host: 127.0.0.1",
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}",
        f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked",
    ]
    if token:
        lines.append(f"Authorization: Bearer {token}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def nothing_stored() -> bool:
    with session_scope() as session:
        rows = session.query(Dataset).count()
    folder = Layout().root / "datasets"
    return rows == 0 and (not folder.exists() or not any(folder.iterdir()))


class TestUploads:
    def test_an_anonymous_upload_is_refused_before_its_body_is_read(self, served):
        counting, port = served
        total = 300 * MiB

        def body():
            yield form_start("big.jsonl")
            for _ in range(total // len(RECORDS)):
                yield RECORDS

        (status, _headers, answer), sent = send_until_answered(
            port, upload_head(total + 1000), body()
        )
        assert status == 401
        assert answer["detail"].startswith("Send 'Authorization: Bearer <token>'")
        assert counting.received == 0  # not a byte of the body was read
        assert sent < total // 4
        assert nothing_stored()

    def test_an_upload_over_the_limit_stops_while_streaming(self, served, auth, monkeypatch):
        counting, port = served
        monkeypatch.setenv("TUNEYARD_DATASET_MAX_FILE_BYTES", str(MiB))
        reset_settings()
        token = auth["Authorization"].split()[1]

        def chunked():
            yield b"%x\r\n%s\r\n" % (len(form_start("big.jsonl")), form_start("big.jsonl"))
            for _ in range(32 * MiB // len(RECORDS)):
                yield b"%x\r\n%s\r\n" % (len(RECORDS), RECORDS)
            yield b"0\r\n\r\n"

        (status, _headers, answer), _sent = send_until_answered(
            port, upload_head(None, token), chunked()
        )
        assert status == 413
        assert answer == {
            "error": "TooLarge",
            "detail": "The file is larger than the limit of 1.0 MiB; split it into smaller "
            "files, or raise TUNEYARD_DATASET_MAX_FILE_BYTES.",
        }
        # Of the 32 MiB sent: the limit, the form around the file, and what the server had
        # buffered when the limit was passed (it stops reading past 64 KiB; a read is 256 KiB).
        assert counting.received < MiB + 64 * 1024 + 320 * 1024
        assert nothing_stored()

    def test_a_console_upload_over_the_limit_stops_while_streaming(self, monkeypatch):
        # The console's uploader checks the size in the browser; a caller posting to the
        # upload's address directly is stopped by the server, as it streams.
        from tuneyard.api import install_error_handlers
        from tuneyard.gate import RequestGate

        monkeypatch.setenv("TUNEYARD_DATASET_MAX_FILE_BYTES", str(MiB))
        reset_settings()
        stored = []
        page = FastAPI()
        install_error_handlers(page)

        @page.post("/_nicegui/client/{client}/upload/{element}")
        async def upload(request: Request):  # what the console's uploader runs
            async with request.form() as form:
                stored.extend(form.keys())
            return {"upload": "success"}

        counting = CountingApp(RequestGate(page))
        server = BackgroundServer(counting, "console uploads")
        server.start()
        try:
            head = upload_head(None).replace(b"/api/v1/datasets", b"/_nicegui/client/c/upload/u")

            def chunked():
                yield b"%x\r\n%s\r\n" % (len(form_start("big.jsonl")), form_start("big.jsonl"))
                for _ in range(32 * MiB // len(RECORDS)):
                    yield b"%x\r\n%s\r\n" % (len(RECORDS), RECORDS)
                yield b"0\r\n\r\n"

            (status, _headers, answer), _sent = send_until_answered(server.port, head, chunked())
            assert status == 413
            assert answer["detail"] == (
                "The file is larger than the limit of 1.0 MiB; split it into smaller files, or "
                "raise TUNEYARD_DATASET_MAX_FILE_BYTES."
            )
            assert counting.received < MiB + 64 * 1024 + 320 * 1024
            assert stored == []

            declared = upload_head(2 * MiB).replace(
                b"/api/v1/datasets", b"/_nicegui/client/c/upload/u"
            )
            (status, _headers, answer), _sent = send_until_answered(
                server.port, declared, iter([b""])
            )
            assert status == 413
            assert answer["error"] == "TooLarge"
        finally:
            server.stop()

    def test_a_declared_length_over_the_limit_is_refused_at_once(self, client, auth):
        from tuneyard.config import get_settings

        response = client.post(
            "/api/v1/chat",
            content=b"{}",
            headers={
                **auth,
                "content-type": "application/json",
                "content-length": str(get_settings().max_request_bytes + 1),
            },
        )
        assert response.status_code == 413
        assert response.json() == {
            "error": "TooLarge",
            "detail": "The request body is larger than the limit of 16.0 MiB; send less, or "
            "raise TUNEYARD_MAX_REQUEST_BYTES.",
        }

    def test_a_json_body_over_the_limit(self, client, auth, monkeypatch):
        monkeypatch.setenv("TUNEYARD_MAX_REQUEST_BYTES", "1000")
        reset_settings()
        body = {"model": "x", "messages": [{"role": "user", "content": "a" * 2000}]}
        chat = client.post("/api/v1/chat", json=body, headers=auth)
        assert chat.status_code == 413
        assert "larger than the limit of 1,000 bytes" in chat.json()["detail"]
        # The gateway says it in OpenAI's error shape.
        gateway = client.post("/v1/chat/completions", json=body, headers=auth)
        assert gateway.status_code == 413
        assert "larger than the limit of 1,000 bytes" in gateway.json()["error"]["message"]

    def test_a_login_takes_a_small_body(self, client):
        response = client.post(
            "/api/v1/auth/login",
            json={"project_code": "1001", "username": "admin", "password": "x" * MiB},
        )
        assert response.status_code == 413
        assert response.json()["detail"] == "A login is at most 8,192 bytes."


class TestGatewayCaps:
    @pytest.mark.parametrize(
        "change,needle",
        [
            ({"max_tokens": 32769}, "max_tokens: Input should be less than or equal to 32768"),
            ({"max_completion_tokens": 10**9}, "max_completion_tokens: Input should be less"),
            ({"messages": [{"role": "user", "content": "hi"}] * 1001}, "messages: List should"),
            ({"stop": ["a"] * 9}, "List should have at most 8 items"),
            (
                {"messages": [{"role": "user", "content": "a" * 200_001}]},
                "messages[0] has 200,001 characters; a message holds at most 200,000.",
            ),
        ],
    )
    def test_like_the_chat_api(self, client, auth, change, needle):
        body = {"model": "nope", "messages": [{"role": "user", "content": "hi"}], **change}
        response = client.post("/v1/chat/completions", json=body, headers=auth)
        assert response.status_code == 422, response.text
        error = response.json()["error"]
        assert error["type"] == "invalid_request_error"
        assert needle in error["message"]

    def test_the_chat_api_caps_messages_too(self, client, auth):
        body = {"model": "nope", "messages": [{"role": "user", "content": "hi"}] * 1001}
        response = client.post("/api/v1/chat", json=body, headers=auth)
        assert response.status_code == 422
        assert "messages: List should have at most 1000 items" in response.json()["detail"]


def slow_openai_double(arrived: threading.Event, release: threading.Event, hold: float):
    """An OpenAI-compatible server whose answers take `hold` seconds, or until released."""
    double = FastAPI()

    @double.post("/v1/chat/completions")
    async def completions():
        arrived.set()
        await anyio.to_thread.run_sync(release.wait, hold)
        chunk = {
            "choices": [{"index": 0, "delta": {"content": "pong"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1},
        }
        return StreamingResponse(
            iter([f"data: {json.dumps(chunk)}\n\n", "data: [DONE]\n\n"]),
            media_type="text/event-stream",
        )

    return double


@pytest.mark.slow
def test_a_slow_gateway_call_holds_no_write_lock(served, client, auth, principal, worker, tmp_path):
    """SQLite waits 30 s for a write lock: while a model answers for longer than that, a job
    reports progress and GET /jobs answers, both while the call is still in flight."""
    from tuneyard.jobs import service as jobs

    _counting, port = served
    arrived, release = threading.Event(), threading.Event()
    double = BackgroundServer(slow_openai_double(arrived, release, 35.0), "slow model")
    double.start()
    try:
        created = client.post(
            "/api/v1/third-party-models",
            json={
                "name": "slow",
                "provider": "openai-compatible",
                "model_name": "slow-model",
                "base_url": f"http://127.0.0.1:{double.port}/v1",
            },
            headers=auth,
        )
        assert created.status_code == 201, created.text
        with session_scope() as session:
            job_id = jobs.enqueue(
                session, principal, "test.sleep", {"pid_file": str(tmp_path / "pid")}
            ).id

        def progress() -> tuple[str, str | None]:
            """The job's status and its last report ("step N", one every 0.1 s)."""
            with session_scope() as session:
                job = session.get(Job, job_id)
                return job.status, job.message

        while progress()[1] in (None, "step 0"):  # the job runs and reports
            assert progress()[0] in ("queued", "running")
            threading.Event().wait(0.1)

        base = f"http://127.0.0.1:{port}"
        answers: list[httpx.Response] = []
        call = threading.Thread(
            target=lambda: answers.append(
                httpx.post(
                    f"{base}/v1/chat/completions",
                    json={"model": "slow", "messages": [{"role": "user", "content": "ping"}]},
                    headers=auth,
                    timeout=120,
                )
            )
        )
        call.start()
        assert arrived.wait(30), "the gateway did not call the model"

        before = progress()[1]
        while progress()[1] == before and call.is_alive():
            threading.Event().wait(0.05)
        reported_in_flight = call.is_alive()
        listed = httpx.get(f"{base}/api/v1/jobs", headers=auth, timeout=120)
        listed_in_flight = call.is_alive()

        release.set()
        call.join(60)
        assert reported_in_flight, "the job could not report progress during the call"
        assert listed.status_code == 200, listed.text
        assert job_id in [job["id"] for job in listed.json()["items"]]
        assert listed_in_flight, "GET /jobs waited for the call to end"
        assert answers[0].status_code == 200, answers[0].text
        assert answers[0].json()["choices"][0]["message"]["content"] == "pong"
        assert progress()[0] == "running"
    finally:
        release.set()
        double.stop()
