"""The whole API under schemathesis: no input answers a server error, and every answer (status,
content type, body) is one the OpenAPI document declares.

`schemathesis run` drives the app served by uvicorn on 127.0.0.1, as an admin of a project
that holds one of each object; path and body parameters that name an object are, half of the
time, a real one, so requests get past lookups into the rules behind them. Every operation is
called, none left out: no job worker runs during the run (the jobs it starts stay queued, and
none of them trains, deploys or downloads), and a request that calls out reaches a local
double, a closed port (the hub, the third-party model) or an address the run made up, which
fails within the request's timeout.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.helpers import CHAT, closed_port, make_customized, upload, wait_for_job
from tests.http_double import BackgroundServer

# Every check that judges the server's answers to the requests the run makes.
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
)
PHASES = ("examples", "coverage", "fuzzing", "stateful")
# Enough to reach each operation's validation and its real objects, while the whole run stays
# a few minutes on two busy cores.
MAX_EXAMPLES = 12
# Which real objects the parameters of the operations under a path may name. One entry per
# operation: where several entries match one, schemathesis takes the parameters of the first.
REAL_OBJECTS = {
    r"^/api/v1/base-models/": {"path.model_id": "base", "body.environment_id": "environment"},
    r"^/api/v1/customized-models/": {
        "path.model_id": "customized",
        "body.environment_id": "environment",
    },
    r"^/api/v1/complete-models/": {
        "path.model_id": "complete",
        "body.environment_id": "environment",
    },
    r"^/api/v1/datasets/": {"path.dataset_id": "dataset"},
    r"^/api/v1/deploy-environments/": {"path.environment_id": "environment"},
    r"^/api/v1/live-models/": {"path.live_id": "live"},
    r"^/api/v1/third-party-models/": {"path.third_party_id": "third_party"},
    r"^/api/v1/profiles/": {"path.profile_id": "profile"},
    r"^/api/v1/trainings": {
        "path.training_id": "training",
        "body.base_model_id": "base",
        "body.dataset_id": "dataset",
        "body.profile_id": "profile",
        "body.training_ids[*]": "training",
    },
    r"^/api/v1/jobs/": {"path.job_id": "job"},
    r"^/api/v1/assessments": {
        "path.assessment_id": "assessment",
        "path.other_id": "assessment",
        "body.dataset_id": "dataset",
    },
    r"^/api/v1/chat": {
        "path.session_id": "session",
        "body.session_id": "session",
        "body.model": "chat_model",
        "body.models[*]": "chat_model",
    },
    r"^/api/v1/users/": {"path.username": "user"},
    r"^/api/v1/training-methods/": {"path.name": "method"},
    r"^/api/v1/models/": {"path.reference": "chat_model"},
    r"^/v1/chat/completions$": {"body.model": "chat_model"},
}


@pytest.fixture
def project(
    client, auth, tiny_base, made_adapter_dir, ollama, monkeypatch, worker
) -> dict[str, list[str]]:
    """One of each object, made through the API where it can be; the names that reach them."""
    # Calls out of the machine fail at once rather than wait on the network.
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed_port()}")

    def made(path: str, body: dict, status: int = 201) -> dict:
        response = client.post(f"/api/v1{path}", json=body, headers=auth)
        assert response.status_code == status, response.text
        return response.json()

    dataset = upload(client, auth, "chats", CHAT)
    customized = make_customized(tiny_base, made_adapter_dir)
    complete = made(f"/customized-models/{customized['id']}/save", {}, 202)
    assert wait_for_job(complete["job_id"]).status == "succeeded"
    worker.stop()
    environment = made(
        "/deploy-environments", {"name": "ollama", "kind": "ollama", "url": ollama.url}
    )
    # Chats go to an endpoint nobody listens on: they fail at once, and run no model here.
    remote = made(
        "/third-party-models",
        {
            "name": "remote",
            "provider": "openai-compatible",
            "model_name": "m",
            "base_url": f"http://127.0.0.1:{closed_port()}/v1",
        },
    )
    profile = made("/profiles", {"name": "quick", "params": {"max_steps": 2}})
    training = made(
        "/trainings",
        {"name": "t1", "method": "sft", "base_model_id": tiny_base, "dataset_id": dataset},
        202,
    )
    live = made(
        f"/base-models/{tiny_base}/deploy",
        {"environment_id": environment["id"], "quantization": "q8_0"},
        202,
    )
    made("/users", {"username": "ana", "password": "a long enough password", "role": "member"})
    # Queued for good (no worker runs): its rows are never drawn.
    assessment = made(
        "/assessments",
        {
            "name": "check",
            "dataset_id": dataset,
            "sample": {"size": 1},
            "candidates": [{"model": "remote", "prompt": "{{messages}}"}],
        },
        202,
    )
    chat = client.post(
        "/api/v1/chat",
        json={"model": "remote", "messages": [{"role": "user", "content": "hi"}]},
        headers=auth,
    )
    assert chat.status_code == 200, chat.text
    sessions = client.get("/api/v1/chat/sessions", headers=auth).json()["items"]
    return {
        "base": [tiny_base, "tiny"],
        "customized": [customized["id"]],
        "complete": [complete["id"]],
        "dataset": [dataset],
        "environment": [environment["id"], "ollama"],
        "live": [live["id"]],
        "third_party": [remote["id"], "remote"],
        "chat_model": ["remote", f"third-party:{remote['id']}"],
        "profile": [profile["id"]],
        "training": [training["id"]],
        "job": [training["job_id"]],
        "session": [session["id"] for session in sessions],
        "user": ["admin", "ana"],
        "method": ["sft", "grpo"],
        "assessment": [assessment["id"]],
    }


def schemathesis_config(objects: dict[str, list[str]]) -> str:
    """The run's settings as schemathesis.toml: each real object is named half of the time."""
    lines = [
        # 503 is the documented answer when a service the request needs (the hub, a serving
        # tool, a remote model) cannot be reached, as none can here; 500 stays a failure.
        "[checks.not_a_server_error]",
        f"expected-statuses = {json.dumps(['2xx', '3xx', '4xx', '503'])}",
        "",
    ]
    for name, values in objects.items():
        lines += [f"[dictionaries.{name}]", f"values = {json.dumps(values)}", ""]
    for path_regex, parameters in REAL_OBJECTS.items():
        bindings = ", ".join(
            f'"{parameter}" = {{ dictionary = "{name}", probability = 0.5 }}'
            for parameter, name in parameters.items()
        )
        lines += [
            "[[operations]]",
            f"include-path-regex = {json.dumps(path_regex)}",
            f"parameters = {{ {bindings} }}",
            "",
        ]
    return "\n".join(lines)


def test_fuzzing_finds_no_server_error_and_no_undocumented_answer(app, auth, project, tmp_path):
    config = tmp_path / "schemathesis.toml"
    config.write_text(schemathesis_config(project))
    server = BackgroundServer(app, "Tuneyard API")
    port = server.start()
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "--config-file",
        str(config),
        "run",
        f"http://127.0.0.1:{port}/openapi.json",
        "--header",
        f"Authorization: {auth['Authorization']}",
        "--checks",
        ",".join(CHECKS),
        "--phases",
        ",".join(PHASES),
        "--max-examples",
        str(MAX_EXAMPLES),
        # The same cases on every run: a failure here is one CI can reproduce.
        "--generation-deterministic",
        "--workers",
        "1",
        "--request-timeout",
        "60",
        "--no-color",
    ]
    try:
        result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=1200)
    finally:
        server.stop()
    assert result.returncode == 0, result.stdout[-20000:] + result.stderr[-4000:]
