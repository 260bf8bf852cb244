"""The artifact store: how a job's files travel between the API's data dir and the nodes of a
Ray cluster that share no disk with it (TUNEYARD_ARTIFACT_STORE, any fsspec URL).

The API's data dir stays the source of truth; the store only carries copies. An artifact is a
folder (or one file) of a data dir, keyed by its path relative to the data dir
(`datasets/<id>`, `models/customized/<id>`). Each publish of a folder writes its files under a
version of their own (`<key>/<version>/...`, the version a digest of the file list), and then,
LAST, the manifest `<key>.manifest.json` naming that version with each file's size and sha256:
a reader that goes by the manifest never sees half an artifact, nor a mix of two. A fetch
downloads into a temp folder beside the target, checks each file against the manifest, then
swaps it in; it is skipped when the folder already holds the manifest's version.

A few artifacts are one file: the uploaded code a job runs (a training method's script, GRPO
reward files; FILE_ROOTS), which its kind names (JobKind.files), and the images, adapters and
source images of DeepImage. They travel the same way, the file under its version
(`<key>/<version>`), then its manifest (`publish_single`, `fetch_single`; `publish` and `fetch`
hand a file to them). Uploaded code leaves the store once the API's data dir no longer has it.

Outside the rows' folders and uploaded code, a job reads what its kind `reads` (an image model
in the data dir's import folder, a training set, adapters, source images) and lands what it
makes (images, adapters): those artifacts are found by their manifests wherever they lie, and
leave the store once no queued or running job reads them.

Nothing stays in the store for ever: the worker withdraws an artifact whose row was deleted
(its manifest first, so no reader starts on it), and a node drops its copy of an artifact the
store no longer has (see `published`, `withdraw`, `drop_withdrawn`).
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec
from fsspec.registry import known_implementations

from tuneyard.config import Settings
from tuneyard.errors import Unavailable
from tuneyard.jobs.keys import Resource
from tuneyard.storage import _fsync_dir, atomic_path, remove_tree

log = logging.getLogger(__name__)

MANIFEST_SUFFIX = ".manifest.json"
# Under a data dir: the manifest of each artifact fetched into it, by key.
FETCHED_DIR = ".artifacts"
CHUNK = 1 << 20

# The data dir folder of each resource a job may use, by the resource's id. A job that uses a
# resource missing here cannot run on a node without the API's data dir.
RESOURCE_FOLDERS: dict[Resource, str] = {
    Resource.DATASET: "datasets",
    Resource.BASE_MODEL: "models/base",
    Resource.TRAINING: "trainings",
    Resource.CUSTOMIZED_MODEL: "models/customized",
    Resource.COMPLETE_MODEL: "models/complete",
}
# Resources whose folder holds its artifacts one level down, in these parts: each document and
# each index version of a knowledge base is an artifact of its own
# (`knowledge/<id>/documents/<document id>`), so that a document uploaded to the API while a
# job on a node embeds another is not replaced by that job's copy of the knowledge base.
NESTED_FOLDERS: dict[Resource, tuple[str, tuple[str, ...]]] = {
    Resource.KNOWLEDGE_BASE: ("knowledge", ("documents", "indexes")),
}
# Resources without files of their own: their rows are all there is (an assessment, a live or
# third-party model: endpoints), or their files are carried with another resource the same job
# uses (a knowledge document's, with its knowledge base's).
WITHOUT_FOLDER = frozenset(
    {
        Resource.ASSESSMENT,
        Resource.LIVE_MODEL,
        Resource.THIRD_PARTY_MODEL,
        Resource.KNOWLEDGE_DOCUMENT,
    }
)
# The folders (glob patterns under a data dir) whose entries are artifacts a job on a node may
# make or change.
ARTIFACT_ROOTS = (
    *RESOURCE_FOLDERS.values(),
    *(f"{folder}/*/{part}" for folder, parts in NESTED_FOLDERS.values() for part in parts),
)


class ArtifactError(Exception):
    """An artifact could not be published or fetched; the message says which and why."""


# The folders (glob patterns, one per project) of the single-file artifacts: uploaded training
# method scripts (methods/<project>/<script id>.py) and GRPO reward files
# (rewards/<project>/<name>.py). Jobs only read them.
FILE_ROOTS = ("methods/*", "rewards/*")
# Where a data dir keeps its jobs' logs, which travel as plain files.
LOGS = "jobs"
# The resources whose artifact is one such file: a job that uses one runs on a node when its
# kind names the file among those it reads (JobKind.files).
RESOURCE_FILES = frozenset({Resource.TRAINING_METHOD})


def key_of(use: str) -> str | None:
    """The artifact key of a job's `uses` entry (`dataset:<id>` -> `datasets/<id>`); None for a
    resource that has no folder of its own."""
    resource, _, resource_id = use.partition(":")
    try:
        folder = RESOURCE_FOLDERS[Resource(resource)]
    except (KeyError, ValueError):
        return None
    return f"{folder}/{resource_id}"


def _resource(use: str) -> Resource | None:
    try:
        return Resource(use.partition(":")[0])
    except ValueError:
        return None


def carried(use: str) -> bool:
    """Whether the store carries what a job's `uses` entry needs of a data dir (its folder, its
    artifacts, or nothing: a resource without files)."""
    resource = _resource(use)
    return resource is not None and (
        resource in RESOURCE_FOLDERS or resource in NESTED_FOLDERS or resource in WITHOUT_FOLDER
    )


def is_file_resource(use: str) -> bool:
    """Whether a job's `uses` entry is a resource whose artifact is one file (RESOURCE_FILES)."""
    return _resource(use) in RESOURCE_FILES


