"""Atomic writes: a file or folder is complete or absent."""

from __future__ import annotations

import pytest

from tuneyard.storage import atomic_dir, atomic_file, discard, partial_path

# Computation alone: runs once, on SQLite's run; the database is out of reach.
pytestmark = pytest.mark.nodb


def test_atomic_file_replaces_only_on_success(tmp_path):
    tmp_path = tmp_path / "w"
    tmp_path.mkdir()
    target = tmp_path / "a.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_file(target, "w") as handle:
        handle.write("half")
        raise RuntimeError("crash")
    assert target.read_text() == "old"
    assert list(tmp_path.iterdir()) == [target]
    with atomic_file(target, "w") as handle:
        handle.write("new")
    assert target.read_text() == "new"


def test_atomic_dir_appears_whole_or_not_at_all(tmp_path):
    tmp_path = tmp_path / "w"
    tmp_path.mkdir()
    target = tmp_path / "model"
    with pytest.raises(RuntimeError), atomic_dir(target) as staging:
        (staging / "weights").write_text("half")
        raise RuntimeError("crash")
    assert list(tmp_path.iterdir()) == []
    with atomic_dir(target) as staging:
        assert not target.exists()
        (staging / "weights").write_text("all")
    assert (target / "weights").read_text() == "all"
    with pytest.raises(FileExistsError), atomic_dir(target):
        pass


def test_discard_removes_what_a_killed_writer_left(tmp_path):
    tmp_path = tmp_path / "w"
    tmp_path.mkdir()
    target = tmp_path / "model"
    partial_path(target).mkdir()
    (partial_path(target) / "shard").write_text("x")
    discard(target)
    assert list(tmp_path.iterdir()) == []
