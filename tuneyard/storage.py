"""The data dir layout and atomic writes: a file or folder appears complete or not at all,
and goes only once the deletion of its row has committed."""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import column, event, exists, inspect, select, table
from sqlalchemy.orm import Session

from tuneyard.config import Settings, get_settings

log = logging.getLogger(__name__)

# Under a data dir: the key that encrypts stored API keys.
SECRET_KEY_FILE = "secret.key"


class Layout:
    """Where each kind of thing lives under the data dir."""

    def __init__(self, settings: Settings | None = None):
        settings = settings or get_settings()
        self.root = settings.data_dir
        # On a cluster node with an artifact store, the API's data dir: the database's paths.
        self.home = settings.api_data_dir or settings.data_dir

    def recorded(self, path: Path) -> str:
        """A path of this data dir as the database keeps it: the API's data dir's, so that a
        job that ran on a cluster node records where its files land."""
        if path.is_relative_to(self.root):
            return str(self.home / path.relative_to(self.root))
        return str(path)

    def local(self, recorded: str) -> Path:
        """Where a path the database keeps is found here (see `recorded`)."""
        path = Path(recorded)
        if path.is_relative_to(self.home):
            return self.root / path.relative_to(self.home)
        return path

    def ensure_root(self) -> Path:
        """The data dir, created readable by its owner only (it holds keys and passwords)."""
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        return self.root

    def job_dir(self, job_id: str) -> Path:
        return self.root / "jobs" / job_id

    def job_log(self, job_id: str) -> Path:
        return self.job_dir(job_id) / "log.txt"

    def dataset_dir(self, dataset_id: str) -> Path:
        return self.root / "datasets" / dataset_id

    def base_model_dir(self, model_id: str) -> Path:
        return self.root / "models" / "base" / model_id

    def training_dir(self, training_id: str) -> Path:
        """A training's working folder: checkpoints and the trainer's own output."""
        return self.root / "trainings" / training_id

    def customized_model_dir(self, model_id: str) -> Path:
        return self.root / "models" / "customized" / model_id

    def complete_model_dir(self, model_id: str) -> Path:
        return self.root / "models" / "complete" / model_id

    def reward_dir(self, project_id: str) -> Path:
        """A project's uploaded GRPO reward files."""
        return self.root / "rewards" / project_id

    def reward_file(self, project_id: str, name: str) -> Path:
        return entry_path(self.reward_dir(project_id), f"{name}.py")

    def method_script(self, project_id: str, script_id: str) -> Path:
        """An uploaded training method's Python file, by its row's id (names can be reused)."""
        return self.root / "methods" / project_id / f"{script_id}.py"

    def live_model_dir(self, model_id: str) -> Path:
        """Files a deploy made for a serving tool that reads from disk (GGUF for llama.cpp)."""
        return self.root / "models" / "live" / model_id

    def environment_dir(self, environment_id: str) -> Path:
        """State of a serving tool Tuneyard runs itself: its config, pid and log."""
        return self.root / "environments" / environment_id

    def images_dir(self, project_id: str) -> Path:
        """A project's generated images, one folder per generation job."""
        return self.root / "images" / project_id

    def image_file(self, project_id: str, job_id: str, image_id: str) -> Path:
        return self.images_dir(project_id) / job_id / f"{image_id}.png"

    def image_adapter(self, project_id: str, adapter_id: str) -> Path:
        """An uploaded image LoRA's safetensors file."""
        return self.images_dir(project_id) / "adapters" / f"{adapter_id}.safetensors"

    def image_training_set(self, project_id: str, set_id: str) -> Path:
        """The images and captions an image LoRA training reads, unpacked from their archive;
        kept while its job is queued or running."""
        return self.images_dir(project_id) / "training-sets" / set_id

    def image_source(self, project_id: str, digest: str) -> Path:
        """A source image of image-to-image, by its sha256: kept so its recipes reproduce."""
        return self.images_dir(project_id) / "sources" / digest

    @property
    def pending_deletions(self) -> Path:
        """One note per deletion whose files go once its transaction commits."""
        return self.root / "pending-deletions"

    @property
    def admin_password_file(self) -> Path:
        return self.root / "admin-password.txt"

    @property
    def secret_key_file(self) -> Path:
        """The key that encrypts API keys of serving tools and third-party models at rest."""
        return self.root / SECRET_KEY_FILE


