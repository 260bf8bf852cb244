"""Trainings that run uploaded code (GRPO reward files, custom training methods) on a Ray
cluster whose nodes share no disk with the API: the files travel through the artifact store
with the job's folders, checked by their sha256, and leave it once the API no longer has them."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.helpers import CHAT, FAST, LORA_SCRIPT, finish, lora_b_norm, start, upload
from tests.jobs import test_ray_artifacts as without_shared_disk
from tests.jobs.test_ray_artifacts import ReadyRowsWatch, shows_no_secret
from tuneyard import artifacts
from tuneyard.config import get_settings
from tuneyard.db import session_scope
from tuneyard.jobs.engines import new_executor
from tuneyard.jobs.ray_executor import ArtifactRefused, RayExecutor, withdraw_unneeded
from tuneyard.models import BaseModel, Job

pytestmark = pytest.mark.backend_free

# The store (moto's S3 server), the node's data dir and a worker using both, as there.
s3_endpoint = without_shared_disk.s3_endpoint
node_dir = without_shared_disk.node_dir
store_settings = without_shared_disk.store_settings
store_worker = without_shared_disk.store_worker

PROMPTS = [{"prompt": f"What is {i} plus {i}?", "answer": str(2 * i)} for i in range(8)]
REWARD = (
    b"import os\n"
    b"def reward(completions, answer, **_):\n"
    b"    assert not [name for name in os.environ if name.startswith('TUNEYARD_')]\n"
    b"    return [float(len(c) % 3) for c in completions]\n"
)


def test_uploaded_code_travels_checked_and_leaves_once_deleted(tmp_path, data_dir, admin_password):
    store = artifacts.open_store(f"file://{tmp_path / 'store'}", {})
    node = tmp_path / "node"
    key = "rewards/p1/mod3.py"
    (data_dir / key).parent.mkdir(parents=True)
    (data_dir / key).write_bytes(REWARD)
    assert artifacts.file_key(data_dir, data_dir / key) == key
    assert artifacts.publish_single(store, data_dir, key)
    assert not artifacts.publish_single(store, data_dir, key)  # unchanged: nothing sent
    assert artifacts.fetch_single(store, node, key)
    assert (node / key).read_bytes() == REWARD
    assert not artifacts.fetch_single(store, node, key)

    # A copy in the store that is not what its manifest says never reaches the node.
    version = store.manifest(key)["version"]
    store.write(f"{store.path(key)}/{version}", b"def reward(completions, **_):\n    return []\n")
    (node / key).unlink()
    with pytest.raises(artifacts.ArtifactError, match="does not match its manifest"):
        artifacts.fetch_single(store, node, key)
    assert list((node / key).parent.iterdir()) == []

    # Uploaded again with other code: the node gets the new one.
    (data_dir / key).write_bytes(REWARD.replace(b"% 3", b"% 5"))
    assert artifacts.publish_single(store, data_dir, key)
    assert artifacts.fetch_single(store, node, key)
    assert b"% 5" in (node / key).read_bytes()
    assert key in artifacts.published(store)

    # Kept while the API's data dir has it; once deleted there, it leaves the store, and the
    # node drops its copy at its next job.
    assert withdraw_unneeded(store, get_settings(), older_than=0) == []
    (data_dir / key).unlink()
    assert withdraw_unneeded(store, get_settings(), older_than=0) == [key]
    assert key not in artifacts.published(store)
    assert artifacts.drop_withdrawn(store, node) == [key]
    assert not (node / key).exists()


def test_only_uploaded_code_travels_beside_a_jobs_folders(store_settings, data_dir, principal):
    executor = new_executor()
    assert isinstance(executor, RayExecutor)
    # A custom method's training runs on the cluster: its script travels as a file.
    uses = ["training:t1", "training_method:m1"]
    assert executor._needs_data_dir("training.custom", uses) is None
    # A file of the data dir that is no uploaded code is never sent.
    (data_dir / "secret.key").write_text("key")
    with pytest.raises(ArtifactRefused, match="is not uploaded code of the data dir"):
        executor._send_inputs("j1", "training.run", ["training:t1"], [data_dir / "secret.key"])


@pytest.fixture
def base_at_home(tiny_base, tiny_model_dir, data_dir) -> str:
    """The tiny base model in the API's data dir (as a download keeps it), which the node
    lacks: it travels through the store."""
    home = data_dir / "models" / "base" / tiny_base
    shutil.copytree(tiny_model_dir, home)
    with session_scope() as session:
        session.get_one(BaseModel, tiny_base).path = str(home)
    return tiny_base


def ran_on_the_node(job_id: str) -> None:
    with session_scope() as session:
        job = session.get_one(Job, job_id)
        assert job.status == "succeeded", job.error
        assert job.node is not None


@pytest.mark.slow
class TestUploadedCodeOnANode:
    def test_grpo_with_a_reward_file(
        self, code_uploads, client, auth, base_at_home, store_worker, data_dir, node_dir
    ):
        uploaded = client.post(
            "/api/v1/reward-files",
            data={"name": "mod3"},
            files={"file": ("mod3.py", REWARD, "text/x-python")},
            headers=auth,
        )
        assert uploaded.status_code == 201, uploaded.text
        dataset = upload(client, auth, "prompts", PROMPTS)
        watch = ReadyRowsWatch(data_dir)
        watch.start()
        params = {
            **FAST,
            "max_steps": 1,
            "num_generations": 2,
            "max_completion_length": 8,
            "rewards": ["file:mod3"],
        }
        response = start(client, auth, base_at_home, dataset, "grpo", **params)
        training = finish(client, auth, response)
        watch.stop()
        model_id = training["customized_model_id"]
        # The row said ready only once the model was in the API's data dir.
        assert f"models/customized/{model_id}" in watch.seen and watch.too_early == []
        model = client.get(f"/api/v1/customized-models/{model_id}", headers=auth).json()
        assert Path(model["path"]) == data_dir / "models" / "customized" / model_id
        assert (Path(model["path"]) / "adapter_model.safetensors").is_file()
        series = client.get(f"/api/v1/trainings/{training['id']}/metrics", headers=auth).json()
        assert "rewards/file_mod3/mean" in series["series"]["train"]
        # The reward file ran on the node, from the copy the store brought there.
        [copy] = (node_dir / "rewards").rglob("mod3.py")
        assert copy.read_bytes() == REWARD
        ran_on_the_node(response.json()["job_id"])
        shows_no_secret(client, auth, response.json()["job_id"])

    def test_a_custom_training_method(
        self, code_uploads, client, auth, base_at_home, store_worker, data_dir, node_dir
    ):
        added = client.post(
            "/api/v1/training-methods",
            data={"name": "lora-loop"},
            files={"file": ("lora-loop.py", LORA_SCRIPT.encode(), "text/x-python")},
            headers=auth,
        )
        assert added.status_code == 201, added.text
        dataset = upload(client, auth, "codes", CHAT)
        watch = ReadyRowsWatch(data_dir)
        watch.start()
        response = start(
            client, auth, base_at_home, dataset, "lora-loop", max_steps=4, learning_rate=1e-2
        )
        training = finish(client, auth, response)
        watch.stop()
        model_id = training["customized_model_id"]
        assert f"models/customized/{model_id}" in watch.seen and watch.too_early == []
        model = client.get(f"/api/v1/customized-models/{model_id}", headers=auth).json()
        assert Path(model["path"]) == data_dir / "models" / "customized" / model_id
        assert lora_b_norm(Path(model["path"])) > 0  # it trained
        series = client.get(f"/api/v1/trainings/{training['id']}/metrics", headers=auth).json()
        assert len(series["series"]["train"]["loss"]) == 4
        # The script ran on the node, from the copy the store brought there.
        [copy] = (node_dir / "methods").rglob("*.py")
        assert copy.read_text() == LORA_SCRIPT
        job_id = response.json()["job_id"]
        ran_on_the_node(job_id)
        logs = client.get(f"/api/v1/jobs/{job_id}/logs", headers=auth).text
        assert "greeting: hello" in logs
        shows_no_secret(client, auth, job_id)
