"""DeepImage jobs on a Ray cluster whose nodes share no disk with the API: the image model (in
the data dir's import folder), adapters, source images and training sets travel to the node
through an S3 store (moto's server); images and trained adapters land in the API's data dir
before their rows say they are there. The tiny random-weight SD pipeline, 2 steps, 32 px."""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from pathlib import Path

import psutil
import pytest
from sqlalchemy import select

from tests.helpers import wait_for_job
from tests.images.conftest import generated, png_of
from tests.images.test_training import four_images, post_training, zipped
from tests.images.tiny import build_tiny_sd
from tests.jobs import test_ray_artifacts as store_tests
from tuneyard import artifacts
from tuneyard.config import get_settings
from tuneyard.db import session_scope
from tuneyard.models import GeneratedImage, ImageAdapter, Job
from tuneyard.storage import Layout

# The cluster's store as test_ray_artifacts sets it up: an S3 server, a node data dir apart
# from the API's, the settings naming both, and a Ray worker using them.
s3_endpoint = store_tests.s3_endpoint
node_dir = store_tests.node_dir
store_settings = store_tests.store_settings
store_worker = store_tests.store_worker

FAST = {"steps": 2, "width": 32, "height": 32, "guidance": 5.0}


@pytest.fixture(scope="module")
def tiny_sd_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tiny-sd") / "pipeline"
    return build_tiny_sd(out, tmp_path_factory.mktemp("tiny-clip-vocab"))


@pytest.fixture
def imported_model(client, auth, tiny_sd_dir, data_dir) -> Path:
    """The tiny pipeline put in the data dir's import folder and registered there as "tiny-sd":
    a node has it only through the store."""
    folder = data_dir / "import" / "tiny-sd"
    shutil.copytree(tiny_sd_dir, folder)
    response = client.post(
        "/api/v1/image-models", json={"name": "tiny-sd", "path": str(folder)}, headers=auth
    )
    assert response.status_code == 201, response.text
    return folder


def image_process(root: Path) -> int | None:
    """The pid of the image process of the data dir `root`, if it runs."""
    try:
        pid = int((root / "images" / "process" / "pid").read_text())
    except (OSError, ValueError):
        return None
    return pid if psutil.pid_exists(pid) else None


@pytest.fixture
def image_processes(data_dir, node_dir):
    """Ends the image processes the test's jobs started, the node's and the API's."""
    yield
    for root in (node_dir, data_dir):
        pid = image_process(root)
        if pid is not None:
            os.kill(pid, signal.SIGKILL)


class Pipeline:
    """The tiny pipeline loaded in this process, as the API's machine would run a recipe with
    as many CPU threads as the node's image process has: on a CPU, the pixels of a recipe
    depend on how many threads share its sums, and Ray gives a job (and so the image process
    it starts) as many as its actor holds CPUs (OMP_NUM_THREADS)."""

    def __init__(self, folder: Path, node_process: int):
        import torch

        from tuneyard.images.card import read_folder_card
        from tuneyard.images.pipeline import LoadedPipeline

        card = read_folder_card(folder)
        self.loaded = LoadedPipeline({"path": str(folder), "source": "folder", "card": card})
        given = psutil.Process(node_process).environ().get("OMP_NUM_THREADS")
        self.threads = int(given) if given else torch.get_num_threads()

    def pixels(self, recipe: dict, source: Path | None = None, adapters=None) -> bytes:
        import torch

        threads = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            image = self.loaded.generate(recipe, source, lambda _step: None, adapters)
        finally:
            torch.set_num_threads(threads)
        return image.convert("RGB").tobytes()


def wait_for_message(job_id: str, start: str, timeout: float = 30.0) -> Job:
    """The job once its message starts with `start`."""
    deadline = time.monotonic() + timeout
    while True:
        with session_scope() as session:
            job = session.get_one(Job, job_id)
        if (job.message or "").startswith(start):
            return job
        assert time.monotonic() < deadline, f"job {job_id} says: {job.message}"
        time.sleep(0.1)


def pixels(image) -> bytes:
    return image.convert("RGB").tobytes()


