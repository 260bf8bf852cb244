"""Jobs on a Ray cluster whose nodes share no disk with the API: an S3 store (moto's server)
carries their folders. The API's data dir and the node's are different folders; what a job
made on the node is usable from the API once the job shows succeeded."""

from __future__ import annotations

import json
import shutil
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from sqlalchemy import select

from tests.helpers import (
    CHAT,
    DATASETS,
    FAST,
    closed_port,
    finish,
    lora_b_norm,
    make_customized,
    save,
    start,
    upload,
    wait_for_job,
)
from tuneyard import artifacts
from tuneyard.config import get_settings, reset_settings
from tuneyard.db import session_scope
from tuneyard.errors import Unavailable
from tuneyard.jobs import service
from tuneyard.jobs.engines import new_executor
from tuneyard.jobs.executor import Executor
from tuneyard.jobs.keys import Resource, UseKey
from tuneyard.jobs.ray_executor import RayExecutor
from tuneyard.models import BaseModel, CompleteModel, CustomizedModel, Dataset, Job

pytestmark = pytest.mark.backend_free

BUCKET = "tuneyard-artifacts"
SECRET = "store-secret-never-shown-4711"


@pytest.fixture(scope="module")
def s3_endpoint():
    """An S3-compatible server (moto) on a free port, with one bucket."""
    import boto3
    from moto import server as moto_server

    port = closed_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id="tuneyard",
        aws_secret_access_key=SECRET,
        region_name="us-east-1",
    ).create_bucket(Bucket=BUCKET)
    yield endpoint
    server.stop()


@pytest.fixture
def node_dir(tmp_path, data_dir) -> Path:
    node = tmp_path / "node-data"
    assert not node.is_relative_to(data_dir) and not data_dir.is_relative_to(node)
    return node


@pytest.fixture
def store_settings(on_ray, s3_endpoint, node_dir, monkeypatch) -> str:
    """This test's settings: the cluster, a fresh prefix of the bucket as the store, and a
    node data dir apart from the API's."""
    url = f"s3://{BUCKET}/{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("TUNEYARD_ARTIFACT_STORE", url)
    options = {"endpoint_url": s3_endpoint, "key": "tuneyard", "secret": SECRET}
    monkeypatch.setenv("TUNEYARD_ARTIFACT_STORE_OPTIONS", json.dumps(options))
    monkeypatch.setenv("TUNEYARD_NODE_DATA_DIR", str(node_dir))
    reset_settings()
    return url


@pytest.fixture
def store_worker(store_settings, admin_password):
    executor = new_executor()
    assert isinstance(executor, RayExecutor) and executor.store is not None
    executor.start()
    yield executor
    executor.stop()