def entry_path(folder: Path, name: str) -> Path:
    """`folder / name` for a name that must stay one entry of `folder`: no separators, no
    parent references, so a user-given name never leads out of its folder."""
    if name in ("", ".", "..") or any(c in name for c in "/\\\0"):
        raise ValueError(f"{name!r} is not a plain file name")
    return folder / name


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_file(target: Path, mode: str = "wb") -> Iterator:
    """Write to a temp file beside `target`, fsync, then rename over it."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Like atomic_file, for writers that open files by name (GGUFWriter, llama.cpp): yield a
    temp path beside `target`; on success it is fsynced and renamed over it, else removed."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    staging = Path(name)
    try:
        yield staging
        fd = os.open(staging, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(staging, target)
        _fsync_dir(target.parent)
    except BaseException:
        staging.unlink(missing_ok=True)
        raise


def partial_path(target: Path) -> Path:
    """Where atomic_dir stages `target`: beside it (same file system), under a dot-name."""
    return target.parent / f".{target.name}.partial"


@contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """Yield a staging folder; on success it is renamed to `target`, on failure removed.

    The staging name is fixed per target, so a job that was killed mid-write can be cleaned
    up afterwards with `discard(target)`.
    """
    if target.exists():
        raise FileExistsError(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = partial_path(target)
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        yield staging
        os.replace(staging, target)
        _fsync_dir(target.parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def remove_tree(path: Path) -> None:
    """Remove a folder by first renaming it aside, so a half-deleted folder is never visible."""
    if not path.exists():
        return
    doomed = path.parent / f".{path.name}.deleting-{uuid.uuid4().hex[:8]}"
    os.replace(path, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def discard(target: Path) -> None:
    """Remove `target` and anything a killed atomic_dir left staged for it."""
    remove_tree(target)
    shutil.rmtree(partial_path(target), ignore_errors=True)


# -- files that follow their row's transaction ---------------------------------------------

_PENDING = "tuneyard_pending_removals"


def delete_on_commit(session: Session, row, *paths: Path) -> None:
    """Delete `paths` (files or folders of `row`, which the caller deletes in `session`) once
    the session commits; if it rolls back, they stay, as the row does.

    A note in the data dir records the deletion until the files are gone, so a crash between
    the commit and the removal is finished by `finish_pending_deletions` at the next start.
    """
    note = Layout().pending_deletions / f"{uuid.uuid4().hex}.json"
    with atomic_file(note, "w") as handle:
        json.dump(
            {"table": row.__tablename__, "id": row.id, "paths": [str(p) for p in paths]}, handle
        )
    session.info.setdefault(_PENDING, []).append((paths, True, note))


def discard_on_rollback(session: Session, *paths: Path) -> None:
    """Remove `paths` (written for a row the caller creates in `session`) if the session does
    not commit, so a failed commit leaves no files that no row points at."""
    session.info.setdefault(_PENDING, []).append((paths, False, None))


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _settle(session: Session, committed: bool) -> None:
    for paths, on_commit, note in session.info.pop(_PENDING, []):
        if on_commit == committed:
            try:
                for path in paths:
                    _remove(path)
            except OSError as exc:
                # The transaction has ended either way; a note left behind retries at start.
                log.warning("Could not remove %s: %s", ", ".join(map(str, paths)), exc)
                continue
        if note is not None:
            note.unlink(missing_ok=True)


@event.listens_for(Session, "after_commit")
def _after_commit(session: Session) -> None:
    if not session.in_nested_transaction():  # a savepoint's outer transaction may roll back
        _settle(session, committed=True)


@event.listens_for(Session, "after_transaction_end")
def _after_transaction_end(session: Session, transaction) -> None:
    # Still pending when the outermost transaction ends: it rolled back or was closed.
    if transaction.parent is None:
        _settle(session, committed=False)


def finish_pending_deletions(session: Session, settings: Settings | None = None) -> int:
    """Finish deletions a crash interrupted: where the row is gone, remove its files; where it
    is still there, its transaction never committed, and the files stay. Returns how many
    deletions were finished."""
    folder = Layout(settings).pending_deletions
    if not folder.is_dir():
        return 0
    notes = sorted(folder.glob("*.json"))
    # The notes name tables, not mapped classes: this module sits below the tables.
    tables = set(inspect(session.connection()).get_table_names()) if notes else set()
    finished = 0
    for note in notes:
        try:
            entry = json.loads(note.read_text())
            if entry["table"] not in tables:
                raise KeyError(entry["table"])
            rows = table(entry["table"], column("id"))
            still_there = session.scalar(select(exists().where(rows.c.id == entry["id"])))
        except (OSError, ValueError, KeyError) as exc:
            log.warning("Ignoring the unreadable deletion note %s: %s", note, exc)
            continue
        if not still_there:
            for path in entry["paths"]:
                _remove(Path(path))
            finished += 1
        note.unlink(missing_ok=True)
    return finished