class FilesOfRows(threading.Thread):
    """Reads the database every few milliseconds while a test runs: each image and adapter
    row, and whether its file was in the API's data dir when the row was first seen."""

    def __init__(self):
        super().__init__(daemon=True)
        self.seen: set[str] = set()
        self.too_early: list[str] = []
        self.done = threading.Event()

    def run(self) -> None:
        layout = Layout(get_settings())
        while not self.done.is_set():
            with session_scope() as session:
                files = [
                    (image.id, layout.image_file(image.project_id, image.job_id, image.id))
                    for image in session.scalars(select(GeneratedImage))
                ] + [
                    (adapter.id, layout.image_adapter(adapter.project_id, adapter.id))
                    for adapter in session.scalars(select(ImageAdapter))
                ]
            for row_id, path in files:
                if row_id not in self.seen:
                    self.seen.add(row_id)
                    if not path.is_file():
                        self.too_early.append(row_id)
            time.sleep(0.02)

    def stop(self) -> set[str]:
        self.done.set()
        self.join()
        assert self.too_early == []
        return self.seen


@pytest.fixture
def files_of_rows():
    watch = FilesOfRows()
    watch.start()
    yield watch
    watch.done.set()
    watch.join()


@pytest.mark.slow
@pytest.mark.backend_free
def test_generation_on_a_node_makes_the_pixels_the_api_machine_would(
    client,
    auth,
    tiny_sd_dir,
    imported_model,
    store_worker,
    data_dir,
    node_dir,
    image_processes,
    files_of_rows,
):
    accepted, images = generated(
        client, auth, model="tiny-sd", prompt="a red square", seed=42, count=2, **FAST
    )
    # Each image was in the API's data dir before its row was written.
    assert files_of_rows.stop() == {image["id"] for image in images}
    with session_scope() as session:
        project = session.get_one(GeneratedImage, images[0]["id"]).project_id
    for image in images:
        assert (data_dir / "images" / project / accepted["job_id"] / f"{image['id']}.png").is_file()
    # The model reached the node through the store, and the node's image process ran it: the
    # API's machine started none.
    assert (node_dir / "import" / "tiny-sd" / "model_index.json").is_file()
    node_process = image_process(node_dir)
    assert node_process is not None
    assert image_process(data_dir) is None

    here = Pipeline(imported_model, node_process)
    for image in images:
        assert pixels(png_of(client, auth, image["id"])) == here.pixels(image["recipe"])

    # Image-to-image from the first: its source image travels too; the node's image process
    # still holds the pipeline.
    again, [changed] = generated(
        client, auth, model="tiny-sd", prompt="blue", source_image_id=images[0]["id"], **FAST
    )
    assert changed["recipe"]["mode"] == "image-to-image"
    source = Layout().image_source(project, changed["recipe"]["source_digest"])
    assert (node_dir / source.relative_to(data_dir)).is_file()
    job = client.get(f"/api/v1/jobs/{again['job_id']}", headers=auth).json()
    assert job["result"]["pipeline_reused"] == [True]
    assert pixels(png_of(client, auth, changed["id"])) == here.pixels(changed["recipe"], source)

    # A model registered where it lies, outside the data dir, stays there: its generations
    # wait for a local worker.
    outside = client.post(
        "/api/v1/image-models", json={"name": "outside", "path": str(tiny_sd_dir)}, headers=auth
    )
    assert outside.status_code == 201, outside.text
    response = client.post(
        "/api/v1/images", json={"model": "outside", "prompt": "a red square", **FAST}, headers=auth
    )
    assert response.status_code == 202, response.text
    waiting = wait_for_message(response.json()["job_id"], "Waiting for a local worker")
    assert waiting.status == "queued"
    assert f"this job reads {tiny_sd_dir}, which is not in the API's data dir" in waiting.message