def is_file_key(key: str) -> bool:
    """Whether `key` names a single-file artifact (an entry of one of FILE_ROOTS)."""
    parent = key.rpartition("/")[0]
    return any(fnmatch.fnmatchcase(parent, root) for root in FILE_ROOTS)


def file_key(data_dir: Path, path: Path) -> str:
    """The key of the single-file artifact at `path` of `data_dir`; ArtifactError for a file
    that is no such artifact (outside FILE_ROOTS, or not under the data dir)."""
    if path.is_relative_to(data_dir):
        key = path.relative_to(data_dir).as_posix()
        if is_file_key(key) and ".." not in key.split("/"):
            return key
    raise ArtifactError(
        f"{path} is not uploaded code of the data dir {data_dir} (methods, rewards): an "
        "artifact store does not carry it."
    )


def keys_in(data_dir: Path, use: str) -> list[str]:
    """The artifact keys of a job's `uses` entry that `data_dir` holds: its folder, or the
    artifacts nested in it; none for a resource without files."""
    resource = _resource(use)
    resource_id = use.partition(":")[2]
    if resource in NESTED_FOLDERS:
        folder, parts = NESTED_FOLDERS[resource]
        return [
            entry.relative_to(data_dir).as_posix()
            for part in parts
            for entry in sorted((data_dir / folder / resource_id / part).glob("*"))
            if entry.is_dir() and not entry.name.startswith(".")
        ]
    key = key_of(use)
    return [key] if key is not None and (data_dir / key).is_dir() else []


@dataclass
class Store:
    """An open artifact store: a file system and the root path in it."""

    fs: Any
    root: str

    def path(self, key: str) -> str:
        return f"{self.root}/{key}"

    def put(self, local: Path, remote: str) -> None:
        self.fs.put_file(str(local), remote)

    def write(self, remote: str, data: bytes) -> None:
        self.fs.pipe_file(remote, data)

    def manifest(self, key: str) -> dict | None:
        """The published manifest of `key`, or None when it was never published."""
        try:
            return json.loads(self.fs.cat_file(self.path(key) + MANIFEST_SUFFIX))
        except FileNotFoundError:
            return None


def open_store(url: str, options: dict) -> Store:
    """Open the store at `url`, checking that it can be reached and written; the errors say
    what to fix (and never show the options: they hold credentials)."""
    protocol = url.split("://", 1)[0]
    try:
        fsspec.get_filesystem_class(protocol)
    except ImportError:
        package = known_implementations.get(protocol, {}).get("err", "")
        raise Unavailable(
            f"TUNEYARD_ARTIFACT_STORE '{url}' needs fsspec's {protocol}:// backend, which is not "
            f"installed ({package}). Install the `cluster` extra (pip install "
            "'tuneyard[cluster]', which brings s3fs) or the package that provides it."
        ) from None
    except ValueError:
        raise Unavailable(
            f"TUNEYARD_ARTIFACT_STORE '{url}': fsspec knows no '{protocol}://' file system. Give "
            "an s3:// (or another fsspec) URL, or file:///path for a mounted folder."
        ) from None
    if protocol in ("file", "local"):
        options = {"auto_mkdir": True, **options}  # folders, as object stores need none
    try:
        fs, root = fsspec.core.url_to_fs(url, **options)
    except (TypeError, ValueError) as exc:
        raise Unavailable(
            f"TUNEYARD_ARTIFACT_STORE_OPTIONS do not suit {protocol}:// ({type(exc).__name__}); "
            "check the option names against the fsspec backend's."
        ) from None
    store = Store(fs, root.rstrip("/"))
    probe = store.path(f".probe-{uuid.uuid4().hex[:8]}")
    try:
        store.write(probe, b"ok")
        fs.rm_file(probe)
    except Exception as exc:
        raise Unavailable(
            f"Cannot write to the artifact store {url}: {type(exc).__name__}: "
            f"{str(exc)[:300]}. Check that it is reachable from here, that the bucket exists, "
            "and TUNEYARD_ARTIFACT_STORE_OPTIONS (endpoint_url, credentials)."
        ) from None
    return store


