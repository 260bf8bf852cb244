"""Where models are read from on the server: inside a model root (TUNEYARD_MODEL_ROOTS), outside
the data dir's own folders. Base models and image models are registered in place by these rules."""

from __future__ import annotations

import os
from pathlib import Path

from tuneyard.config import get_settings
from tuneyard.errors import Invalid


def server_path(raw: str, field: str) -> Path:
    """A path on the server a model is read from, links resolved: it must lie inside a model
    root (TUNEYARD_MODEL_ROOTS, by default the data dir's import folder) and outside the data
    dir's own folders (other projects' models, keys, the database). The refusal says the same
    whether or not the path exists."""
    path = Path(raw).expanduser()
    if not path.is_absolute():
        raise Invalid(
            f"Give {field} as an absolute path (got '{raw}'): it is read on the server's machine."
        )
    resolved = path.resolve()
    if not may_read_models_from(resolved):
        raise Invalid(
            f"{field} '{raw}' is outside the folders models are registered from "
            f"({', '.join(str(root) for root in get_settings().model_root_paths)}). Put the "
            "model there, or ask the server's operator to add its folder to "
            "TUNEYARD_MODEL_ROOTS."
        )
    return resolved


def may_read_models_from(resolved: Path) -> bool:
    """Whether a resolved path lies inside a model root and outside the data dir's folders
    (its import folder aside)."""
    settings = get_settings()
    data_dir, import_dir = settings.data_dir.resolve(), settings.import_dir.resolve()
    if resolved.is_relative_to(data_dir) and not resolved.is_relative_to(import_dir):
        return False
    return any(resolved.is_relative_to(root) for root in settings.model_root_paths)


def check_links_stay_inside(folder: Path, raw: str) -> None:
    """A file of the folder that is a link must lead inside the model roots as well."""
    for parent, dirs, files in os.walk(folder):
        for name in [*dirs, *files]:
            entry = Path(parent) / name
            if entry.is_symlink() and not may_read_models_from(entry.resolve()):
                raise Invalid(
                    f"{entry.relative_to(folder)} in {raw} links outside the folders models are "
                    "registered from; copy the file into the folder instead."
                )
