"""`tuneyard train` and `tuneyard customized` against a real server on the tiny model, plus
compare and promote."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from tests.helpers import CHAT, FAST, finish, start, upload
from tuneyard.cli import app

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, list(args))


@pytest.mark.slow
def test_train_start_wait_show_metrics_and_customized(cli, worker, tiny_base, tmp_path):
    data = tmp_path / "codes.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in CHAT))
    added = invoke("data", "add", str(data), "--name", "codes")
    assert added.exit_code == 0, added.output

    started = invoke(
        "train",
        "start",
        "--base",
        "tiny",
        "--data",
        "codes",
        "--name",
        "cli",
        "--param",
        "max_steps=3",
        "--param",
        "batch_size=2",
        "--param",
        "grad_accum_steps=1",
        "--wait",
    )
    assert started.exit_code == 0, started.output
    assert "Customized model:" in started.output and "Loss" in started.output

    trainings = json.loads(invoke("train", "list", "--json").stdout)
    assert [t["status"] for t in trainings] == ["succeeded"]
    training_id = trainings[0]["id"]
    metrics = json.loads(invoke("train", "metrics", training_id, "--json").stdout)
    assert [s for s, _ in metrics["series"]["train"]["loss"]] == [1, 2, 3]
    assert "job succeeded" in invoke("train", "logs", training_id).stdout

    models = json.loads(invoke("customized", "list", "--json").stdout)
    assert len(models) == 1 and models[0]["name"].startswith("tiny_cli_")
    shown = json.loads(invoke("customized", "show", models[0]["name"], "--json").stdout)
    assert shown["model_card"]["lineage"]["dataset"] == "codes"
    assert invoke("customized", "rm", models[0]["id"]).exit_code == 0
    assert json.loads(invoke("customized", "list", "--json").stdout) == []


def test_train_start_errors(cli, tiny_base):
    bad = invoke("train", "start", "--base", "tiny", "--data", "nope", "--name", "x")
    assert bad.exit_code == 1 and "No dataset 'nope'" in bad.output
    odd = invoke(
        "train", "start", "--base", "tiny", "--data", "nope", "--name", "x", "--param", "oops"
    )
    assert odd.exit_code == 1 and "--param takes key=value" in odd.output


@pytest.mark.slow
def test_compare_and_promote_checkpoint(client, auth, worker, tiny_base):
    dataset = upload(client, auth, "codes", CHAT)
    first = finish(client, auth, start(client, auth, tiny_base, dataset, name="a", **FAST))
    second = finish(
        client, auth, start(client, auth, tiny_base, dataset, name="b", **FAST, save_steps=2)
    )
    compared = client.post(
        "/api/v1/trainings/compare",
        json={"training_ids": [first["id"], second["id"]], "metric": "loss"},
        headers=auth,
    ).json()
    assert compared["steps"] == [1, 2, 3, 4, 5, 6]
    assert [t["name"] for t in compared["trainings"]] == ["a", "b"]
    assert all(None not in t["values"] for t in compared["trainings"])

    kept = client.get(f"/api/v1/trainings/{second['id']}/checkpoints", headers=auth)
    assert kept.json() == [2, 4, 6]
    last = client.get(f"/api/v1/trainings/{first['id']}/checkpoints", headers=auth)
    assert last.json() == [6]  # the last step is always kept
    missing = client.post(
        f"/api/v1/trainings/{second['id']}/checkpoints/promote", json={"step": 3}, headers=auth
    )
    assert missing.status_code == 404 and "has: 2, 4, 6" in missing.json()["detail"]
    promoted = client.post(
        f"/api/v1/trainings/{second['id']}/checkpoints/promote", json={"step": 4}, headers=auth
    )
    assert promoted.status_code == 201, promoted.text
    body = promoted.json()
    assert body["name"].endswith("_step4") and body["checkpoint_step"] == 4
    assert body["model_card"]["lineage"]["checkpoint_step"] == 4
    listed = client.get("/api/v1/customized-models", headers=auth).json()
    assert listed["total"] == 3


@pytest.mark.slow
def test_customized_delete_while_in_use_is_409(client, auth, worker, tiny_base, principal):
    from tuneyard.db import session_scope
    from tuneyard.jobs import service as jobs
    from tuneyard.jobs.keys import Resource, UseKey

    dataset = upload(client, auth, "codes", CHAT)
    training = finish(client, auth, start(client, auth, tiny_base, dataset, **FAST))
    model_id = training["customized_model_id"]
    worker.stop()
    with session_scope() as session:
        jobs.enqueue(
            session,
            principal,
            "test.sleep",
            {"pid_file": "/dev/null"},
            uses=[UseKey(Resource.CUSTOMIZED_MODEL, model_id)],
        )
    response = client.delete(f"/api/v1/customized-models/{model_id}", headers=auth)
    assert response.status_code == 409
    assert "in use by test.sleep job" in response.json()["detail"]


@pytest.mark.slow
def test_customized_of_another_project_is_404(client, auth, worker, tiny_base):
    from tests.helpers import login, make_project_user

    dataset = upload(client, auth, "codes", CHAT)
    training = finish(client, auth, start(client, auth, tiny_base, dataset, **FAST))
    make_project_user("2002", "eve", "eve-password")
    eve = login(client, "eve-password", "eve", "2002")
    model_id = training["customized_model_id"]
    for method, url in [
        ("get", f"/api/v1/customized-models/{model_id}"),
        ("delete", f"/api/v1/customized-models/{model_id}"),
        ("get", f"/api/v1/trainings/{training['id']}"),
        ("get", f"/api/v1/trainings/{training['id']}/metrics"),
        ("post", f"/api/v1/trainings/{training['id']}/cancel"),
    ]:
        assert getattr(client, method)(url, headers=eve).status_code == 404, url
    assert client.get("/api/v1/trainings", headers=eve).json()["total"] == 0
