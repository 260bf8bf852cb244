"""Deletes remove files only once the transaction commits: a failed commit keeps the row and its
files, a committed one leaves neither, and a crash in between is finished at the next start."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from sqlalchemy import event
from sqlalchemy.orm import Session

from tests.ollama_double import ModelRecord
from tuneyard import storage
from tuneyard.basemodels import service as basemodels
from tuneyard.complete import service as complete
from tuneyard.customized import service as customized
from tuneyard.datasets import service as datasets
from tuneyard.db import session_scope
from tuneyard.deploy import service as deploy
from tuneyard.models import (
    BaseModel,
    CompleteModel,
    CustomizedModel,
    Dataset,
    DeployEnvironment,
    LiveModel,
    TrainingMethodScript,
)
from tuneyard.storage import Layout
from tuneyard.training import custom


def refuse_commit(session: Session) -> None:
    """Make the database refuse this session's commit, as when it goes away mid-request."""

    def refuse(_session):
        raise RuntimeError("the database went away")

    event.listen(session, "before_commit", refuse)


# what -> (delete it as the admin, its table, its id in the world, the files that go with it)
DELETES = {
    "base model": (
        lambda session, w: basemodels.delete_base_model(session, w.admin, w.base),
        BaseModel,
        "base",
        lambda w: [Layout().base_model_dir(w.base)],
    ),
    "dataset": (
        lambda session, w: datasets.delete_dataset(session, w.admin, w.dataset),
        Dataset,
        "dataset",
        lambda w: [Layout().dataset_dir(w.dataset)],
    ),
    "customized model": (
        lambda session, w: customized.delete_customized(session, w.admin, w.customized),
        CustomizedModel,
        "customized",
        lambda w: [Layout().customized_model_dir(w.customized)],
    ),
    "complete model": (
        lambda session, w: complete.delete_complete(session, w.admin, w.complete),
        CompleteModel,
        "complete",
        lambda w: [Layout().complete_model_dir(w.complete)],
    ),
    "deployment environment": (
        lambda session, w: deploy.delete_environment(session, w.admin, w.managed_environment),
        DeployEnvironment,
        "managed_environment",
        lambda w: [Layout().environment_dir(w.managed_environment)],
    ),
    "training method": (
        lambda session, w: custom.delete_method(session, w.admin, "loop"),
        TrainingMethodScript,
        "script",
        lambda w: [Layout().method_script(w.admin.project_id, w.script)],
    ),
}


def row_exists(table, row_id: str) -> bool:
    with session_scope() as session:
        return session.get(table, row_id) is not None


def notes() -> list[Path]:
    folder = Layout().pending_deletions
    return sorted(folder.iterdir()) if folder.exists() else []


@pytest.mark.parametrize("what", list(DELETES))
def test_a_delete_goes_with_its_commit(code_uploads, project_world, what):
    # code_uploads: deleting a training method is the operator's, on a server that allows it.
    delete, table, key, files_of = DELETES[what]
    row_id, files = getattr(project_world, key), files_of(project_world)
    assert all(path.exists() for path in files)

    with pytest.raises(RuntimeError, match="went away"), session_scope() as session:
        refuse_commit(session)
        delete(session, project_world)
    assert row_exists(table, row_id)
    assert all(path.exists() for path in files)
    assert notes() == []

    with session_scope() as session:
        delete(session, project_world)
    assert not row_exists(table, row_id)
    assert not any(path.exists() for path in files)
    assert notes() == []


def test_a_replaced_upload_and_a_promoted_checkpoint_leave_no_files_when_the_commit_fails(
    project_world,
):
    w = project_world
    old_folder = Layout().dataset_dir(w.dataset)
    with session_scope() as session:
        session.get(Dataset, w.dataset).status = "failed"  # a failed upload is replaced
    checkpoint = Layout().training_dir(w.training) / "checkpoints" / "checkpoint-1"
    checkpoint.mkdir(parents=True)
    (checkpoint / "adapter_model.safetensors").write_bytes(b"x" * 16)
    (checkpoint / "adapter_config.json").write_text("{}")
    (checkpoint / "trainer_state.json").write_text("{}")
    datasets_before = sorted(old_folder.parent.iterdir())
    customized_before = sorted(Layout().customized_model_dir("x").parent.iterdir())

    with pytest.raises(RuntimeError, match="went away"), session_scope() as session:
        refuse_commit(session)
        datasets.create_dataset(
            session,
            w.admin,
            name="qa",
            filename="qa.jsonl",
            content=io.BytesIO(b'{"prompt": "a", "completion": "b"}\n'),
        )
        customized.promote_checkpoint(session, w.admin, w.training, 1)

    # The failed dataset and its files are still there; nothing new was left behind.
    assert row_exists(Dataset, w.dataset)
    assert sorted(old_folder.parent.iterdir()) == datasets_before
    assert sorted(Layout().customized_model_dir("x").parent.iterdir()) == customized_before


