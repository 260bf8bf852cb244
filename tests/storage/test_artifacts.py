"""Publishing and fetching artifacts through a store (a file:// one here): the manifest goes
last, a fetch swaps the folder in whole, and what is unchanged is not sent again."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tuneyard import artifacts
from tuneyard.config import Settings
from tuneyard.errors import Unavailable

pytestmark = pytest.mark.nodb

KEY = "datasets/d1"


@pytest.fixture
def store(tmp_path) -> artifacts.Store:
    return artifacts.open_store(f"file://{tmp_path / 'store'}", {})


@pytest.fixture
def source(tmp_path) -> Path:
    """A data dir with one dataset folder of two files, one in a subfolder."""
    root = tmp_path / "api"
    folder = root / KEY
    (folder / "parts").mkdir(parents=True)
    (folder / "records.jsonl").write_text('{"text": "a"}\n')
    (folder / "parts" / "original.csv").write_text("text\na\n")
    return root


def test_a_folder_travels_whole_and_unchanged_is_not_sent_again(store, source, tmp_path):
    node = tmp_path / "node"
    assert artifacts.publish(store, source, KEY)
    assert not artifacts.publish(store, source, KEY)  # the same files: nothing sent
    assert artifacts.fetch(store, node, KEY)
    assert (node / KEY / "records.jsonl").read_text() == '{"text": "a"}\n'
    assert (node / KEY / "parts" / "original.csv").read_text() == "text\na\n"
    assert not artifacts.fetch(store, node, KEY)  # already the store's version
    # A change is published as a new version, and a fetch replaces the whole folder.
    (source / KEY / "records.jsonl").write_text('{"text": "b"}\n')
    (source / KEY / "parts" / "original.csv").unlink()
    assert artifacts.publish(store, source, KEY)
    assert artifacts.fetch(store, node, KEY)
    # Files travel, not empty folders: the emptied subfolder is gone.
    assert [p.name for p in (node / KEY).rglob("*")] == ["records.jsonl"]
    assert (node / KEY / "records.jsonl").read_text() == '{"text": "b"}\n'
    # Nothing staged is left beside it, and the bookkeeping stays out of the folder.
    assert [p.name for p in (node / "datasets").iterdir()] == ["d1"]


def test_the_manifest_is_written_last(store, source, monkeypatch):
    written: list[str] = []
    put_file, pipe_file = store.fs.put_file, store.fs.pipe_file
    monkeypatch.setattr(store.fs, "put_file", lambda a, b: (written.append(b), put_file(a, b)))
    monkeypatch.setattr(store.fs, "pipe_file", lambda a, b: (written.append(a), pipe_file(a, b)))
    artifacts.publish(store, source, KEY)
    assert written[-1] == store.path(KEY) + artifacts.MANIFEST_SUFFIX
    assert len(written) == 3  # two files, then the manifest
    manifest = json.loads(store.fs.cat_file(written[-1]))
    assert sorted(manifest["files"]) == ["parts/original.csv", "records.jsonl"]
    assert manifest["files"]["records.jsonl"]["size"] == len('{"text": "a"}\n')


def test_a_publish_that_stops_before_its_manifest_is_not_seen(store, source, tmp_path):
    """Files sent without their manifest (a publisher that died) are no artifact: a fetch
    answers that it was never published, and an earlier version stays the one fetched."""
    node = tmp_path / "node"
    store.put(source / KEY / "records.jsonl", store.path(f"{KEY}/v0/records.jsonl"))
    with pytest.raises(artifacts.ArtifactError, match="never published"):
        artifacts.fetch(store, node, KEY)
    assert not (node / KEY).exists()
    artifacts.publish(store, source, KEY)
    artifacts.fetch(store, node, KEY)
    (source / KEY / "records.jsonl").write_text("changed\n")
    store.put(source / KEY / "records.jsonl", store.path(f"{KEY}/v1/records.jsonl"))
    assert not artifacts.fetch(store, node, KEY)
    assert (node / KEY / "records.jsonl").read_text() == '{"text": "a"}\n'


def test_a_fetch_that_fails_leaves_the_old_folder_and_no_staging(store, source, tmp_path):
    node = tmp_path / "node"
    artifacts.publish(store, source, KEY)
    artifacts.fetch(store, node, KEY)
    (source / KEY / "records.jsonl").write_text('{"text": "b"}\n')
    artifacts.publish(store, source, KEY)
    # A file replaced in the store under its manifest: the fetch refuses it.
    manifest = store.manifest(KEY)
    assert manifest is not None
    store.fs.pipe_file(f"{store.path(KEY)}/{manifest['version']}/records.jsonl", b"tampered!!\n")
    with pytest.raises(artifacts.ArtifactError, match="does not match its manifest"):
        artifacts.fetch(store, node, KEY)
    assert (node / KEY / "records.jsonl").read_text() == '{"text": "a"}\n'
    assert [p.name for p in (node / "datasets").iterdir()] == ["d1"]


def test_a_file_travels_and_a_missing_one_is_said(store, source, tmp_path):
    log = source / "jobs" / "j1" / "log.txt"
    log.parent.mkdir(parents=True)
    log.write_text("line 1\n")
    node = tmp_path / "node"
    assert not artifacts.fetch_file(store, node, "jobs/j1/log.txt")
    artifacts.publish_file(store, source, "jobs/j1/log.txt")
    assert artifacts.fetch_file(store, node, "jobs/j1/log.txt")
    assert (node / "jobs" / "j1" / "log.txt").read_text() == "line 1\n"


def test_what_a_job_made_or_changed_is_found(source):
    (source / "models" / "base" / "b1").mkdir(parents=True)
    (source / "models" / "base" / "b1" / "config.json").write_text("{}")
    before = artifacts.snapshot(source)
    assert artifacts.changed_since(source, before) == []
    (source / KEY / "records.jsonl").write_text("more\n")
    made = source / "models" / "customized" / "m1"
    made.mkdir(parents=True)
    (made / "adapter_config.json").write_text("{}")
    (source / "models" / "customized" / ".m2.partial").mkdir()  # staging is no artifact
    assert artifacts.changed_since(source, before) == [KEY, "models/customized/m1"]


def test_keys_of_what_jobs_use():
    assert artifacts.key_of("dataset:d1") == "datasets/d1"
    assert artifacts.key_of("base_model:b1") == "models/base/b1"
    assert artifacts.key_of("customized_model:m1") == "models/customized/m1"
    assert artifacts.key_of("deploy_environment:e1") is None


def test_a_knowledge_base_travels_as_its_documents_and_index_versions(source):
    """Each document and index version is an artifact of its own: a job on a node changes the
    ones it embeds, and a document uploaded to the API meanwhile is not replaced."""
    kb = source / "knowledge" / "k1"
    for folder in ("documents/d1", "documents/d2", "indexes/v1"):
        (kb / folder).mkdir(parents=True)
        (kb / folder / "file").write_text(folder)
    (kb / "documents" / ".d3.fetching-1234").mkdir()  # staging is no artifact
    assert artifacts.keys_in(source, "knowledge_base:k1") == [
        "knowledge/k1/documents/d1",
        "knowledge/k1/documents/d2",
        "knowledge/k1/indexes/v1",
    ]
    assert artifacts.keys_in(source, "knowledge_base:k2") == []
    assert artifacts.keys_in(source, "dataset:d1") == [KEY]
    assert artifacts.keys_in(source, "dataset:none") == []
    before = artifacts.snapshot(source)
    (kb / "documents" / "d1" / "text.txt").write_text("read")
    (kb / "indexes" / "v2").mkdir()
    (kb / "indexes" / "v2" / "file").write_text("v2")
    assert artifacts.changed_since(source, before) == [
        "knowledge/k1/documents/d1",
        "knowledge/k1/indexes/v2",
    ]
    # Rows alone, or files carried with another resource the job uses: nothing to carry.
    for use in ("assessment:a1", "third_party_model:t1", "live_model:l1", "knowledge_document:d1"):
        assert artifacts.carried(use) and artifacts.keys_in(source, use) == []
    assert not artifacts.carried("deploy_environment:e1")
    assert not artifacts.carried("image_model:i1")


def test_store_settings_are_checked(monkeypatch, tmp_path):
    with pytest.raises(ValueError, match="is not a URL"):
        Settings(artifact_store="bucket/prefix")
    with pytest.raises(ValueError, match="must be a JSON object"):
        Settings(artifact_store="s3://b", artifact_store_options="[1]")  # type: ignore[arg-type]
    settings = Settings(artifact_store="s3://b/p/", artifact_store_options='{"secret": "hush"}')  # type: ignore[arg-type]
    assert settings.artifact_store == "s3://b/p"
    assert settings.store_options == {"secret": "hush"}
    assert "hush" not in repr(settings) and "hush" not in str(settings.model_dump())
    assert settings.node_data_path.name.startswith("tuneyard-node-")
    assert Settings(artifact_store="s3://b/q").node_data_path != settings.node_data_path
    with pytest.raises(Unavailable, match="knows no 'nosuch://' file system"):
        artifacts.open_store("nosuch://x", {})
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    with pytest.raises(Unavailable, match="Cannot write to the artifact store"):
        artifacts.open_store(f"file://{blocked}/store", {})


def test_a_missing_backend_names_its_package(monkeypatch):
    import fsspec

    def missing(protocol):
        raise ImportError("Install s3fs to access S3")

    monkeypatch.setattr(fsspec, "get_filesystem_class", missing)
    with pytest.raises(Unavailable, match=r"s3:// backend.*s3fs"):
        artifacts.open_store("s3://bucket/prefix", {})


def test_an_unchanged_file_is_not_read_again(store, source, monkeypatch):
    """A model's gigabytes are hashed once, not at each job that uses it; a file rewritten
    since is hashed again."""
    artifacts.publish(store, source, KEY)
    read: list[str] = []
    sha256 = artifacts._sha256
    monkeypatch.setattr(
        artifacts, "_sha256", lambda path: (read.append(path.name), sha256(path))[1]
    )
    assert not artifacts.publish(store, source, KEY)
    assert read == []
    (source / KEY / "records.jsonl").write_text('{"text": "z"}\n')
    assert artifacts.publish(store, source, KEY)
    assert read == ["records.jsonl"]


def test_withdrawn_artifacts_leave_the_store_and_then_the_nodes(store, source, tmp_path):
    other = "datasets/d2"
    (source / other).mkdir(parents=True)
    (source / other / "records.jsonl").write_text('{"text": "c"}\n')
    artifacts.publish(store, source, KEY)
    artifacts.publish(store, source, other)
    node = tmp_path / "node"
    artifacts.fetch(store, node, KEY)
    artifacts.fetch(store, node, other)
    making = node / "models" / "customized" / "m-new"  # a job on the node is writing it
    making.mkdir(parents=True)
    (making / "adapter_config.json").write_text("{}")
    assert artifacts.published(store) == {KEY, other}

    artifacts.withdraw(store, KEY)
    assert artifacts.published(store) == {other}
    assert not store.fs.exists(store.path(KEY))  # its files went with its manifest
    with pytest.raises(artifacts.ArtifactError, match="never published"):
        artifacts.fetch(store, tmp_path / "elsewhere", KEY)

    assert artifacts.drop_withdrawn(store, node) == [KEY]
    assert not (node / KEY).exists()
    assert (node / other / "records.jsonl").is_file()
    assert (making / "adapter_config.json").is_file()
    assert artifacts.drop_withdrawn(store, node) == []
    # Fetched again later, it comes whole again.
    artifacts.publish(store, source, KEY)
    assert artifacts.fetch(store, node, KEY)
    assert (node / KEY / "records.jsonl").read_text() == '{"text": "a"}\n'