def reaped(executor: RayExecutor, job_id: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while job_id in executor.on_cluster:
        assert time.monotonic() < deadline, f"job {job_id} was never reaped"
        time.sleep(0.1)


def shows_no_secret(client, auth, job_id: str) -> None:
    shown = client.get(f"/api/v1/jobs/{job_id}", headers=auth).text
    logs = client.get(f"/api/v1/jobs/{job_id}/logs", headers=auth).text
    with session_scope() as session:
        job = session.get_one(Job, job_id)
        stored = json.dumps([job.params, job.message, job.error, job.result, job.node])
    for text in (shown, logs, stored):
        assert SECRET not in text


def test_an_unusable_store_refuses_the_worker(on_ray, s3_endpoint, monkeypatch):
    monkeypatch.setenv("TUNEYARD_ARTIFACT_STORE", "nosuch://bucket")
    reset_settings()
    with pytest.raises(Unavailable, match="fsspec knows no 'nosuch://' file system"):
        new_executor()
    monkeypatch.setenv("TUNEYARD_ARTIFACT_STORE", "s3://no-such-bucket/prefix")
    options = {"endpoint_url": s3_endpoint, "key": "tuneyard", "secret": SECRET}
    monkeypatch.setenv("TUNEYARD_ARTIFACT_STORE_OPTIONS", json.dumps(options))
    reset_settings()
    with pytest.raises(Unavailable, match="Cannot write to the artifact store") as refused:
        new_executor()
    assert SECRET not in str(refused.value)


def test_a_job_waits_while_another_on_the_cluster_changes_what_it_uses(store_settings, principal):
    """A parse running on the cluster changes its dataset until it lands: a job using that
    dataset waits; a training running on it only reads it, and does not hold others back."""
    executor = new_executor()
    assert isinstance(executor, RayExecutor)
    with session_scope() as session:
        parse = service.enqueue(
            session,
            principal,
            "dataset.parse",
            {"dataset_id": "d1"},
            uses=[UseKey(Resource.DATASET, "d1")],
        )
        training = service.enqueue(
            session,
            principal,
            "training.run",
            {"training_id": "t1"},
            uses=[UseKey(Resource.TRAINING, "t1"), UseKey(Resource.DATASET, "d2")],
        )
        for job in (parse, training):
            job.status, job.resources = "running", {"num_cpus": 1.0}
        parse_id = parse.id
    reason = executor._busy_inputs("other", ["training:t9", "dataset:d1"])
    assert reason == (
        f"Waiting for job {parse_id} (dataset.parse) to finish: it changes dataset:d1, whose "
        "files this job needs."
    )
    assert executor._busy_inputs("other", ["training:t9", "dataset:d2"]) is None
    assert executor._busy_inputs(parse_id, ["dataset:d1"]) is None


def test_a_job_reading_a_folder_the_data_dir_lacks_waits_for_a_local_worker(
    store_settings, data_dir
):
    """A job runs on a node only when the folders it reads are the API's data dir's own (the
    store carries those): a base model registered where it lies keeps its job for a local
    worker; the folders a job writes need not be there yet."""
    executor = new_executor()
    assert isinstance(executor, RayExecutor)
    (data_dir / "datasets" / "d1").mkdir(parents=True)
    (data_dir / "models" / "customized" / "m1").mkdir(parents=True)
    training = ["training:t1", "base_model:b1", "dataset:d1"]
    saving = ["customized_model:m1", "base_model:b1", "complete_model:c1"]
    waits = (
        "Waiting for a local worker (TUNEYARD_EXECUTOR=local, on the API's machine): this job "
        "reads base_model:b1, whose folder is not models/base/b1 of the API's data dir (a model "
        "registered where it lies stays there), so an artifact store cannot carry it, and the "
        "Ray cluster's nodes share no disk with the API (TUNEYARD_ARTIFACT_STORE)."
    )
    assert executor._needs_data_dir("training.run", training) == waits
    assert executor._needs_data_dir("complete.save", saving) == waits
    (data_dir / "models" / "base" / "b1").mkdir(parents=True)
    assert executor._needs_data_dir("training.run", training) is None
    assert executor._needs_data_dir("complete.save", saving) is None
    assert executor._needs_data_dir("base_model.download_hub", ["base_model:b2"]) is None
    gguf = executor._needs_data_dir("base_model.import_gguf", ["base_model:b2"])
    assert gguf is not None and "job kind 'base_model.import_gguf' needs the API's data dir" in gguf


def test_a_model_shipped_in_the_python_environment_is_read_in_place_on_a_node(
    store_settings, principal
):
    """The demo embedding model is registered in place in its package's folder: the nodes'
    Python environment, the same as the workers', holds it, so its jobs run on nodes."""
    from tuneyard.basemodels.service import add_demo_embedding

    with session_scope() as session:
        model = add_demo_embedding(session, principal)
        model_id, path = model.id, Path(model.path)
    assert path.is_relative_to(Path(sys.prefix)), path
    executor = new_executor()
    assert isinstance(executor, RayExecutor)
    uses = ["knowledge_base:k1", f"base_model:{model_id}"]
    assert executor._needs_data_dir("knowledge.ingest", uses) is None


class ReadyRowsWatch(threading.Thread):
    """Reads the database every few milliseconds while a test runs: each dataset, customized
    and complete model that says ready, and whether its files are in the API's data dir then."""

    def __init__(self, data_dir: Path):
        super().__init__(daemon=True)
        self.data_dir = data_dir
        self.seen: set[str] = set()
        self.too_early: list[str] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            with session_scope() as session:
                ready = (
                    [
                        (f"datasets/{dataset_id}", "records.jsonl")
                        for dataset_id in session.scalars(
                            select(Dataset.id).where(Dataset.status == "ready")
                        )
                    ]
                    + [
                        (f"models/customized/{model_id}", "adapter_config.json")
                        for model_id in session.scalars(select(CustomizedModel.id))
                    ]
                    + [
                        (f"models/complete/{model_id}", "config.json")
                        for model_id in session.scalars(
                            select(CompleteModel.id).where(CompleteModel.status == "ready")
                        )
                    ]
                )
            for key, file in ready:
                if key not in self.seen:
                    self.seen.add(key)
                    if not (self.data_dir / key / file).is_file():
                        self.too_early.append(key)
            time.sleep(0.02)

    def stop(self) -> None:
        self.done.set()
        self.join()


@pytest.mark.slow
class TestWithoutSharedDisk:
    def test_parse_and_training_land_in_the_api_data_dir(
        self, client, auth, tiny_base, tiny_model_dir, store_worker, data_dir, node_dir
    ):
        # The base model as a download keeps it: in the API's data dir, which the node lacks.
        home = data_dir / "models" / "base" / tiny_base
        shutil.copytree(tiny_model_dir, home)
        with session_scope() as session:
            session.get_one(BaseModel, tiny_base).path = str(home)
        watch = ReadyRowsWatch(data_dir)
        watch.start()
        dataset_id = upload(client, auth, "chat", CHAT)
        # Parsed on the node, in its own data dir; the records are home once the job succeeded.
        assert (node_dir / "datasets" / dataset_id).is_dir()
        with session_scope() as session:
            dataset = session.get_one(Dataset, dataset_id)
            parse_job = dataset.job_id
        preview = client.get(f"{DATASETS}/{dataset_id}/preview", headers=auth)
        assert preview.status_code == 200, preview.text
        assert len(preview.json()["items"]) > 0
        training = finish(client, auth, start(client, auth, tiny_base, dataset_id, **FAST))
        assert training["status"] == "succeeded"
        model_id = training["customized_model_id"]
        watch.stop()
        # Each row that said ready was seen only once its files were in the API's data dir.
        assert watch.seen == {f"datasets/{dataset_id}", f"models/customized/{model_id}"}
        assert watch.too_early == []
        model = client.get(f"/api/v1/customized-models/{model_id}", headers=auth).json()
        # Recorded where it landed in the API's data dir, and usable there.
        assert Path(model["path"]) == data_dir / "models" / "customized" / model_id
        assert lora_b_norm(Path(model["path"])) > 0
        assert (node_dir / "models" / "base" / tiny_base / "config.json").is_file()
        assert (node_dir / "models" / "customized" / model_id).is_dir()
        with session_scope() as session:
            jobs = session.query(Job).order_by(Job.created_at).all()
            assert [(job.kind, job.status) for job in jobs] == [
                ("dataset.parse", "succeeded"),
                ("training.run", "succeeded"),
            ]
            train_job = jobs[1].id
        logs = client.get(f"/api/v1/jobs/{train_job}/logs", headers=auth).text
        assert f"job {train_job} (training.run) started" in logs
        assert "job succeeded" in logs
        for job_id in (parse_job, train_job):
            shows_no_secret(client, auth, job_id)

    def test_a_save_on_a_node_lands_before_its_model_says_ready(
        self,
        client,
        auth,
        tiny_base,
        tiny_model_dir,
        made_adapter_dir,
        store_settings,
        admin_password,
        data_dir,
        node_dir,
    ):
        from safetensors.torch import load_file

        home = data_dir / "models" / "base" / tiny_base
        shutil.copytree(tiny_model_dir, home)
        with session_scope() as session:
            session.get_one(BaseModel, tiny_base).path = str(home)
        customized = make_customized(tiny_base, made_adapter_dir)
        # The same save by a local worker, on the API's data dir, to compare with.
        response = save(client, auth, customized["id"], dtype="fp32")
        assert response.status_code == 202, response.text
        local_id = response.json()["id"]
        local = Executor()
        try:
            job = local.run_until_finished(response.json()["job_id"])
            assert job.status == "succeeded", job.error
        finally:
            local.stop()
        executor = new_executor()
        assert isinstance(executor, RayExecutor) and executor.store is not None
        executor.start()
        watch = ReadyRowsWatch(data_dir)
        watch.start()
        try:
            response = save(client, auth, customized["id"], dtype="fp32")
            assert response.status_code == 202, response.text
            model_id, job_id = response.json()["id"], response.json()["job_id"]
            job = wait_for_job(job_id)
            assert job.status == "succeeded", job.error
            reaped(executor, job_id)
        finally:
            watch.stop()
            executor.stop()
        assert job.node is not None  # it ran on the cluster, in the node's data dir
        assert (node_dir / "models" / "complete" / model_id / "config.json").is_file()
        assert not (node_dir / "models" / "complete" / local_id).exists()
        # Its row said ready only once its files were in the API's data dir.
        assert f"models/complete/{model_id}" in watch.seen
        assert watch.too_early == []
        model = client.get(f"/api/v1/complete-models/{model_id}", headers=auth).json()
        assert model["status"] == "ready"
        folder = Path(model["path"])
        assert folder == data_dir / "models" / "complete" / model_id
        reference = data_dir / "models" / "complete" / local_id
        names = sorted(path.name for path in folder.glob("*.safetensors"))
        assert names and names == sorted(path.name for path in reference.glob("*.safetensors"))
        for name in names:
            mine, theirs = load_file(folder / name), load_file(reference / name)
            assert sorted(mine) == sorted(theirs)
            assert all(mine[key].equal(theirs[key]) for key in theirs), name
        shows_no_secret(client, auth, job_id)

    def test_a_save_reading_a_base_model_registered_in_place_waits_for_a_local_worker(
        self, client, auth, principal, tiny_base, made_adapter_dir, store_worker, data_dir
    ):
        customized = make_customized(tiny_base, made_adapter_dir)
        response = save(client, auth, customized["id"])
        assert response.status_code == 202, response.text
        model_id, job_id = response.json()["id"], response.json()["job_id"]
        with session_scope() as session:
            # Not held up behind it: a parse runs on the cluster (and fails: no such dataset).
            later = service.enqueue(session, principal, "dataset.parse", {"dataset_id": "none"}).id
        assert wait_for_job(later).status == "failed"
        with session_scope() as session:
            job = session.get_one(Job, job_id)
        assert job.status == "queued"
        assert job.message == (
            "Waiting for a local worker (TUNEYARD_EXECUTOR=local, on the API's machine): this "
            f"job reads base_model:{tiny_base}, whose folder is not models/base/{tiny_base} of "
            "the API's data dir (a model registered where it lies stays there), so an artifact "
            "store cannot carry it, and the Ray cluster's nodes share no disk with the API "
            "(TUNEYARD_ARTIFACT_STORE)."
        )
        local = Executor()  # a local worker beside the ray one takes it
        try:
            job = local.run_until_finished(job_id)
            assert job.status == "succeeded", job.error
        finally:
            local.stop()
        model = client.get(f"/api/v1/complete-models/{model_id}", headers=auth).json()
        assert model["status"] == "ready"
        assert (Path(model["path"]) / "config.json").is_file()

    def test_a_failed_job_lands_nothing_but_its_log(
        self, client, auth, store_worker, store_settings, data_dir
    ):
        response = client.post(
            DATASETS,
            data={"name": "broken"},
            files={"file": ("broken.jsonl", b'{"messages": 3}\nnot json\n', "application/json")},
            headers=auth,
        )
        assert response.status_code == 202, response.text
        dataset_id, job_id = response.json()["id"], response.json()["job_id"]
        job = wait_for_job(job_id)
        assert job.status == "failed"
        # The job failed itself on its node; its worker then brings its log and cleans up here.
        reaped(store_worker, job_id)
        dataset = client.get(f"{DATASETS}/{dataset_id}", headers=auth).json()
        assert dataset["status"] == "failed"
        # Its upload went out as the parse's input; nothing came back, and its cleanup ran here.
        assert not (data_dir / "datasets" / dataset_id).exists()
        store = artifacts.store_of(get_settings())
        assert store is not None
        manifest = store.manifest(f"datasets/{dataset_id}")
        assert manifest is not None and list(manifest["files"]) == ["original.jsonl"]
        logs = client.get(f"/api/v1/jobs/{job_id}/logs", headers=auth).text
        assert "job failed" in logs
        shows_no_secret(client, auth, job_id)

    def test_a_kind_that_needs_the_data_dir_waits_for_a_local_worker(
        self, principal, store_worker, tmp_path
    ):
        with session_scope() as session:
            job_id = service.enqueue(
                session,
                principal,
                "test.write",
                {"target": str(tmp_path / "out"), "steps": 1, "pid_file": str(tmp_path / "pid")},
            ).id
            # Not held up behind it: a parse runs on the cluster (and fails: no such dataset).
            later = service.enqueue(session, principal, "dataset.parse", {"dataset_id": "none"}).id
        assert wait_for_job(later).status == "failed"
        with session_scope() as session:
            job = session.get_one(Job, job_id)
        assert job.status == "queued"
        assert job.message == (
            "Waiting for a local worker (TUNEYARD_EXECUTOR=local, on the API's machine): job "
            "kind 'test.write' needs the API's data dir, and the Ray cluster's nodes share no "
            "disk with the API (TUNEYARD_ARTIFACT_STORE)."
        )
        assert not (tmp_path / "out").exists()
        local = Executor()  # a local worker beside the ray one takes it
        try:
            job = local.run_until_finished(job_id)
            assert job.status == "succeeded", job.error
        finally:
            local.stop()
        assert (tmp_path / "out").exists()


def test_a_training_that_needs_more_than_its_folders_is_refused_on_a_node():
    from tuneyard.errors import Invalid
    from tuneyard.training.runner import refuse_without_data_dir

    refuse_without_data_dir(1)
    with pytest.raises(Invalid, match=r"data-parallel training \(workers > 1\) cannot run"):
        refuse_without_data_dir(2)
