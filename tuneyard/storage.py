"""The data dir layout and atomic writes: a file or folder appears complete or not at all."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tuneyard.config import Settings, get_settings


class Layout:
    """Where each kind of thing lives under the data dir."""

    def __init__(self, settings: Settings | None = None):
        self.root = (settings or get_settings()).data_dir

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

    def reward_file(self, project_id: str, name: str) -> Path:
        return self.root / "rewards" / project_id / f"{name}.py"

    def method_script(self, project_id: str, script_id: str) -> Path:
        """An uploaded training method's Python file, by its row's id (names can be reused)."""
        return self.root / "methods" / project_id / f"{script_id}.py"

    def live_model_dir(self, model_id: str) -> Path:
        """Files a deploy made for a serving tool that reads from disk (GGUF for llama.cpp)."""
        return self.root / "models" / "live" / model_id

    def environment_dir(self, environment_id: str) -> Path:
        """State of a serving tool Tuneyard runs itself: its config, pid and log."""
        return self.root / "environments" / environment_id

    @property
    def admin_password_file(self) -> Path:
        return self.root / "admin-password.txt"

    @property
    def secret_key_file(self) -> Path:
        """The key that encrypts API keys of serving tools and third-party models at rest."""
        return self.root / "secret.key"


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