def test_a_live_model_whose_delete_fails_to_commit_can_be_deleted_again(project_world, ollama):
    """Taking a model off its serving tool cannot be rolled back. The tool is asked last, after
    the database has taken the delete; should the commit still fail, the row and its files stay,
    a check reports the model stopped, and deleting it again finishes."""
    w = project_world
    with session_scope() as session:
        session.get(DeployEnvironment, w.environment).url = ollama.url
    ollama.models["tiny-live:latest"] = ModelRecord(
        name="tiny-live:latest",
        family="llama",
        model_type="model",
        quantization="F16",
        size=16,
        digest="0" * 64,
        files={},
        adapters={},
        parent=None,
        template=None,
        template_name=None,
        system=None,
        parameters={},
        modified_at="2025-01-01T00:00:00Z",
    )
    folder = Layout().live_model_dir(w.live)

    with pytest.raises(RuntimeError, match="went away"), session_scope() as session:
        refuse_commit(session)
        deploy.delete_live(session, w.admin, w.live)
    assert "tiny-live:latest" not in ollama.models
    assert row_exists(LiveModel, w.live)
    assert (folder / "model.gguf").is_file()
    with session_scope() as session:
        assert deploy.check_live(session, w.admin, w.live)["status"] == "stopped"

    with session_scope() as session:
        deploy.delete_live(session, w.admin, w.live)
    assert not row_exists(LiveModel, w.live)
    assert not folder.exists()


def test_a_start_finishes_deletions_a_crash_interrupted(project_world):
    from tuneyard.api import prepare

    w = project_world
    dataset_folder = Layout().dataset_dir(w.dataset)
    base_folder = Layout().base_model_dir(w.base)
    # The process dies at the commit: the database has it, nothing after it runs.
    event.remove(Session, "after_commit", storage._after_commit)
    event.remove(Session, "after_transaction_end", storage._after_transaction_end)
    try:
        with session_scope() as session:
            datasets.delete_dataset(session, w.admin, w.dataset)
        with session_scope() as session:
            basemodels.delete_base_model(session, w.admin, w.base)
            session.rollback()  # this one never committed
    finally:
        event.listen(Session, "after_commit", storage._after_commit)
        event.listen(Session, "after_transaction_end", storage._after_transaction_end)
    assert dataset_folder.is_dir() and base_folder.is_dir()
    assert len(notes()) == 2

    prepare(announce=lambda _text: None)
    assert not dataset_folder.exists()
    assert base_folder.is_dir() and row_exists(BaseModel, w.base)
    assert notes() == []


def test_a_deletion_a_crash_interrupted_is_finished_at_the_next_start(project_world, tmp_path):
    import json

    folder = Layout().pending_deletions
    folder.mkdir(parents=True, exist_ok=True)
    gone_files, kept_files = tmp_path / "gone", tmp_path / "kept"
    gone_files.mkdir()
    kept_files.mkdir()

    def note(name: str, table: str, row_id: str, path: Path) -> None:
        entry = {"table": table, "id": row_id, "paths": [str(path)]}
        (folder / f"{name}.json").write_text(json.dumps(entry))

    note("a", "live_models", "0" * 36, gone_files)  # its row was deleted and committed
    note("b", "datasets", project_world.dataset, kept_files)  # its transaction rolled back
    note("c", "no_such_table", "x", kept_files)
    with session_scope() as session:
        assert storage.finish_pending_deletions(session) == 1
    assert not gone_files.exists() and kept_files.exists()
    assert row_exists(Dataset, project_world.dataset)
    assert [path.name for path in notes()] == ["c.json"]  # unreadable notes are left