def store_of(settings: Settings) -> Store | None:
    """The configured artifact store, opened; None when nodes share the data dir."""
    if not settings.artifact_store:
        return None
    return open_store(settings.artifact_store, settings.store_options)


# -- publishing ------------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def describe(folder: Path, known: dict[str, list] | None = None) -> dict[str, dict[str, Any]]:
    """Each file of `folder` (by its relative path, links followed) with its size and sha256.
    `known` maps a relative path to [size, mtime_ns, sha256] read earlier: a file whose size
    and modification time are the same is not read again (a model's gigabytes, at each job)."""
    known = known or {}
    files = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            name = path.relative_to(folder).as_posix()
            info = path.stat()
            seen = known.get(name)
            if seen is not None and seen[:2] == [info.st_size, info.st_mtime_ns]:
                digest = seen[2]
            else:
                digest = _sha256(path)
            files[name] = {"size": info.st_size, "sha256": digest, "mtime_ns": info.st_mtime_ns}
    return files


def _digests_file(data_dir: Path, key: str) -> Path:
    return data_dir / FETCHED_DIR / f"{key}.digests.json"


def _known_digests(data_dir: Path, key: str) -> dict[str, list]:
    try:
        return json.loads(_digests_file(data_dir, key).read_text())
    except (OSError, ValueError):
        return {}


def _version(files: dict) -> str:
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:16]


def publish(store: Store, data_dir: Path, key: str) -> bool:
    """Publish the folder `data_dir/key`: its files, then its manifest (one file: see
    `publish_single`). False (nothing sent) when the store already holds the same files."""
    folder = data_dir / key
    if folder.is_file():
        sent = publish_single(store, data_dir, key)
        manifest = store.manifest(key) or {}
        record = _fetched_record(data_dir, key)  # so a node drops it once withdrawn
        record.parent.mkdir(parents=True, exist_ok=True)
        record.write_text(json.dumps({"version": manifest.get("version")}))
        return sent
    if not folder.is_dir():
        raise ArtifactError(f"Cannot publish {key}: {folder} is not a folder.")
    described = describe(folder, _known_digests(data_dir, key))
    remembered = _digests_file(data_dir, key)
    remembered.parent.mkdir(parents=True, exist_ok=True)
    remembered.write_text(
        json.dumps({n: [f["size"], f["mtime_ns"], f["sha256"]] for n, f in described.items()})
    )
    files = {name: {"size": f["size"], "sha256": f["sha256"]} for name, f in described.items()}
    previous = store.manifest(key)
    if previous is not None and previous["files"] == files:
        return False
    version = _version(files)
    base = f"{store.path(key)}/{version}"
    for name in files:
        store.put(folder / name, f"{base}/{name}")
    manifest = {"key": key, "version": version, "files": files, "published_at": time.time()}
    store.write(store.path(key) + MANIFEST_SUFFIX, json.dumps(manifest).encode())
    _drop_old_versions(store, key, version, previous)
    log.info("published %s (%d files, version %s)", key, len(files), version)
    return True


def _drop_old_versions(store: Store, key: str, version: str, previous: dict | None) -> None:
    """Remove the versions of `key` older than the one `version` just replaced: a reader of
    that one may still finish."""
    kept = {version, previous["version"] if previous else None}
    try:
        for entry in store.fs.ls(store.path(key), detail=False):
            if entry.rstrip("/").rsplit("/", 1)[-1] not in kept:
                store.fs.rm(entry, recursive=True)
    except FileNotFoundError:
        pass