@pytest.mark.slow
@pytest.mark.backend_free
def test_an_adapter_trained_on_a_node_is_usable_from_the_api(
    client,
    auth,
    imported_model,
    store_worker,
    data_dir,
    node_dir,
    image_processes,
    files_of_rows,
):
    archive = zipped(four_images())
    response = post_training(client, auth, archive, steps=2, rank=4, learning_rate=0.05, seed=7)
    assert response.status_code == 202, response.text
    accepted = response.json()
    job = wait_for_job(accepted["job_id"], timeout=180)
    assert job.status == "succeeded", (job.error, job.message)
    [adapter] = client.get("/api/v1/image-models/tiny-sd/adapters", headers=auth).json()
    assert adapter["id"] == accepted["adapter_id"]
    home = Layout().image_adapter(job.project_id, adapter["id"])
    assert home.is_file()
    assert files_of_rows.stop() == {adapter["id"]}
    # Its training set was used up: gone from the API's data dir as from the node's.
    sets = Layout().images_dir(job.project_id) / "training-sets"
    assert not sets.exists() or list(sets.iterdir()) == []
    assert list((node_dir / sets.relative_to(data_dir)).iterdir()) == []

    # A generation with it: the adapter travels back to a node, and changes the pixels as it
    # does on the API's machine.
    styled = {"adapters": [{"adapter": "squares", "weight": 1.0}]}
    _, [image] = generated(
        client, auth, model="tiny-sd", prompt="a red square", seed=3, **FAST, **styled
    )
    node_process = image_process(node_dir)
    assert node_process is not None
    here = Pipeline(imported_model, node_process)
    made = pixels(png_of(client, auth, image["id"]))
    assert made == here.pixels(image["recipe"], adapters={adapter["id"]: str(home)})
    assert made != here.pixels({**image["recipe"], "adapters": []})


@pytest.mark.nodb
def test_an_adapter_file_travels_as_one_artifact(tmp_path):
    store = artifacts.open_store(f"file://{tmp_path / 'store'}", {})
    api, node = tmp_path / "api", tmp_path / "node"
    key = "images/p1/adapters/a1.safetensors"
    (api / key).parent.mkdir(parents=True)
    (api / key).write_bytes(b"lora weights")
    assert artifacts.publish(store, api, key)
    assert not artifacts.publish(store, api, key)  # the same file: nothing sent
    assert artifacts.fetch(store, node, key)
    assert (node / key).read_bytes() == b"lora weights"
    assert not artifacts.fetch(store, node, key)
    (api / key).write_bytes(b"other weights")
    assert artifacts.publish(store, api, key)
    assert artifacts.fetch(store, node, key)
    assert (node / key).read_bytes() == b"other weights"
    # Nothing staged is left beside it.
    assert [p.name for p in (node / key).parent.iterdir()] == ["a1.safetensors"]
    artifacts.remove_copy(node, key)
    assert not (node / key).exists()
    assert artifacts.fetched_version(node, key) is None


def test_what_no_active_job_reads_leaves_the_store_then_the_nodes(tmp_path, data_dir, principal):
    from tuneyard.jobs import service as jobs
    from tuneyard.jobs.ray_executor import withdraw_unneeded

    store = artifacts.open_store(f"file://{tmp_path / 'store'}", {})
    model, image = "import/tiny-sd", "images/p1/job-1/i1.png"
    read, unread = "images/p1/adapters/a1.safetensors", "images/p1/adapters/a2.safetensors"
    (data_dir / model).mkdir(parents=True)
    (data_dir / model / "model_index.json").write_text("{}")
    for key in (image, read, unread):
        (data_dir / key).parent.mkdir(parents=True, exist_ok=True)
        (data_dir / key).write_bytes(key.encode())
    for key in (model, image, read, unread):
        artifacts.publish(store, data_dir, key)
    node = tmp_path / "node"
    for key in (model, read, unread):
        artifacts.fetch(store, node, key)
    with session_scope() as session:
        jobs.enqueue(
            session,
            principal,
            "images.generate",
            {
                "model": {"path": "/models/elsewhere"},
                "recipe": {"source_digest": None},
                "adapter_files": {"a1": str(data_dir / read)},
            },
        )
    assert artifacts.published(store) == {model, image, read, unread}
    # Published just now: a job may be about to read it.
    assert withdraw_unneeded(store, get_settings()) == []
    # The adapter a queued generation reads stays; the rest goes, then the node's copies.
    withdrawn = withdraw_unneeded(store, get_settings(), older_than=0)
    assert sorted(withdrawn) == sorted([image, unread, model])
    assert artifacts.published(store) == {read}
    assert artifacts.drop_withdrawn(store, node) == [unread, model]
    assert (node / read).is_file()
    assert not (node / unread).exists() and not (node / model).exists()