def publish_single(store: Store, data_dir: Path, key: str) -> bool:
    """Publish the one file `data_dir/key` (uploaded code, see FILE_ROOTS): the file under a
    version of its own, then its manifest with its size and sha256. False (nothing sent) when
    the store already holds the same file."""
    path = data_dir / key
    if not path.is_file():
        raise ArtifactError(f"Cannot publish {key}: {path} is not a file.")
    digest = _sha256(path)
    entry: dict[str, Any] = {"size": path.stat().st_size, "sha256": digest}
    previous = store.manifest(key)
    if previous is not None and previous.get("file") == entry:
        return False
    version = digest[:16]
    store.put(path, f"{store.path(key)}/{version}")
    manifest = {"key": key, "version": version, "file": entry, "published_at": time.time()}
    store.write(store.path(key) + MANIFEST_SUFFIX, json.dumps(manifest).encode())
    _drop_old_versions(store, key, version, previous)
    log.info("published %s (version %s)", key, version)
    return True


def publish_file(store: Store, data_dir: Path, key: str) -> None:
    """Publish one file (a job's log) as it is now: one object, replaced whole."""
    store.put(data_dir / key, store.path(key))


# -- fetching --------------------------------------------------------------------------------


def _fetched_record(data_dir: Path, key: str) -> Path:
    return data_dir / FETCHED_DIR / f"{key}{MANIFEST_SUFFIX}"


def fetched_version(data_dir: Path, key: str) -> str | None:
    """The version of `key` last fetched into `data_dir`, if its folder is still there."""
    record = _fetched_record(data_dir, key)
    if not record.is_file() or not (data_dir / key).is_dir():
        return None
    return json.loads(record.read_text())["version"]


def fetch(store: Store, data_dir: Path, key: str) -> bool:
    """Make `data_dir/key` the store's version of `key`, swapped in whole once every file
    arrived and matched the manifest. False when it already was."""
    manifest = store.manifest(key)
    if manifest is None:
        raise ArtifactError(f"The artifact store has no {key}: it was never published.")
    if "file" in manifest:
        return fetch_single(store, data_dir, key)
    if fetched_version(data_dir, key) == manifest["version"]:
        return False
    target = data_dir / key
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{target.name}.fetching-{uuid.uuid4().hex[:8]}"
    base = f"{store.path(key)}/{manifest['version']}"
    try:
        staging.mkdir()
        for name, expected in manifest["files"].items():
            local = staging / name
            local.parent.mkdir(parents=True, exist_ok=True)
            store.fs.get_file(f"{base}/{name}", str(local))
            if local.stat().st_size != expected["size"] or _sha256(local) != expected["sha256"]:
                raise ArtifactError(
                    f"{key}/{name} from the artifact store does not match its manifest (it was "
                    "replaced while being read); fetch it again."
                )
        remove_tree(target)
        os.replace(staging, target)
        _fsync_dir(target.parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    record = _fetched_record(data_dir, key)
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps({"version": manifest["version"]}))
    log.info("fetched %s (version %s)", key, manifest["version"])
    return True


def fetch_single(store: Store, data_dir: Path, key: str) -> bool:
    """Make `data_dir/key` the store's version of that one file (see `publish_single`),
    replaced through a temp file beside it once it matched the manifest. False when it
    already was (its sha256 is the manifest's: these files are small)."""
    manifest = store.manifest(key)
    if manifest is None:
        raise ArtifactError(f"The artifact store has no {key}: it was never published.")
    expected = manifest["file"]
    target = data_dir / key
    fresh = not target.is_file() or _sha256(target) != expected["sha256"]
    if fresh:
        with atomic_path(target) as staging:
            store.fs.get_file(f"{store.path(key)}/{manifest['version']}", str(staging))
            if staging.stat().st_size != expected["size"] or _sha256(staging) != expected["sha256"]:
                raise ArtifactError(
                    f"{key} from the artifact store does not match its manifest (it was replaced "
                    "while being read); fetch it again."
                )
        log.info("fetched %s (version %s)", key, manifest["version"])
    record = _fetched_record(data_dir, key)  # so the node drops it once withdrawn
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps({"version": manifest["version"]}))
    return fresh


def fetch_file(store: Store, data_dir: Path, key: str) -> bool:
    """Replace `data_dir/key` with the store's copy of that one file (through a temp file
    beside it); False when the store has none."""
    try:
        with atomic_path(data_dir / key) as staging:
            store.fs.get_file(store.path(key), str(staging))
    except FileNotFoundError:
        return False
    return True


# -- what a job changed on a node ------------------------------------------------------------


def snapshot(data_dir: Path) -> dict[str, dict[str, tuple[int, int]]]:
    """Each artifact folder under `data_dir` with its files' sizes and modification times: a
    cheap picture to find, after a job, what it made or changed."""
    found = {}
    for root in ARTIFACT_ROOTS:
        for parent in data_dir.glob(root):
            if not parent.is_dir():
                continue
            for folder in parent.iterdir():
                if folder.name.startswith(".") or not folder.is_dir():
                    continue  # staging and deleted-aside folders are never artifacts
                stats = {}
                for path in folder.rglob("*"):
                    if path.is_file():
                        info = path.stat()
                        name = path.relative_to(folder).as_posix()
                        stats[name] = (info.st_size, info.st_mtime_ns)
                found[folder.relative_to(data_dir).as_posix()] = stats
    return found


def changed_since(data_dir: Path, before: dict[str, dict[str, tuple[int, int]]]) -> list[str]:
    """The artifact folders made or changed since `before` (a `snapshot`)."""
    return sorted(key for key, stats in snapshot(data_dir).items() if before.get(key) != stats)


# -- what the store no longer needs ------------------------------------------------------------


def published(store: Store) -> set[str]:
    """The keys of every artifact the store holds a manifest for: folders and single files."""
    store.fs.invalidate_cache()  # s3fs keeps listings: ask the store
    keys = set()
    # A knowledge base's are nested (`knowledge/*/documents`), uploaded code per project.
    for root in (*ARTIFACT_ROOTS, *FILE_ROOTS):
        for entry in store.fs.glob(f"{store.path(root)}/*{MANIFEST_SUFFIX}"):
            path = entry.rstrip("/")
            if path.startswith(f"{store.root}/"):
                keys.add(path[len(store.root) + 1 :].removesuffix(MANIFEST_SUFFIX))
    # What jobs read or landed elsewhere (images, an import folder), at any depth.
    tops = {root.split("/", 1)[0] for root in (*ARTIFACT_ROOTS, *FILE_ROOTS)} | {LOGS}
    try:
        entries = store.fs.ls(store.root, detail=False)
    except FileNotFoundError:
        entries = []
    for entry in entries:
        top = entry.rstrip("/").rsplit("/", 1)[-1]
        if top in tops or top.startswith("."):
            continue
        found = {
            path.removeprefix(f"{store.root}/").removesuffix(MANIFEST_SUFFIX)
            for path in store.fs.find(store.path(top))
            if path.endswith(MANIFEST_SUFFIX)
        }
        # A file of an artifact that happens to be named like a manifest is no artifact.
        keys |= {key for key in found if not any(key.startswith(f"{k}/") for k in found)}
    return keys


def published_at(store: Store, key: str) -> float:
    """When `key` was last published (0 for a manifest that does not say, or none)."""
    manifest = store.manifest(key)
    return float((manifest or {}).get("published_at", 0.0))


def withdraw(store: Store, key: str) -> None:
    """Remove `key` from the store: its manifest first (a reader then sees no artifact, never
    a half-removed one), then its files."""
    with contextlib.suppress(FileNotFoundError):
        store.fs.rm(store.path(key) + MANIFEST_SUFFIX)
    with contextlib.suppress(FileNotFoundError):
        store.fs.rm(store.path(key), recursive=True)
    log.info("withdrew %s from the artifact store", key)


def drop_withdrawn(store: Store, data_dir: Path) -> list[str]:
    """On a node: remove the copies of artifacts that came from or went to the store (a fetch
    or a publish recorded them) and that the store no longer has. A folder a running job is
    making has no such record, so it stays. Returns the keys dropped."""
    records = data_dir / FETCHED_DIR
    if not records.is_dir():
        return []
    known = set()
    for record in records.rglob("*.json"):
        name = record.relative_to(records).as_posix()
        for suffix in (MANIFEST_SUFFIX, ".digests.json"):
            if name.endswith(suffix):
                known.add(name.removesuffix(suffix))
    gone = sorted(known - published(store))
    for key in gone:
        remove_copy(data_dir, key)
        log.info("dropped %s from this node: the artifact store no longer has it", key)
    return gone


def remove_copy(data_dir: Path, key: str) -> None:
    """Remove the folder or file `data_dir/key` and what this data dir recorded of it."""
    target = data_dir / key
    if target.is_dir():
        remove_tree(target)
    else:
        target.unlink(missing_ok=True)
    _fetched_record(data_dir, key).unlink(missing_ok=True)
    _digests_file(data_dir, key).unlink(missing_ok=True)
